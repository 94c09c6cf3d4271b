"""``dear-train``: one readable function from a composed config to a finished run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from dear.config.presets import benchmarks
from dear.config.schema import BenchmarkConfig, TrainConfig
from dear.data.prompts import prompt_loader, training_problems
from dear.distill.teacher_view import TeacherPrompts, templates_differ
from dear.errors import DearError
from dear.files import write_dir_atomic, write_json_atomic, writing
from dear.models.load import (
    LoadedModel,
    check_compatible,
    check_room,
    export_model,
    load_model,
    set_gradient_checkpointing,
)
from dear.models.precision import resolve_precision
from dear.preflight.settings import train_config
from dear.training.benchmark import build_evaluator, eval_problems
from dear.training.checkpoints import PeriodicCheckpoint
from dear.training.loggers import build_loggers
from dear.training.metrics import train_metrics, write_responses
from dear.training.module import DistillModule
from dear.training.preemption import Preemption, resume_command
from dear.training.progress import StepBar
from dear.training.quiet import quiet_libraries

log = logging.getLogger(__name__)


class RunStopped(DearError):
    """A run that stopped before its last step (a signal, or too many non-finite steps), with its checkpoint."""


def train(cfg, run_dir: Path) -> dict | None:
    """Distil ``cfg.model`` from ``cfg.teacher`` as the composed config ``cfg`` says; return metrics.json
    (None on the other ranks of a data-parallel run, which write nothing of their own)."""
    s = train_config(cfg)  # every setting checked before anything is loaded
    seed(s)

    evaluated = benchmarks(s)  # `benchmark` (the curve's) and eval.benchmarks: evaluated before and after training
    log.info(
        "Loading the %s prompts and the benchmark%s %s",
        s.data.name,
        "s" * (len(evaluated) > 1),
        ", ".join(b.name for b in evaluated),
    )
    sets = [(b, eval_problems(s, b)) for b in evaluated]  # before any model: a set that cannot be had fails at once
    train_problems = training_problems(s.data, s.seed) if s.data.name != "toy" else None
    log.info("Loading student %s and teacher %s", s.model.name, s.teacher.name)
    student, teacher, vocab_size = load_models(s, sets, train_problems)

    data, module = build(s, student, teacher, vocab_size, sets, train_problems)
    preemption = Preemption(run_dir / "checkpoints" / "last.ckpt")
    trainer = build_trainer(s, run_dir, preemption)

    log.info("Training %s for %d steps (method=%s) in %s", s.model.name, s.steps, s.method.name, run_dir)
    wall = fit(s, trainer, module, data, preemption, run_dir)
    if not trainer.is_global_zero:  # data parallel: rank 0 evaluates and writes the student and metrics.json
        return None

    problems = {b.name: ps for b, ps in sets}
    return write(s, run_dir, student, module, problems, steps=int(trainer.global_step), wall_time_s=wall)


def seed(s: TrainConfig) -> None:
    """Every random stream from ``seed`` (and the thread count ``trainer.threads``) before anything is loaded."""
    L.seed_everything(s.seed, workers=True, verbose=False)
    if s.trainer.threads:
        torch.set_num_threads(s.trainer.threads)


def load_models(
    s: TrainConfig, sets: list[tuple[BenchmarkConfig, list]], train_problems: list | None
) -> tuple[LoadedModel, LoadedModel, int]:
    """Student and teacher, each checked for room (prompt and response must fit its context), and the vocabulary
    size they share."""
    student = load_model(s.model, s.cache_dir, s.toy_task, trainable=True)
    room = s.model.context_length
    for b, problems in sets:
        key = "benchmark.max_new_tokens" if b is s.benchmark else "eval.benchmarks: its max_new_tokens"
        check_room(student, problems, b.max_new_tokens, room, f"{b.name} ({key})")
    check_room(student, train_problems, s.rollout.max_new_tokens, room, f"{s.data.name} (rollout.max_new_tokens)")
    teacher = load_model(s.teacher, s.cache_dir, s.toy_task, trainable=False, group="teacher")
    # the teacher reads each prompt in its own format, then the student's response
    check_room(
        teacher,
        train_problems,
        s.rollout.max_new_tokens,
        s.teacher.context_length,
        f"{s.data.name} (rollout.max_new_tokens)",
    )
    vocab_size = check_compatible(student, teacher)
    if s.step.gradient_checkpointing:
        set_gradient_checkpointing(student.model, True)
    return student, teacher, vocab_size


def build(
    s: TrainConfig,
    student: LoadedModel,
    teacher: LoadedModel,
    vocab_size: int,
    sets: list[tuple[BenchmarkConfig, list]],
    train_problems: list | None,
) -> tuple[DataLoader, DistillModule]:
    """The training prompts' loader and the module, with an evaluator of each benchmark's problems (``sets``:
    the curve's benchmark first)."""
    data = prompt_loader(
        s.data,
        s.toy_task,
        student.tokenizer,
        chat_template=student.chat_template,
        template_kwargs=student.template_kwargs,
        batch_size=s.batch_size,
        seed=s.seed,
        problems=train_problems,  # loaded once, before the models
    )
    (first, problems), *rest = sets
    evaluator = build_evaluator(
        s,
        student,
        problems,
        vocab_size=vocab_size,
        kl_prompts=s.eval.kl_prompts,
        teacher=teacher,
        benchmark=first,
        progress=True,  # a bar on a terminal (dear/eval/runner.py: progress_bar)
    )
    others = [build_evaluator(s, student, ps, vocab_size=vocab_size, benchmark=b, progress=True) for b, ps in rest]
    module = DistillModule(
        s, student.model, teacher.model, student.tokenizer, vocab_size, evaluator, prompts=data.dataset, others=others
    )
    if templates_differ(student, teacher):  # the teacher reads each training prompt in its own format
        module.teacher_prompts = TeacherPrompts.for_problems(train_problems or [], student, teacher)
    return data, module


def build_trainer(s: TrainConfig, run_dir: Path, preemption: Preemption) -> L.Trainer:
    """The Lightning trainer: devices, precision, logger, checkpoints every so often and on a signal, a step bar."""
    quiet_libraries()  # one console line per event (dear/training/quiet.py), before the Trainer logs its first
    return L.Trainer(
        accelerator=s.trainer.accelerator,
        devices=s.trainer.devices,
        num_nodes=s.trainer.num_nodes,
        strategy=s.trainer.strategy,
        precision=resolve_precision(s.trainer.precision),
        max_steps=s.steps,
        logger=build_loggers(s, run_dir),
        default_root_dir=str(run_dir),
        callbacks=[checkpoints(s, run_dir), preemption, StepBar()],
        enable_checkpointing=False,  # no Lightning ModelCheckpoint: checkpoints/last.ckpt is ours
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )


def fit(
    s: TrainConfig, trainer: L.Trainer, module: DistillModule, data: DataLoader, preemption: Preemption, run_dir: Path
) -> float:
    """Train to the last step (or resume to it) and save ``last.ckpt``; return the seconds it took. A run stopped
    early (a signal, the guards) raises `RunStopped`, with the command that resumes it."""
    last_ckpt = preemption.last_ckpt
    t0 = time.perf_counter()
    with preemption.handlers(), writing(last_ckpt.parent):  # SIGTERM/SIGUSR1/a first Ctrl-C: checkpoint, then stop
        try:
            trainer.fit(module, train_dataloaders=data, ckpt_path=s.ckpt_path or resume_path(run_dir))
        except SIGTERMException:  # Lightning's own SIGTERM handler ends fit after the step, as ours does
            preemption.stop_now(trainer, module)
        if not module.stop_reason:  # a stopped run saved its checkpoint when it stopped
            trainer.save_checkpoint(last_ckpt)
    wall = time.perf_counter() - t0
    if module.stop_reason:
        raise RunStopped(f"{module.stop_reason}; checkpoint {last_ckpt}; resume with: {resume_command(last_ckpt)}")
    return wall


def write(
    s: TrainConfig,
    run_dir: Path,
    student: LoadedModel,
    module: DistillModule,
    problems: dict[str, list],
    *,
    steps: int,
    wall_time_s: float,
) -> dict:
    """The trained student (student/), each benchmark's responses (responses/) and metrics.json; returns the
    metrics."""
    # In the preset's dtype (training held float32 weights); a run killed mid-export leaves the previous student/
    write_dir_atomic(run_dir / "student", lambda folder: export_model(student, folder))
    write_responses(run_dir, module.curve.records)
    metrics = train_metrics(s, run_dir, module, problems, steps=steps, wall_time_s=wall_time_s)
    write_json_atomic(run_dir / "metrics.json", metrics)
    if not s.checkpoint.keep:  # the run is finished and written: its checkpoint is only the optimizer's state now
        (run_dir / "checkpoints" / "last.ckpt").unlink(missing_ok=True)
    return metrics


def checkpoints(s: TrainConfig, run_dir: Path) -> PeriodicCheckpoint:
    """``checkpoints/last.ckpt`` every ``checkpoint.every_steps`` steps or ``every_minutes`` minutes."""
    c = s.checkpoint
    return PeriodicCheckpoint(
        run_dir / "checkpoints" / "last.ckpt", every_steps=c.every_steps, every_minutes=c.every_minutes
    )


def resume_path(run_dir: Path) -> str | None:
    """A requeued job (same run directory, same command) resumes from its own last checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and not (run_dir / "metrics.json").is_file():
        log.warning("Resuming from %s (this run directory holds an unfinished run)", last)
        return str(last)
    return None
