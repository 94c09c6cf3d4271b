"""Non-finite guards: a step whose loss, gradient or teacher logits are not finite changes nothing.

Such a step is skipped (no optimizer update; the scheduler and the step count go on) and counted
(``train/skipped_steps``, metrics.json's ``skipped_steps``); ``guards.max_skipped_in_a_row`` of them in a
row stop the run with a checkpoint of the last good state (`dear.training.preemption.Preemption` saves it).
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def all_finite(tensors) -> bool:
    """Whether every entry of ``tensors`` is finite. One fused pass first: their joint 2-norm is finite when every
    entry is (NaN and inf carry through it); only when it is not are they checked entry by entry, since finite
    entries past ~1e19 overflow the norm. For SmolLM2-135M's gradients 0.02 s against 0.23 s entry by entry."""
    tensors = list(tensors)
    if not tensors:
        return True
    total = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if total is None:
        total = lambda ts: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in ts]))  # noqa: E731
    norm = total(tensors)
    if torch.isfinite(norm):
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class NonFiniteGuard(Callback):
    """Decides, just before each optimizer update, whether the step counts: skip it if anything in it was not
    finite, else clip its gradient's norm to ``grad_clip`` (0: no clipping). The counters travel in checkpoints."""

    def __init__(self, teacher, max_in_a_row: int, grad_clip: float, batch_size: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.grad_clip = grad_clip
        self.batch_size = batch_size  # what the logged count is averaged over
        self.skipped = 0
        self.in_a_row = 0
        self.flagged: str | None = None  # what was not finite in the current step
        # The check runs on the teacher's logits and on its final hidden states (step.logits=chunked makes no logits).
        teacher.register_forward_hook(self._check_teacher)
        if callable(getattr(teacher, "get_decoder", None)) and teacher.get_decoder() is not teacher:
            teacher.get_decoder().register_forward_hook(self._check_teacher)

    def flag(self, what: str) -> None:
        """Mark the current step as not finite (the first reason found is the one reported)."""
        self.flagged = self.flagged or what

    def check_loss(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            self.flag("loss")

    def _check_teacher(self, _teacher, _inputs, output) -> None:
        """A forward hook on the teacher (and its decoder): flags the step if any teacher logit (or final
        hidden state) is NaN or infinite."""
        values = getattr(output, "logits", None)
        if values is None:
            values = getattr(output, "last_hidden_state", output)
        if not torch.isfinite(values).all():
            self.flag("teacher logits")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.flagged = None  # the teacher's forward passes in evaluation and the pages do not count

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Skip the update (every gradient dropped: AdamW leaves weights and moments as they are) if anything in
        this step was not finite; otherwise clip."""
        grads = [p.grad for p in pl_module.student.parameters() if p.grad is not None]
        if self.flagged is None and not all_finite(grads):
            self.flag("gradient")
        if self.flagged is None:
            self.in_a_row = 0
            if self.grad_clip:
                pl_module.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        else:
            optimizer.zero_grad(set_to_none=True)
            self._skip(trainer, pl_module)
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, batch_size=self.batch_size)

    def _skip(self, trainer, pl_module) -> None:
        """Count the skipped step; stop the run (``stop_reason``) after ``max_in_a_row`` in a row."""
        self.skipped += 1
        self.in_a_row += 1
        step = int(trainer.global_step) + 1
        log.warning(
            "step %d skipped: non-finite %s (%d skipped, %d in a row)", step, self.flagged, self.skipped, self.in_a_row
        )
        if self.in_a_row >= self.max_in_a_row:
            pl_module.stop_reason = (
                f"{self.in_a_row} steps in a row (up to step {step}) were skipped for "
                f"non-finite {self.flagged} (guards.max_skipped_in_a_row); the run stopped"
            )
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped, self.in_a_row = state_dict["skipped"], state_dict["in_a_row"]
