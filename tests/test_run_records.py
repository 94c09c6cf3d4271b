"""What a run records beside its numbers (dear/training/records.py): the commit of the code that ran, the hardware,
the checkpoint it resumed from; never a reason for a run to fail, never a line on the terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from dear.preflight.settings import eval_config, train_config
from dear.training import records
from dear.training.records import code_version, cpu_name, hardware, run_record

from conftest import ROOT, TINY_RUN, compose


def git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout whose package folder ``pkg`` is tracked and committed, with an ignored ``.venv``."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def fresh(folder: Path) -> dict | None:
    code_version.cache_clear()
    try:
        return code_version(folder)
    finally:
        code_version.cache_clear()


def test_the_commit_of_a_checkout_and_whether_its_tracked_files_changed(checkout, capfd):
    head = git(checkout, "rev-parse", "HEAD")
    (checkout / "notes.txt").write_text("untracked: not the code that ran")
    assert fresh(checkout / "pkg") == {"commit": head, "dirty": False}
    (checkout / "pkg" / "__init__.py").write_text("x = 1\n")
    assert fresh(checkout / "pkg") == {"commit": head, "dirty": True}
    assert capfd.readouterr() == ("", "")  # git's own words stay out of the run's output


def test_code_that_is_not_a_checkout_s_own_has_no_commit(checkout, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("wheel") / "pkg"
    elsewhere.mkdir()
    (elsewhere / "__init__.py").write_text("")
    installed = checkout / ".venv" / "site-packages" / "pkg"  # an ignored venv inside a checkout
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    assert fresh(elsewhere) is None and fresh(installed) is None


@pytest.mark.parametrize(
    "trouble",
    [FileNotFoundError(2, "No such file or directory: 'git'"), subprocess.TimeoutExpired("git", 5)],
    ids=["no git", "git hangs"],
)
def test_git_in_trouble_is_no_commit_not_a_failure(checkout, monkeypatch, trouble):
    def run(*_args, **_kwargs):
        raise trouble

    monkeypatch.setattr(records.subprocess, "run", run)
    assert fresh(checkout / "pkg") is None


def test_this_checkout_records_its_head():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    code_version.cache_clear()
    assert code_version()["commit"] == head.strip()


def test_the_hardware_of_a_cpu_run():
    s = train_config(compose(TINY_RUN + ["trainer.threads=1"]))
    assert hardware(s) == {
        "accelerator": "cpu",
        "name": cpu_name(),
        "count": 1,
        "nodes": 1,
        "torch_threads": torch.get_num_threads(),
    }
    assert cpu_name() not in ("", "unknown")


def test_the_hardware_of_a_gpu_run(monkeypatch):
    """``trainer.accelerator=auto`` on a machine with GPUs is a CUDA run; ``devices=auto`` runs on all of them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    s = train_config(compose(TINY_RUN + ["trainer.accelerator=auto", "trainer.devices=auto"]))
    record = hardware(s)
    assert (record["accelerator"], record["name"], record["count"]) == ("cuda", "NVIDIA H100 80GB HBM3", 2)
    one = hardware(eval_config(compose(["trainer=auto"], "eval")))  # dear-eval: one device
    assert (one["accelerator"], one["count"]) == ("cuda", 1)


def test_a_record_says_which_code_ran_where_and_what_it_resumed(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"a checkpoint")
    fresh_run = run_record(train_config(compose(TINY_RUN)), tmp_path, wall_time_s=1.0, extra={})
    resumed = run_record(train_config(compose(TINY_RUN + [f"ckpt_path={ckpt}"])), tmp_path, wall_time_s=1.0, extra={})
    evaluated = run_record(eval_config(compose([], "eval")), tmp_path, wall_time_s=1.0, extra={"device": "cpu"})
    assert fresh_run["resumed_from"] is None and evaluated["resumed_from"] is None
    assert resumed["resumed_from"] == str(ckpt)
    for record in (fresh_run, resumed, evaluated):
        assert record["git"] == code_version() and record["hardware"]["accelerator"] == "cpu"
    assert evaluated["device"] == "cpu"  # dear-eval's own key: the device it computed on
