"""The held-out curve: accuracy and on-policy reverse KL before training, every ``eval.every`` steps and at the end.

Its rows are metrics.json's ``curve``; they travel in checkpoints, so a resumed run keeps its curve.
"""

from __future__ import annotations

import logging

import torch

from dear.eval.runner import Evaluator

log = logging.getLogger(__name__)


class HeldOutCurve:
    """When the run evaluates, and what it found: one row per evaluation (step, accuracy, heldout_reverse_kl...)."""

    def __init__(self, evaluator: Evaluator, *, every: int, seed: int) -> None:
        self.evaluator = evaluator
        self.every = every
        self.seed = seed
        self.history: list[dict] = []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def evaluate(self, module) -> dict:
        """Evaluate ``module.student`` at its current step (once a step), log the row and keep it."""
        step = int(module.global_step)
        if self.history and self.history[-1]["step"] == step:
            return self.history[-1]
        # Evaluation samples (the held-out KL) from its own seed, so it neither shifts the training
        # stream nor differs between a continuous run and one resumed from a checkpoint.
        with torch.random.fork_rng(devices=[module.device] if module.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + step)
            with module.step_precision():
                result = self.evaluator.evaluate(module.student, teacher=module.teacher)
        row = {"step": step, **result.summary}
        self.history.append(row)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in result.summary.items()))
        if module.logger is not None:
            module.logger.log_metrics({f"eval/{k}": v for k, v in result.summary.items()}, step=step)
        return row
