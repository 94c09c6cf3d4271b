"""The console of a run: one line per event, a step bar that adds up, checkpoints without Lightning's ModelCheckpoint.

A tiny run goes through the CLI (as a user starts it) and its console is checked for each of the lines dear used to
print and should not: Lightning's lines twice, its advertisement, stray library warnings, Lightning's epoch bar.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from dear.train import train
from dear.training.checkpoints import PeriodicCheckpoint

from conftest import TINY_RUN, compose

TINY_WANDB = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger=wandb"]

NOISE = {
    "Lightning's advertisement": "💡 Tip",
    "Lightning's epoch bar": "Epoch 0/",
    "the logger's version in the bar": "v_num",
    "ModelCheckpoint's sample code": "def training_step(self, batch, batch_idx)",
    "Lightning's save_checkpoint note": "weights_only",
    "transformers' loading bar": "Loading weights",
    "transformers' saving bar": "Writing model shards",
    "wandb's warning about Lightning's anonymous=None": "anonymous setting",
    "torch's deprecation from inside Lightning": "LeafSpec",
}
HYDRA_PREFIX = re.compile(r"^\[[\d\- :,]+\]\[[\w.]+\]\[\w+\] - ")


def test_the_console_says_each_thing_once(tmp_path, toy_cache):
    env = {**os.environ, "DEAR_OUTPUTS": str(tmp_path / "outputs")}
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dear-train"), *TINY_WANDB, "checkpoint.every_steps=1"]
        + [f"cache_dir={toy_cache}", f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    for what, needle in NOISE.items():
        assert needle not in console, f"{what} is back on the console:\n{console}"
    lines = console.splitlines()
    assert not [line for line in lines if line.startswith("INFO: ")], f"Lightning's own handler:\n{console}"
    said = Counter(HYDRA_PREFIX.sub("", line) for line in lines)
    assert [m for m, n in said.items() if n > 1] == [], f"said twice:\n{console}"
    assert "GPU available" in console and "`Trainer.fit` stopped" in console  # Lightning's lines, once
    log_file = (run_dir / "cli.log").read_text()  # Hydra's run log keeps every line the console shows
    assert [HYDRA_PREFIX.sub("", line) for line in log_file.splitlines()] == list(said)


class Terminal(io.StringIO):
    """stderr as a terminal: the bars draw on it."""

    def isatty(self) -> bool:
        return True


def bar_counts(text: str, label: str) -> list[tuple[int, int]]:
    """Each ``<label> <n>/<total>`` a bar drew, in order."""
    return [(int(n), int(t)) for n, t in re.findall(rf"{label} (\d+)/(\d+) ", text)]


def test_the_bar_counts_optimizer_steps_from_a_resumed_step(tmp_path, toy_cache, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    first = tmp_path / "first"
    first.mkdir()
    train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=2"]), first)
    drawn = terminal.getvalue()
    assert bar_counts(drawn, "train")[0] == (0, 2) and bar_counts(drawn, "train")[-1] == (2, 2)
    assert bar_counts(drawn, "eval toy")[-1] == (8, 8)  # benchmark.limit=8 problems
    assert "v_num" not in drawn and "Epoch" not in drawn

    terminal.seek(0)
    terminal.truncate()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    ckpt = first / "checkpoints" / "last.ckpt"
    train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=3", f"ckpt_path={ckpt}"]), resumed)
    counts = bar_counts(terminal.getvalue(), "train")
    assert counts[0] == (2, 3) and counts[-1] == (3, 3), counts  # starts at the resumed step, ends at `steps`
    assert all(n <= total == 3 for n, total in counts), counts


class FakeTrainer:
    """What `PeriodicCheckpoint` reads of a trainer, recording the steps it saved."""

    def __init__(self) -> None:
        self.global_step = 0
        self.saved: list[int] = []
        self.strategy = SimpleNamespace(broadcast=lambda x: x)

    def save_checkpoint(self, path, weights_only=None) -> None:
        assert weights_only is False  # the run's whole state, and no note from Lightning about the default
        self.saved.append(self.global_step)


def run_steps(callback: PeriodicCheckpoint, steps: list[int], minutes: list[float], monkeypatch) -> list[int]:
    """The steps ``callback`` saves at, through optimizer steps ``steps`` (a batch each) that end ``minutes``
    after the start."""
    now = [0.0]
    monkeypatch.setattr("dear.training.checkpoints.time.monotonic", lambda: 60 * now[0])
    trainer = FakeTrainer()
    trainer.global_step = steps[0] - 1
    callback.on_train_start(trainer, None)
    for step, minute in zip(steps, minutes):
        trainer.global_step, now[0] = step, minute
        callback.on_train_batch_end(trainer, None, None, None, step)
    return trainer.saved


@pytest.mark.parametrize(
    "every, steps, minutes, saved",
    [
        ({"every_steps": 2}, [1, 2, 3, 4, 5], [0] * 5, [2, 4]),
        ({"every_steps": 2}, [1, 2, 2, 3, 4], [0] * 5, [2, 4]),  # a skipped step (same global_step): saved once
        ({"every_steps": 3}, [4, 5, 6, 7], [0] * 4, [6]),  # resumed at step 3
        ({"every_minutes": 5}, [1, 2, 3, 4, 5], [1, 4, 6, 8, 12], [3, 5]),  # 6 min after start, 6 after that
        ({}, [1, 2, 3], [0, 100, 200], []),  # neither: fit's end saves it
    ],
)
def test_checkpoints_every_so_many_steps_or_minutes(tmp_path, monkeypatch, every, steps, minutes, saved):
    # With manual optimization, Lightning's ModelCheckpoint ignored train_time_interval: nothing was saved by time
    callback = PeriodicCheckpoint(tmp_path / "last.ckpt", **every)
    assert run_steps(callback, steps, minutes, monkeypatch) == saved
