"""A resumed run goes on in its own folder: ``ckpt_path=<run>/checkpoints/last.ckpt`` runs in ``<run>``, so one folder
holds the whole run (metrics.json, its curve, the pages, the checkpoints); every other resume keeps a new folder and
records where it came from (dear/preflight/command.py `resume_in_place`)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_resume import BIN, saved_step, start_cli, wait_for_checkpoint

from dear import cli
from dear.preflight import command
from dear.train import train

from conftest import TINY_RUN, compose


def stopped_run(folder: Path, *, finished: bool = False) -> Path:
    """A run folder as dear-train leaves it when stopped (or finished): .hydra/, checkpoints/last.ckpt."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    if finished:
        (folder / "metrics.json").write_text("{}")
    return folder / "checkpoints" / "last.ckpt"


def run_dir_given(argv: list[str]) -> str | None:
    """The ``hydra.run.dir`` Hydra's app reads from ``argv``, as its parser and its override grammar read it."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(argv).overrides)
    given = [o.value() for o in overrides if o.key_or_group == "hydra.run.dir"]
    return given[-1] if given else None


class DearTrain:
    """``dear-train`` in this process, its Hydra app stubbed: ``argv`` is what the app would have read."""

    def __init__(self, monkeypatch, tmp_path: Path):
        self.monkeypatch, self.argv = monkeypatch, None
        monkeypatch.setenv("DEAR_OUTPUTS", str(tmp_path / "outputs"))
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        monkeypatch.setattr(cli, "_train_app", lambda: setattr(self, "argv", sys.argv[1:]))

    def __call__(self, *args: str) -> list[str] | None:
        self.monkeypatch.setattr(sys, "argv", ["dear-train", *args])
        cli.train()
        return self.argv


@pytest.fixture
def dear_train(monkeypatch, tmp_path) -> DearTrain:
    return DearTrain(monkeypatch, tmp_path)


# --- which resumes go on in their folder -------------------------------------------------------------------------


def test_a_stopped_run_s_last_checkpoint_resumes_in_its_folder(dear_train, tmp_path, capsys):
    run = tmp_path / "runs" / "a run, it's [1]"  # a name Hydra's override grammar must be told is one value
    ckpt = stopped_run(run)
    argv = dear_train("seed=1", command.as_override("ckpt_path", str(ckpt)))  # as the resume line quotes it
    assert run_dir_given(argv) == str(run)
    assert f"dear-train: resuming in {run}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "seed=0,1"],  # a sweep's jobs each go on in the sweep's own folders
        ["hydra.run.dir={tmp}/elsewhere"],  # the folder the user asked for
    ],
    ids=["multirun", "hydra.run.dir"],
)
def test_a_sweep_or_a_given_folder_keeps_its_own(dear_train, tmp_path, args):
    ckpt = stopped_run(tmp_path / "run")
    args = [a.format(tmp=tmp_path) for a in args]
    argv = dear_train(*args, f"ckpt_path={ckpt}")
    assert argv == [*args, f"ckpt_path={ckpt}"]


@pytest.mark.parametrize("where", ["run/checkpoints/step-3.ckpt", "run/last.ckpt", "not-a-run/checkpoints/last.ckpt"])
def test_a_checkpoint_that_is_not_a_run_s_last_starts_a_new_folder(dear_train, tmp_path, where):
    stopped_run(tmp_path / "run")
    ckpt = tmp_path / where
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"a checkpoint")
    assert dear_train(f"ckpt_path={ckpt}") == [f"ckpt_path={ckpt}"]


def test_a_finished_run_is_not_overwritten(dear_train, tmp_path, capsys):
    ckpt = stopped_run(tmp_path / "run", finished=True)
    assert dear_train(f"ckpt_path={ckpt}") == [f"ckpt_path={ckpt}"]
    assert f"{tmp_path / 'run'} holds a finished run; this one starts in a new folder" in capsys.readouterr().err
    assert (tmp_path / "run" / "metrics.json").read_text() == "{}"


def test_a_folder_that_cannot_be_written_is_one_line(dear_train, tmp_path, monkeypatch, capsys):
    ckpt = stopped_run(tmp_path / "run")

    def read_only(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(command.tempfile, "NamedTemporaryFile", read_only)  # root writes anywhere: pretend
    with pytest.raises(SystemExit) as stop:
        dear_train(f"ckpt_path={ckpt}")
    assert stop.value.code == 2 and dear_train.argv is None
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"dear-train: error: cannot resume in {tmp_path / 'run'}: it is not writable (Permission denied); make it "
        f"writable, or give hydra.run.dir=/another/folder to go on there"
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "checkpoints"]


def test_a_dry_run_shows_the_folder_a_resume_goes_on_in(dear_train, tmp_path, capsys):
    ckpt = stopped_run(tmp_path / "run")
    assert dear_train(f"ckpt_path={ckpt}", "--dry-run") is None  # nothing started
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"ckpt_path={ckpt}  ->  {tmp_path / 'run'}"), out


def test_the_resume_line_quotes_a_folder_hydra_would_misread(monkeypatch, tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dear.training.preemption import resume_command

    ckpt = tmp_path / "runs, été" / "checkpoints" / "last.ckpt"  # a comma is a sweep, é no plain value
    monkeypatch.setattr(sys, "argv", ["dear-train", "seed=1", "ckpt_path=/an/older/last.ckpt"])
    words = shlex.split(resume_command(ckpt))
    assert words[:2] == ["dear-train", "seed=1"]
    (override,) = OverridesParser.create().parse_overrides(words[2:])
    assert (override.key_or_group, override.value()) == ("ckpt_path", str(ckpt.resolve()))


# --- the whole way: stopped, then resumed with the line dear-train printed -------------------------------------


def test_the_printed_resume_line_goes_on_in_the_same_folder(tmp_path, toy_cache):
    proc = start_cli(tmp_path, toy_cache, "steps=40", "eval.every=4")
    ckpt = wait_for_checkpoint(tmp_path, proc, step=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    stopped_at = saved_step(ckpt)
    (line,) = [line for line in err.splitlines() if line.startswith("dear-train:")]
    resume = shlex.split(line.split("resume with: ", 1)[1])
    assert resume[0] == "dear-train"

    done = subprocess.run(
        [str(BIN / "dear-train"), *resume[1:]],
        env={**os.environ, "DEAR_OUTPUTS": str(tmp_path / "outputs")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "outputs").rglob("metrics.json"))
    assert [p.parent for p in runs] == [ckpt.parent.parent], "the resumed run wrote its metrics.json elsewhere"
    assert sorted(p.name for p in (tmp_path / "outputs" / "runs").iterdir()) == [ckpt.parent.parent.name]
    metrics = json.loads(runs[0].read_text())
    steps = [row["step"] for row in metrics["curve"]]
    assert steps == list(range(0, 41, 4)), steps  # the rows before the stop and after, once each
    assert min(steps) < stopped_at < max(steps)
    assert metrics["run_dir"] == str(ckpt.parent.parent) and metrics["resumed_from"] == str(ckpt)
    assert saved_step(ckpt) == 40


def test_a_run_outside_a_checkpoints_folder_records_where_it_resumed_from(tmp_path, toy_cache):
    """Today's new folder, with ``resumed_from`` in its metrics.json."""
    first = tmp_path / "first"
    first.mkdir()
    train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=1"]), first)
    ckpt = tmp_path / "kept.ckpt"
    (first / "checkpoints" / "last.ckpt").rename(ckpt)
    second = tmp_path / "second"
    second.mkdir()
    metrics = train(compose(TINY_RUN + [f"cache_dir={toy_cache}", f"ckpt_path={ckpt}"]), second)
    assert metrics["resumed_from"] == str(ckpt) and metrics["run_dir"] == str(second)
    assert json.loads((first / "metrics.json").read_text())["resumed_from"] is None
