"""The LightningModule: rollout -> teacher scoring -> objective -> optimizer step.

Each training step takes a batch of prompts, lets the student sample ``n`` responses to each
(or the teacher, or reference solutions: ``method.source``, `dear.distill.sources`), and hands them to
`dear.distill.step.distill_step`, which runs student and teacher over the same tokens, selects the tokens
that count and returns the weighted loss. At the start and the end of training it draws what the
method selects on a few fixed held-out prompts (`dear.distill.selection_pages`): ``selection/step_<k>.html``.
Held-out evaluation (accuracy and on-policy reverse KL) runs before training, every
``eval.every`` steps, and at the end; its history travels in checkpoints so a resumed run
keeps its curve.

A resumed run is the same run: checkpoints also carry the prompt-stream position, every random
stream (torch, Python, NumPy, the selection generator) and the guard counters, restored before
the first step after the checkpoint. A step whose loss, gradient or teacher logits are not finite
is skipped (no optimizer update) and counted (``train/skipped_steps``); ``guards.max_skipped_in_a_row``
of them in a row stop the run.
"""

from __future__ import annotations

import logging
import math
import random
import time

import lightning as L
import numpy as np
import torch

from dear.config.schema import TrainConfig
from dear.data.prompts import PromptStream
from dear.distill.selection_pages import selection_page
from dear.distill.sources import training_rollout
from dear.distill.step import DataParallel, distill_step
from dear.distill.teacher_view import TeacherPrompts
from dear.eval.runner import Evaluator
from dear.files import write_text_atomic
from dear.models.precision import compute_context
from dear.models.schedule import lr_factor

log = logging.getLogger(__name__)

# Held-out prompts drawn in the selection pictures (the first of the benchmark's, fixed for the run).
PICTURE_PROMPTS = 4
# Step stats averaged over the run into metrics.json, under these names (the tables read them).
RUN_MEANS = {"train/grad_mass_coverage": "grad_mass_coverage", "train/selected_frac": "kept_share"}


class _Frozen:
    """Holds the teacher outside the module's parameters: never optimised, never checkpointed."""

    def __init__(self, model):
        self.model = model


class DistillModule(L.LightningModule):
    """A thin shell around `dear.distill.step.distill_step`: sampling, logging, optimisation, evaluation."""

    # Set when the teacher formats prompts differently from the student (dear/distill/teacher_view.py).
    teacher_prompts: TeacherPrompts | None = None

    def __init__(
        self,
        cfg: TrainConfig,
        student,
        teacher,
        tokenizer,
        vocab_size: int,
        evaluator: Evaluator,
        prompts: PromptStream | None = None,
    ):
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
        # Σ and count over the run of the step stats metrics.json averages (dear/train.py: run_means)
        self.run_sums: dict[str, list] = {key: [0.0, 0] for key in RUN_MEANS}
        self.pictures: list[str] = []  # the selection pages written (dear/distill/selection_pages.py)
        self.prompts = prompts  # told where to resume when a checkpoint is loaded
        self.prompts_seen = 0  # prompts trained on so far (skipped steps included)
        self.skipped_steps = 0
        self.skipped_in_a_row = 0
        self.stop_reason: str | None = None  # set when a guard or a signal stops the run early
        self._nonfinite: str | None = None  # what was not finite in the current step
        self._resume_rng: dict | None = None
        self._rank_stream_pending = False  # set at the start of a data-parallel fit
        # The check runs on the teacher's logits and on its final hidden states (step.logits=chunked makes no logits).
        teacher.register_forward_hook(self._check_teacher_logits)
        if callable(getattr(teacher, "get_decoder", None)) and teacher.get_decoder() is not teacher:
            teacher.get_decoder().register_forward_hook(self._check_teacher_logits)
        # Optimisation is manual: a step runs its micro-batches' backward passes itself (distill_step).
        self.automatic_optimization = False

    @property
    def teacher(self):
        return self._teacher.model

    def training_step(self, prompts: list[str], batch_idx: int):
        t0 = time.perf_counter()
        if self._resume_rng is not None:  # the first step after a checkpoint: draw what the run would have
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        if self._rank_stream_pending:  # data parallel: each rank samples from its own stream
            torch.manual_seed(rank_seed(self.cfg.seed, self.global_rank, int(self.global_step)))
            self._rank_stream_pending = False
        self.prompts_seen += len(prompts)
        self._nonfinite = None
        r = self.cfg.rollout
        # method.source: the student samples (on-policy), or the teacher (offline KD), or references (sft)
        rollout = training_rollout(
            self.cfg.method.source,
            self.student,
            self.teacher,
            self.tokenizer,
            prompts,
            r,
            task=self.cfg.toy_task,
            seed=self.cfg.seed,
            offset=self.prompts_seen - len(prompts),
        ).to(self.device)
        seen = self.teacher_prompts.view(rollout, prompts, r.n) if self.teacher_prompts else None
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss, stats = distill_step(
            self.student,
            self.teacher,
            rollout,
            self.cfg.method,
            self.cfg.loss,
            vocab_size=self.vocab_size,
            generator=self.generator,
            teacher_rollout=seen,
            step=self.cfg.step,
            backward=self.manual_backward,
            ranks=self._ranks(),
        )
        self.log_dict(stats, on_step=True, prog_bar=False, batch_size=len(prompts))
        if "train/reverse_kl" in stats:  # absent when it is not finite (a step the guards will skip)
            self.log("kl", stats["train/reverse_kl"], prog_bar=True, on_step=True, batch_size=len(prompts))
        self.step_seconds.append(time.perf_counter() - t0)
        for key in RUN_MEANS:
            if key in stats:  # absent when not finite
                self.run_sums[key] = [self.run_sums[key][0] + stats[key], self.run_sums[key][1] + 1]
        if self._nonfinite is None and not torch.isfinite(loss):
            self._nonfinite = "loss"
        optimizer.step()  # on_before_optimizer_step: the guards, then clipping
        # Free the gradients now, not at the next step's start: the rollout and any evaluation in between
        # then run without them (4 bytes a student parameter; 6 GB at 1.5B). dear-plan counts on it.
        optimizer.zero_grad(set_to_none=True)
        self.lr_schedulers().step()
        return loss

    def _ranks(self) -> DataParallel | None:
        """Data parallelism for the step: the number of ranks and a sum over them (None with one process)."""
        if self.trainer.world_size == 1:
            return None
        return DataParallel(self.trainer.world_size, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))

    # --- non-finite guards ----------------------------------------------------------------
    def _check_teacher_logits(self, _teacher, _inputs, output):
        """A forward hook on the teacher (and its decoder): flags the step if any teacher logit (or final
        hidden state) is NaN or infinite."""
        values = getattr(output, "logits", None)
        if values is None:
            values = getattr(output, "last_hidden_state", output)
        if not torch.isfinite(values).all():
            self._nonfinite = self._nonfinite or "teacher logits"

    def on_before_optimizer_step(self, optimizer):
        """Skip the update (every gradient dropped: AdamW leaves weights and moments as they are) if
        anything in this step was not finite; the scheduler and the step count go on. Otherwise clip
        the gradient's norm to ``optim.grad_clip`` (0: no clipping)."""
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if self._nonfinite is None and grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            self._nonfinite = "gradient"
        if self._nonfinite is None:
            self.skipped_in_a_row = 0
            if self.cfg.optim.grad_clip:
                self.clip_gradients(
                    optimizer, gradient_clip_val=self.cfg.optim.grad_clip, gradient_clip_algorithm="norm"
                )
        else:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            step = int(self.global_step) + 1
            log.warning(
                "step %d skipped: non-finite %s (%d skipped, %d in a row)",
                step,
                self._nonfinite,
                self.skipped_steps,
                self.skipped_in_a_row,
            )
            if self.skipped_in_a_row >= self.cfg.guards.max_skipped_in_a_row:
                self.stop_reason = (
                    f"{self.skipped_in_a_row} steps in a row (up to step {step}) were skipped for "
                    f"non-finite {self._nonfinite} (guards.max_skipped_in_a_row); the run stopped"
                )
                self.trainer.should_stop = True
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, batch_size=self.cfg.batch_size)

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
            with self._compute():
                result = self.evaluator.evaluate(self.student, teacher=self.teacher)
        row = {"step": step, **result.summary}
        self.history.append(row)
        log.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in result.summary.items()))
        if self.logger is not None:
            self.logger.log_metrics({f"eval/{k}": v for k, v in result.summary.items()}, step=step)
        return row

    def _compute(self):
        """Outside a training step (evaluation, pictures) compute as a step does: autocast under ``*-mixed``."""
        return compute_context(self.trainer.precision if self._trainer else "32-true", self.device)

    def on_fit_start(self):
        self.teacher.to(self.device)
        self.teacher.eval()

    def on_train_start(self):
        self._rank_stream_pending = self.trainer.world_size > 1
        if not self.trainer.is_global_zero:  # evaluation, pictures and their logs: rank 0's job
            return
        if self.global_step == 0 or self._evaluates_at(self.global_step):  # a resumed run keeps the same curve
            self.evaluate_now()
        if self.global_step == 0:
            self.draw_selection()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._evaluates_at(self.global_step) and self.trainer.is_global_zero:
            self.evaluate_now()

    def _evaluates_at(self, step: int) -> bool:
        return self.cfg.eval.every > 0 and step % self.cfg.eval.every == 0

    def on_train_end(self):
        if self.stop_reason is None and self.trainer.is_global_zero:  # a stopped run saves its state and goes
            self.evaluate_now()
            self.draw_selection()

    def draw_selection(self) -> None:
        """Write ``selection/step_<k>.html`` (what the method selects on fixed held-out prompts) and log it
        to W&B. Skipped when the teacher reads prompts in its own format (no bridge for held-out prompts)."""
        prompts = self.evaluator.prompts[:PICTURE_PROMPTS]
        if not prompts or self.teacher_prompts is not None or self.trainer is None:
            return
        from pathlib import Path

        step, r = int(self.global_step), self.cfg.rollout
        with self._compute():
            page = selection_page(
                self.student,
                self.teacher,
                self.tokenizer,
                prompts,
                self.cfg.method,
                self.cfg.loss,
                vocab_size=self.vocab_size,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                seed=self.cfg.seed,
                title=f"{self.cfg.method.name}: what it selects at step {step}",
                step=self.cfg.step,
            )
        path = Path(self.trainer.default_root_dir) / "selection" / f"step_{step}.html"
        write_text_atomic(path, page)
        self.pictures.append(str(path))
        if type(self.logger).__name__ == "WandbLogger":
            import wandb

            self.logger.experiment.log({"selection": wandb.Html(page)}, step=step)

    # --- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["dear_history"] = list(self.history)
        checkpoint["dear_generator"] = self.generator.get_state()
        checkpoint["dear_prompts_seen"] = self.prompts_seen
        checkpoint["dear_rng"] = rng_state()
        checkpoint["dear_skipped"] = [self.skipped_steps, self.skipped_in_a_row]
        checkpoint["dear_run_sums"] = {k: list(v) for k, v in self.run_sums.items()}

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("dear_history", []))
        if "dear_generator" in checkpoint:
            self.generator.set_state(checkpoint["dear_generator"])
        self.prompts_seen = checkpoint.get("dear_prompts_seen", 0)
        if self.prompts is not None:
            self.prompts.start = self.prompts_seen
        # Restored at the next training step, not here: Lightning draws from torch's generator
        # between loading a checkpoint and that step (the data loader's base seed).
        self._resume_rng = checkpoint.get("dear_rng")
        self.skipped_steps, self.skipped_in_a_row = checkpoint.get("dear_skipped", [0, 0])
        self.run_sums.update({k: list(v) for k, v in checkpoint.get("dear_run_sums", {}).items()})


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank ``rank``'s sampling stream in a data-parallel run, from the step it starts (or resumes) at."""
    return seed * 1_000_003 + 7_919 * (rank + 1) + step


def rng_state() -> dict:
    """Every random stream a training step draws from (torch's CPU and CUDA generators, Python's, NumPy's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_means(module: DistillModule) -> dict[str, float | None]:
    """metrics.json's run averages: the gradient-mass coverage and the kept share (README.md "The objective")."""
    return {
        name: (module.run_sums[key][0] / module.run_sums[key][1] if module.run_sums[key][1] else None)
        for key, name in RUN_MEANS.items()
    }


def accuracy_auc(history: list[dict], key: str = "accuracy") -> float:
    """Area under the accuracy-vs-step curve, normalised by the steps covered (a mean accuracy)."""
    pts = sorted((h["step"], h[key]) for h in history if key in h)
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return pts[-1][1] if pts else math.nan
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])
