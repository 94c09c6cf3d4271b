"""The LightningModule: rollout -> teacher scoring -> objective -> optimizer step.

Each training step takes a batch of prompts, lets the student sample ``n`` responses to each (or the
teacher, or reference solutions: ``method.source``, `dear.distill.sources`), and hands them to
`dear.distill.step.distill_step`, which runs student and teacher over the same tokens, selects the tokens
that count and returns the weighted loss. Around the step, each in its own part of dear/training/: the
non-finite guards (guards.py), the random streams a resumed run restores (rng.py), the held-out curve
(curve.py), the selection pages (pages.py) and the step stats averaged into metrics.json (metrics.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from dear.config.schema import TrainConfig
from dear.data.prompts import PromptStream
from dear.distill.sources import training_rollout
from dear.distill.step import DataParallel, distill_step
from dear.distill.teacher_view import TeacherPrompts
from dear.eval.runner import Evaluator
from dear.models.precision import compute_context
from dear.models.schedule import fused_for, optimizer
from dear.training.curve import HeldOutCurve
from dear.training.guards import NonFiniteGuard
from dear.training.metrics import StepMeans
from dear.training.pages import SelectionPages
from dear.training.rng import RandomStreams


class _Frozen:
    """Holds the teacher outside the module's parameters: never optimised, never checkpointed."""

    def __init__(self, model):
        self.model = model


class DistillModule(L.LightningModule):
    """A thin shell around `dear.distill.step.distill_step`: the models, the step, its logs and its optimizer."""

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
        others: list[Evaluator] = (),
    ):
        super().__init__()
        self.cfg, self.student, self._teacher = cfg, student, _Frozen(teacher)
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.prompts = prompts  # told where to resume when a checkpoint is loaded
        self.prompts_seen = 0  # prompts trained on so far (skipped steps included)
        self.step_means = StepMeans()
        self.stop_reason: str | None = None  # set when a guard or a signal stops the run early
        self.streams = RandomStreams(cfg.seed)
        self.guard = NonFiniteGuard(teacher, cfg.guards.max_skipped_in_a_row, cfg.optim.grad_clip, cfg.batch_size)
        reuse = Path(cfg.cache_dir).expanduser() / "evals" if cfg.eval.reuse_before else None
        self.curve = HeldOutCurve(evaluator, every=cfg.eval.every, seed=cfg.seed, others=others, reuse=reuse)
        self.pages = SelectionPages(evaluator.prompts)
        # Optimisation is manual: a step runs its micro-batches' backward passes itself (distill_step).
        self.automatic_optimization = False

    @property
    def teacher(self):
        return self._teacher.model

    def configure_callbacks(self) -> list[L.Callback]:
        return [self.guard, self.streams]

    def training_step(self, prompts: list[str], batch_idx: int):
        t0 = time.perf_counter()
        self.prompts_seen += len(prompts)
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
            generator=self.streams.selection,
            teacher_rollout=seen,
            step=self.cfg.step,
            backward=self.manual_backward,
            ranks=self._ranks(),
        )
        self.log_dict(stats, on_step=True, prog_bar=False, batch_size=len(prompts))
        if "train/reverse_kl" in stats:  # absent when it is not finite (a step the guards will skip)
            self.log("kl", stats["train/reverse_kl"], prog_bar=True, on_step=True, batch_size=len(prompts))
        self.step_means.add(stats, time.perf_counter() - t0)
        self.guard.check_loss(loss)
        optimizer.step()  # the guard's on_before_optimizer_step: skip or clip
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

    def configure_optimizers(self):
        fused = fused_for(self.trainer.precision)
        opt, sched = optimizer(self.student.parameters(), self.cfg.optim, self.cfg.steps, fused=fused)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def step_precision(self):
        """Outside a training step (evaluation, pages) compute as a step does: autocast under ``*-mixed``."""
        return compute_context(self.trainer.precision if self._trainer else "32-true", self.device)

    def on_fit_start(self):
        self.teacher.to(self.device)
        self.teacher.eval()

    # Evaluation and pages are rank 0's, and module hooks: Lightning calls these after every callback's, so a
    # checkpoint of step k (PeriodicCheckpoint, Preemption) is written before step k's evaluation, which a run
    # resumed from it then runs and logs itself.
    def on_train_start(self):
        if not self.trainer.is_global_zero:
            return
        if self.global_step == 0 or self.curve.due(self.global_step):  # a resumed run keeps the same curve
            self.curve.evaluate(self, end="before" if self.global_step == 0 else None)
        if self.global_step == 0:
            self.pages.draw(self)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.curve.due(self.global_step) and self.trainer.is_global_zero:
            self.curve.evaluate(self)

    def on_train_end(self):
        if self.stop_reason is None and self.trainer.is_global_zero:  # a stopped run saves its state and goes
            self.curve.evaluate(self, end="after")
            self.pages.draw(self)

    # The step's own state (the guard's counters and the random streams are saved by their callbacks).
    def on_save_checkpoint(self, checkpoint):
        checkpoint["dear_prompts_seen"] = self.prompts_seen
        checkpoint["dear_run_sums"] = self.step_means.state_dict()
        checkpoint["dear_curve"] = self.curve.state_dict()
        checkpoint["dear_pages"] = list(self.pages.written)  # a run resumed in its folder lists them all

    def on_load_checkpoint(self, checkpoint):
        self.prompts_seen = checkpoint["dear_prompts_seen"]
        if self.prompts is not None:
            self.prompts.start = self.prompts_seen
        self.step_means.load_state_dict(checkpoint["dear_run_sums"])
        self.pages.written = list(checkpoint.get("dear_pages", []))
        self.curve.load_state_dict(checkpoint.get("dear_curve") or {"history": checkpoint["dear_history"]})
