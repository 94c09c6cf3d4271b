"""``checkpoints/last.ckpt`` every so many optimizer steps or minutes, the run's whole state at the end of a step.

Lightning's ``ModelCheckpoint`` does not fit a module that steps its optimizer itself (``automatic_optimization =
False``): it ignores ``train_time_interval`` there (no checkpoint by time), and warns, with twelve lines of sample
code, that the checkpoint holds the weights after the step, which is what a resumed run needs.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class PeriodicCheckpoint(L.Callback):
    """Saves ``path`` at the end of every ``every_steps``-th optimizer step, or of the first step ``every_minutes``
    minutes after the last save (or the start); 0 turns either off. ``fit``'s end and a signal save it too
    (dear/train.py, `dear.training.preemption.Preemption`)."""

    def __init__(self, path: Path, *, every_steps: int = 0, every_minutes: float = 0) -> None:
        self.path = Path(path)
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self._saved_step: int | None = None
        self._since = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # a resumed run's first checkpoint is already there
        self._since = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = False
        if self.every_minutes:  # rank 0's clock decides for every rank: saving is collective
            by_time = trainer.strategy.broadcast(time.monotonic() - self._since >= 60 * self.every_minutes)
        # a step the non-finite guards skipped does not advance global_step: that state is already saved
        if (by_steps or by_time) and step != self._saved_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = step
            self._since = time.monotonic()
