"""The LightningModule: rollout -> teacher scoring -> objective -> optimizer step.

Each training step takes a batch of prompts, lets the student sample ``n`` responses to each,
runs student and teacher over the same tokens, computes the per-token signals, asks
``dear.objective.select_tokens`` which tokens count, and minimises ``distill_loss`` on them.
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

from dear import objective
from dear.config import method_knobs
from dear.eval.runner import Evaluator
from dear.rollout import Rollout, generate
from dear.schedule import lr_factor

log = logging.getLogger(__name__)

class _Frozen:
    """Holds the teacher outside the module's parameters: never optimised, never checkpointed."""

    def __init__(self, model):
        self.model = model


class DistillModule(L.LightningModule):
    def __init__(self, cfg, student, teacher, tokenizer, vocab_size: int, evaluator: Evaluator):
        super().__init__()
        self.cfg = cfg
        self.student = student
        self._teacher = _Frozen(teacher)
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.evaluator = evaluator
        self.knobs = method_knobs(cfg.method)
        self.history: list[dict] = []  # one row per evaluation: step, accuracy, heldout_reverse_kl
        self.generator = torch.Generator().manual_seed(int(cfg.seed))  # for method=random
        self.step_seconds: list[float] = []

    @property
    def teacher(self):
        return self._teacher.model

    # --- one step -------------------------------------------------------------------------
    def forward_pair(self, rollout: Rollout):
        """Student logits and hidden states (with grad), teacher logits (without), all [B, L-1, ...]."""
        kw = dict(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                  position_ids=rollout.position_ids)
        out = self.student(**kw, output_hidden_states=True)
        with torch.no_grad():
            t_logits = self.teacher(**kw).logits[:, :-1]
        hidden = out.hidden_states[int(self.cfg.method.hidden_layer)][:, :-1].detach()
        return out.logits[:, :-1], t_logits, hidden  # position t predicts token t+1

    def training_step(self, prompts: list[str], batch_idx: int):
        t0 = time.perf_counter()
        r = self.cfg.rollout
        rollout = generate(self.student, self.tokenizer, prompts, n=int(r.n), temperature=float(r.temperature),
                           max_new_tokens=int(r.max_new_tokens)).to(self.device)
        s_logits, t_logits, hidden = self.forward_pair(rollout)
        mask, targets = rollout.target_mask, rollout.input_ids[:, 1:]
        signals = objective.token_signals(
            s_logits.detach(), t_logits, mask, sampled_ids=targets, divergence=self.cfg.method.divergence,
            temperature=float(self.cfg.loss.temperature), vocab_size=self.vocab_size)
        selection = objective.select_tokens(
            self.cfg.method.name, entropy=signals.entropy, divergence=signals.divergence, hidden=hidden,
            mask=mask, generator=self.generator, **self.knobs)
        loss, loss_stats = objective.distill_loss(
            s_logits, t_logits, selection.weights, kind=self.cfg.loss.kind, sampled_ids=targets, mask=mask,
            normalize=self.cfg.loss.normalize, temperature=float(self.cfg.loss.temperature),
            beta=float(self.cfg.loss.beta), vocab_size=self.vocab_size)
        stats = objective.selection_stats(selection, signals, mask)
        stats = {f"train/{k}": v for k, v in stats.items() if not math.isnan(v)}
        stats["train/loss"] = float(loss_stats["loss"])
        stats["train/response_tokens"] = float(mask.sum()) / mask.shape[0]
        self.log_dict(stats, on_step=True, prog_bar=False, batch_size=len(prompts))
        self.log("kl", stats["train/reverse_kl"], prog_bar=True, on_step=True, batch_size=len(prompts))
        self.step_seconds.append(time.perf_counter() - t0)
        return loss

    # --- optimisation ---------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.student.parameters(), lr=float(o.lr), weight_decay=float(o.weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_factor(int(o.warmup_steps), int(self.cfg.steps), str(o.get("schedule", "cosine"))))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- evaluation -----------------------------------------------------------------------
    def evaluate_now(self) -> dict:
        step = int(self.global_step)
        if self.history and self.history[-1]["step"] == step:
            return self.history[-1]
        # Evaluation samples (the held-out KL) from its own seed, so it neither shifts the training
        # stream nor differs between a continuous run and one resumed from a checkpoint.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(self.cfg.seed) * 1_000_003 + step)
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
        every = int(self.cfg.eval.every)
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
