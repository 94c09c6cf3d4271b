"""The held-out evaluations of a run: the curve (accuracy and on-policy reverse KL on ``benchmark`` before training,
every ``eval.every`` steps and at the end), and the other benchmarks (``eval.benchmarks``), evaluated at the ends only.

The curve's rows are metrics.json's ``curve`` and the ends are its ``benchmarks``; both travel in checkpoints, so a
resumed run keeps them. The last evaluation's per-problem records of each benchmark are kept for the run folder's
responses/ (`dear.training.metrics.write_responses`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dear.eval.runner import Evaluator

log = logging.getLogger(__name__)


class HeldOutCurve:
    """When the run evaluates, and what it found: one row per evaluation of the curve's benchmark (step, accuracy,
    heldout_reverse_kl...), and each other benchmark's summary before and after training (``ends``)."""

    def __init__(
        self, evaluator: Evaluator, *, every: int, seed: int, others: list[Evaluator] = (), reuse: Path | None = None
    ) -> None:
        self.evaluator = evaluator
        self.reuse = reuse  # where the untouched student's greedy answers are kept for every run that starts alike
        self.others = list(others)  # evaluated at the ends only (eval.benchmarks)
        self.every = every
        self.seed = seed
        self.history: list[dict] = []
        self.ends: dict[str, dict[str, dict]] = {}  # other benchmark -> {"before": summary, "after": summary}
        self.records: dict[str, list[dict]] = {}  # benchmark -> its latest evaluation's per-problem records

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def evaluate(self, module, end: str | None = None) -> dict:
        """Evaluate ``module.student`` at its current step (once a step), log the row and keep it; at an ``end``
        ("before" or "after" training) every other benchmark too."""
        step = int(module.global_step)
        if not (self.history and self.history[-1]["step"] == step):
            result = self._run(module, self.evaluator, teacher=module.teacher, end=end)
            self.history.append({"step": step, **result.summary})
            log.info("step %d: %s", step, _shown(result.summary))
            if module.logger is not None:
                module.logger.log_metrics({f"eval/{k}": v for k, v in result.summary.items()}, step=step)
        row = self.history[-1]
        if end is not None:  # the curve's own ends are its first and last rows
            for other in self.others:
                if end in self.ends.get(other.name, {}):
                    continue  # a resumed run does not evaluate the untouched student twice
                result = self._run(module, other, teacher=None, end=end)  # the held-out KL is the curve's measure
                self.ends.setdefault(other.name, {})[end] = result.summary
                log.info("%s training, %s: %s", end, other.name, _shown(result.summary))
                if module.logger is not None:
                    module.logger.log_metrics({f"eval/{other.name}/{k}": v for k, v in result.summary.items()}, step)
        return row

    def _run(self, module, evaluator: Evaluator, *, teacher, end: str | None = None):
        # Evaluation samples (the held-out KL) from its own seed, so it neither shifts the training
        # stream nor differs between a continuous run and one resumed from a checkpoint.
        step = int(module.global_step)
        with torch.random.fork_rng(devices=[module.device] if module.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + step)
            with module.step_precision():
                reuse = self.reuse if end == "before" else None  # a trained student's answers are its own
                result = evaluator.evaluate(module.student, teacher=teacher, reuse=reuse)
        self.records[evaluator.name] = result.records
        return result

    def state_dict(self) -> dict:
        return {"history": list(self.history), "ends": {k: dict(v) for k, v in self.ends.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.ends = {k: dict(v) for k, v in state.get("ends", {}).items()}


def _shown(summary: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in summary.items())
