"""The LightningModule: rollout -> teacher scoring -> objective -> optimizer step.

Each training step takes a batch of prompts, lets the student sample ``n`` responses to each,
and hands them to `dear.step.distill_step`, which runs student and teacher over the same tokens,
selects the tokens that count and returns the weighted loss.
Held-out evaluation (accuracy and on-policy reverse KL) runs before training, every
``eval.every`` steps, and at the end; its history travels in checkpoints so a resumed run
keeps its curve.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

from dear.eval.runner import Evaluator
from dear.rollout import generate
from dear.schedule import lr_factor
from dear.schema import TrainConfig
from dear.step import distill_step

log = logging.getLogger(__name__)

class _Frozen:
    """Holds the teacher outside the module's parameters: never optimised, never checkpointed."""

    def __init__(self, model):
        self.model = model


class DistillModule(L.LightningModule):
    """A thin shell around `dear.step.distill_step`: sampling, logging, optimisation, evaluation."""

    def __init__(self, cfg: TrainConfig, student, teacher, tokenizer, vocab_size: int, evaluator: Evaluator):
        super().__init__()
        self.cfg = cfg
        self.student = student
        self._teacher = _Frozen(teacher)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.evaluator = evaluator
        self.history: list[dict] = []  # one row per evaluation: step, accuracy, heldout_reverse_kl
        self.generator = torch.Generator().manual_seed(cfg.seed)  # for method=random
        self.step_seconds: list[float] = []

    @property
    def teacher(self):
        return self._teacher.model

    def training_step(self, prompts: list[str], batch_idx: int):
        t0 = time.perf_counter()
        r = self.cfg.rollout
        rollout = generate(self.student, self.tokenizer, prompts, n=r.n, temperature=r.temperature,
                           max_new_tokens=r.max_new_tokens).to(self.device)
        loss, stats = distill_step(self.student, self.teacher, rollout, self.cfg.method, self.cfg.loss,
                                   vocab_size=self.vocab_size, generator=self.generator)
        self.log_dict(stats, on_step=True, prog_bar=False, batch_size=len(prompts))
        self.log("kl", stats["train/reverse_kl"], prog_bar=True, on_step=True, batch_size=len(prompts))
        self.step_seconds.append(time.perf_counter() - t0)
        return loss

    # --- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.student.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(o.warmup_steps, self.cfg.steps, o.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation -----------------------------------------------------------------------
    def evaluate_now(self) -> dict:
        step = int(self.global_step)
        if self.history and self.history[-1]["step"] == step:
            return self.history[-1]
        # Evaluation samples (the held-out KL) from its own seed, so it neither shifts the training
        # stream nor differs between a continuous run and one resumed from a checkpoint.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed * 1_000_003 + step)
            result = self.evaluator.evaluate(self.student, teacher=self.teacher)
        row = {"step": step, **result.summary}
        self.history.append(row)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in result.summary.items()))
        if self.logger is not None:
            self.logger.log_metrics({f"eval/{k}": v for k, v in result.summary.items()}, step=step)
        return row

    def on_fit_start(self):
        self.teacher.to(self.device)
        self.teacher.eval()

    def on_train_start(self):
        self.evaluate_now()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        every = self.cfg.eval.every
        if every > 0 and self.global_step % every == 0:
            self.evaluate_now()

    def on_train_end(self):
        self.evaluate_now()

    def on_save_checkpoint(self, checkpoint):
        checkpoint["dear_history"] = list(self.history)
        checkpoint["dear_generator"] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("dear_history", []))
        if "dear_generator" in checkpoint:
            self.generator.set_state(checkpoint["dear_generator"])


def accuracy_auc(history: list[dict], key: str = "accuracy") -> float:
    """Area under the accuracy-vs-step curve, normalised by the steps covered (a mean accuracy)."""
    pts = sorted((h["step"], h[key]) for h in history if key in h)
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return pts[-1][1] if pts else math.nan
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])
