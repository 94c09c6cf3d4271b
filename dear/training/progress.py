"""The console's bar of a training run: ``train 57/120`` in optimizer steps, with the last step's reverse KL.

It counts ``trainer.global_step`` from the step a resumed run starts at up to ``steps`` (Lightning's own bars count
the batches of an epoch: ``Epoch 0/-2``, and ``300/238`` after a resume), shows no logger version, and is drawn only
on a terminal, where the run's log lines print above it; the evaluations draw theirs below it
(`dear.eval.runner.progress_bar`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

from lightning.pytorch.callbacks import ProgressBar
from tqdm.auto import tqdm

from dear.eval.runner import progress_bar


class StepBar(ProgressBar):
    """One bar over the optimizer steps of ``fit`` (rank 0 only)."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._bar = None
        self._logs = contextlib.ExitStack()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: a random W&B id says nothing here
        return metrics

    def print(self, *args, sep: str = " ", **kwargs) -> None:
        tqdm.write(sep.join(map(str, args)), **kwargs)

    def on_train_start(self, trainer, pl_module) -> None:
        bar = progress_bar(
            "train", trainer.max_steps, unit="step", initial=trainer.global_step, enabled=self._enabled, leave=True
        )
        self._bar = bar
        if not bar.disable:
            self._logs.enter_context(logs_above_bars())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            self._bar.update(trainer.global_step - self._bar.n)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._logs.close()


class _AboveBars:
    """A console stream whose writes clear tqdm's bars, print, then draw the bars again (``tqdm.write``)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        tqdm.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def logs_above_bars() -> Iterator[None]:
    """Log lines print above the bars while they are drawn: the root logger's console handlers write through
    ``tqdm.write`` (their formats and filters stay; a file handler is left alone)."""
    consoles = [
        h
        for h in logging.getLogger().handlers
        if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)
    ]
    streams = [h.setStream(_AboveBars(h.stream)) for h in consoles]
    try:
        yield
    finally:
        for handler, stream in zip(consoles, streams):
            handler.setStream(stream)
