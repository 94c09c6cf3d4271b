"""Stopping a run cleanly when the cluster or the user says so: SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) save
a checkpoint and stop; a second Ctrl-C stops at once, as Python's KeyboardInterrupt does.

The signal handler only notes the signal; the `Preemption` callback acts at the end of the current
training step, so the checkpoint holds a finished step (weights, optimizer, scheduler, prompt-stream
position, random streams) and a resumed run continues exactly where this one stopped. Under SLURM
(``SLURM_JOB_ID`` set) SIGUSR1 also asks ``scontrol`` to requeue the job; a requeued job that finds
``checkpoints/last.ckpt`` in its own run directory resumes from it (see `dear.train.resume_path`). The command
`resume_command` prints resumes into the same run directory (`dear.preflight.command.resume_in_place`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning as L

from dear.preflight.command import as_override

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preemption(L.Callback):
    """Saves ``last.ckpt`` and stops the trainer at the end of the step during which a signal came
    (or in which a non-finite guard gave up: `DistillModule.stop_reason`)."""

    def __init__(self, last_ckpt: Path) -> None:
        self.last_ckpt = last_ckpt
        self.received: signal.Signals | None = None
        self.saved = False

    def notice(self, signum, _frame) -> None:
        received = signal.Signals(signum)
        if received == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # Ctrl-C while already stopping: stop at once, without a checkpoint
        if self.received is None:
            again = " (Ctrl-C again to stop at once, without one)" if received == signal.SIGINT else ""
            log.warning("received %s: stopping after this step with a checkpoint%s", received.name, again)
        self.received = received

    @contextlib.contextmanager
    def handlers(self) -> Iterator[None]:
        """Route SIGTERM, SIGUSR1 and SIGINT to `notice` for the duration (the previous handlers come back after).
        A signal this process ignores stays ignored (``nohup``, a shell's background job: Ctrl-C is not theirs)."""
        previous = {s: signal.signal(s, self.notice) for s in SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def on_train_start(self, trainer, pl_module) -> None:
        self._stop_if_asked(trainer, pl_module)  # a signal while the models loaded: stop before the first step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_asked(trainer, pl_module)

    def stop_now(self, trainer, pl_module) -> None:
        """Lightning ended ``fit`` on a SIGTERM (after the step, as we would): make sure the checkpoint is there."""
        if self.received is None:
            raise RuntimeError("fit stopped on a SIGTERM that dear's handler did not see")
        self._stop_if_asked(trainer, pl_module)

    def _stop_if_asked(self, trainer, pl_module) -> None:
        """On a signal, or when a guard stopped the run (``stop_reason``): save ``last.ckpt`` and stop."""
        if self.saved or (self.received is None and pl_module.stop_reason is None):
            return
        trainer.save_checkpoint(self.last_ckpt)
        self.saved = True
        trainer.should_stop = True
        if pl_module.stop_reason is None:
            pl_module.stop_reason = f"stopped by {self.received.name} after step {trainer.global_step}"
        if self.received == signal.SIGUSR1 and os.environ.get("SLURM_JOB_ID"):
            requeue()


def requeue() -> None:
    """Ask SLURM to requeue this job (the requeued job resumes from its run directory's last.ckpt)."""
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            log.warning("requeued SLURM job %s", job)
        else:
            log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("scontrol requeue %s failed: %s", job, e)


def resume_command(last_ckpt: Path) -> str:
    """The command that resumes this run: the same overrides, plus ``ckpt_path`` (replaced if given). Given a run's
    ``checkpoints/last.ckpt``, dear-train runs in that run's folder (`dear.preflight.command.resume_in_place`)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (a test calling train()): the command line as given
        overrides = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("ckpt_path=")]
    return shlex.join(["dear-train", *overrides, as_override("ckpt_path", str(last_ckpt.resolve()))])
