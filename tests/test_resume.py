"""Runs that survive: a killed run resumes to the same numbers, and SIGTERM/SIGUSR1 stop with a checkpoint.

The kill and the signals are real: a ``dear-train`` subprocess gets SIGKILL or SIGTERM mid-run,
and SIGUSR1 is sent to this process while ``train`` runs in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dear.train import RunStopped, train

from conftest import TINY_MODELS, compose

BIN = Path(sys.executable).parent
# Long enough to be stopped mid-way; a checkpoint every step, so any step can be resumed from.
RESUMABLE = TINY_MODELS + [
    "steps=6",
    "batch_size=3",
    "rollout.n=2",
    "rollout.max_new_tokens=16",
    "eval.every=2",
    "benchmark.limit=4",
    "benchmark.max_new_tokens=16",
    "eval.kl_prompts=2",
    "logger=csv",
    "checkpoint.every_steps=1",
]
NUMBERS = ("steps", "benchmarks", "heldout_reverse_kl", "accuracy_auc", "curve")


def run_here(tmp_path: Path, toy_cache: Path, *extra: str, name: str) -> dict:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return train(compose(RESUMABLE + [f"cache_dir={toy_cache}", *extra]), run_dir)


def start_cli(tmp_path: Path, toy_cache: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "DEAR_OUTPUTS": str(tmp_path / "outputs")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [str(BIN / "dear-train"), *RESUMABLE, f"cache_dir={toy_cache}", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def saved_step(ckpt: Path) -> int:
    """The step a checkpoint holds, or -1 while there is none (a checkpoint appears whole, by rename)."""
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def wait_for_checkpoint(tmp_path: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.communicate()[1][-2000:]}"
        found = list((tmp_path / "outputs").glob("runs/*/checkpoints/last.ckpt"))
        if found and saved_step(found[0]) >= step:
            return found[0]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no checkpoint of step {step} within {timeout} s")


def test_a_killed_run_resumes_to_the_same_numbers(tmp_path, toy_cache):
    uninterrupted = run_here(tmp_path, toy_cache, name="uninterrupted")  # also fills the toy cache
    proc = start_cli(tmp_path, toy_cache)
    ckpt = wait_for_checkpoint(tmp_path, proc, step=3)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = saved_step(ckpt)
    assert 3 <= killed_at < 6, killed_at
    resumed = run_here(tmp_path, toy_cache, f"ckpt_path={ckpt}", name="resumed")
    for key in NUMBERS:
        assert resumed[key] == uninterrupted[key], f"{key} differs after resuming from step {killed_at}"


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, toy_cache):
    run_here(tmp_path, toy_cache, "steps=1", name="warm")  # fills the toy cache, so the subprocess only trains
    proc = start_cli(tmp_path, toy_cache, "steps=200")
    ckpt = wait_for_checkpoint(tmp_path, proc, step=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("dear-train:")]
    assert len(lines) == 1, err[-2000:]
    assert "stopped by SIGTERM after step" in lines[0] and f"ckpt_path={ckpt.resolve()}" in lines[0]
    assert "resume with: dear-train " in lines[0] and "steps=200" in lines[0]
    stopped_at = saved_step(ckpt)
    assert 1 <= stopped_at < 200
    assert not list((tmp_path / "outputs").glob("runs/*/metrics.json")), "a stopped run wrote metrics.json"


def test_sigusr1_stops_after_the_current_step_with_a_checkpoint(tmp_path, toy_cache):
    from dear.training.module import DistillModule

    run_dir = tmp_path / "usr1"
    run_dir.mkdir()
    cfg = compose(RESUMABLE + [f"cache_dir={toy_cache}", "steps=200"])
    sent = threading.Event()
    step = DistillModule.training_step

    def signal_at_step_2(self, prompts, batch_idx):
        if self.global_step == 2 and not sent.is_set():
            sent.set()
            os.kill(os.getpid(), signal.SIGUSR1)  # a real signal; the handler runs in this (the main) thread
        return step(self, prompts, batch_idx)

    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DistillModule, "training_step", signal_at_step_2)
        with pytest.raises(RunStopped, match=r"stopped by SIGUSR1 after step 3; checkpoint .*resume with: dear-train"):
            train(cfg, run_dir)
    assert saved_step(run_dir / "checkpoints" / "last.ckpt") == 3
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "student").exists()
    assert signal.getsignal(signal.SIGUSR1) == previous  # the handler is put back
