"""Nothing half-written: JSON, tables and exported students are complete or absent; a full or unwritable
output folder is one line (a DearError)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dear.errors import DearError
from dear.files import write_dir_atomic, write_json_atomic, write_text_atomic

from conftest import ROOT, TINY_RUN, compose


def no_full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"gain": 0.5})
    monkeypatch.setattr(os, "fsync", no_full_disk)  # the disk fills while the new version is written
    with pytest.raises(DearError, match=r"^cannot write .*metrics.json: No space left on device") as e:
        write_json_atomic(path, {"gain": 0.75})
    assert "\n" not in str(e.value)
    assert json.loads(path.read_text()) == {"gain": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_an_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(DearError, match=r"^cannot write .*outputs/table.md: "):
        write_text_atomic(blocker / "table.md", "| a |\n")
    with pytest.raises(DearError, match=r"^cannot write .*outputs/student: "):
        write_dir_atomic(blocker / "student", lambda folder: None)


def test_a_failed_export_keeps_the_previous_folder(tmp_path):
    student = tmp_path / "student"
    write_dir_atomic(student, lambda folder: (folder / "model.safetensors").write_text("v1"))

    def half_then_full_disk(folder):
        (folder / "model.safetensors").write_text("v2, half")
        no_full_disk()

    with pytest.raises(DearError, match="No space left on device"):
        write_dir_atomic(student, half_then_full_disk)
    assert (student / "model.safetensors").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["student"]
    write_dir_atomic(student, lambda folder: (folder / "model.safetensors").write_text("v2"))
    assert (student / "model.safetensors").read_text() == "v2" and [p.name for p in tmp_path.iterdir()] == ["student"]


KILLED_MID_EXPORT = """
import sys, time
from pathlib import Path
from dear.files import write_dir_atomic

def slow(folder):
    (folder / "model.safetensors").write_text("v2, half")
    print("writing", flush=True)
    time.sleep(60)

write_dir_atomic(Path(sys.argv[1]), slow)
"""


def test_a_run_killed_during_export_leaves_the_previous_student(tmp_path):
    student = tmp_path / "student"
    write_dir_atomic(student, lambda folder: (folder / "model.safetensors").write_text("v1"))
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_EXPORT, str(student)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (student / "model.safetensors").read_text() == "v1"
    assert not [p for p in tmp_path.iterdir() if p.name != "student" and not p.name.startswith(".student.tmp-")]


def test_dear_table_out_into_an_unwritable_folder_is_one_line(tmp_path):
    from dear.tables.collate import main

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "config": {
                    "model": {"name": "s"},
                    "teacher": {"name": "t"},
                    "method": {"name": "dear"},
                    "loss": {"normalize": "selected"},
                },
                "benchmarks": {"toy": {"accuracy_before": 0.1, "accuracy_after": 0.2, "gain": 0.1}},
                "accuracy_auc": 0.15,
                "heldout_reverse_kl": {"after": 0.3},
            }
        )
    )
    (tmp_path / "tables").write_text("a file")
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "tables" / "toy.md")])
    assert e.value.code == 2


def test_a_training_run_whose_export_fails_says_so_in_one_line(tmp_path, toy_cache, monkeypatch):
    from transformers import PreTrainedModel

    from dear.train import train

    real_save = PreTrainedModel.save_pretrained

    def save_then_full_disk(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)
        no_full_disk()

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_full_disk)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(DearError, match=r"^cannot write .*run/student: No space left on device"):
        train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=1"]), run_dir)
    assert time.perf_counter() - t0 < 600
    assert not (run_dir / "student").exists() and not (run_dir / "metrics.json").exists()
    assert not list(run_dir.glob(".student.*"))
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # the trained state is kept
