"""Runs that survive: a killed run resumes to the same numbers, and SIGTERM/SIGUSR1/Ctrl-C stop with a checkpoint.

The kill and the signals are real: a ``dear-train`` subprocess gets SIGKILL, SIGTERM or SIGINT mid-run,
and SIGUSR1 (or SIGINT twice) is sent to this process while ``train`` runs in it.
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
    "steps=12",
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
        # Ctrl-C as a terminal delivers it, even when this test runs where SIGINT is ignored (a background job)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
        time.sleep(0.05)
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
    assert 3 <= killed_at < 12, killed_at
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


def wait_for_training(tmp_path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Until the run draws its step-0 selection page, the last thing before its first step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before training: {proc.communicate()[1][-2000:]}"
        if list((tmp_path / "outputs").glob("runs/*/selection/step_0.html")):
            return
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no training within {timeout} s")


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_says_how_to_resume(tmp_path, toy_cache):
    """The first Ctrl-C is a SIGTERM: no periodic checkpoint here (checkpoint.every_steps=0), so last.ckpt is the
    one the stop wrote, of the step it names."""
    run_here(tmp_path, toy_cache, "steps=1", name="warm")  # fills the toy cache, so the subprocess only trains
    proc = start_cli(tmp_path, toy_cache, "steps=200", "checkpoint.every_steps=0")
    wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "Detected KeyboardInterrupt" not in err + out and "Ctrl-C again to stop at once" in out + err
    (line,) = [line for line in err.splitlines() if line.startswith("dear-train:")]
    (ckpt,) = (tmp_path / "outputs").glob("runs/*/checkpoints/last.ckpt")
    step = saved_step(ckpt)
    assert f"stopped by SIGINT after step {step}; checkpoint {ckpt}" in line, line
    assert "resume with: dear-train " in line and f"ckpt_path={ckpt.resolve()}" in line and "steps=200" in line
    assert 1 <= step < 200
    assert not list((tmp_path / "outputs").glob("runs/*/metrics.json")), "a stopped run wrote metrics.json"


def test_a_second_ctrl_c_stops_at_once(tmp_path, toy_cache):
    """Ctrl-C twice within a step: Python's KeyboardInterrupt, which Lightning ends the program on (exit status 1),
    with no checkpoint and no metrics.json; the handler this process had comes back."""
    from dear.training.module import DistillModule

    run_dir = tmp_path / "twice"
    run_dir.mkdir()
    cfg = compose(RESUMABLE + [f"cache_dir={toy_cache}", "steps=200", "checkpoint.every_steps=0"])
    step = DistillModule.training_step

    def ctrl_c_twice_at_step_2(self, prompts, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # noted: the run would stop after this step
            os.kill(os.getpid(), signal.SIGINT)  # at once
        return step(self, prompts, batch_idx)

    # Ctrl-C as a terminal delivers it, even when this test runs where SIGINT is ignored (a background job, nohup)
    ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(DistillModule, "training_step", ctrl_c_twice_at_step_2)
            with pytest.raises(SystemExit) as stop:
                train(cfg, run_dir)
        assert stop.value.code == 1
        assert not (run_dir / "checkpoints" / "last.ckpt").exists() and not (run_dir / "metrics.json").exists()
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler  # the handler it had comes back
    finally:
        signal.signal(signal.SIGINT, ignored)


def test_an_ignored_ctrl_c_stays_ignored():
    """A run started with SIGINT ignored (nohup, a shell's background job) is not stopped by one."""
    from dear.training.preemption import Preemption

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Preemption(Path("last.ckpt")).handlers():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
