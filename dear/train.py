"""``dear-train``: one readable function from a composed config to a finished run directory."""

from __future__ import annotations

import datetime
import logging
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dear.data.benchmarks import subset_note
from dear.data.prompts import prompt_loader, training_problems
from dear.distill.teacher_view import TeacherPrompts, templates_differ
from dear.errors import DearError
from dear.files import write_dir_atomic, writing
from dear.models.load import check_compatible, check_room, export_model, load_model, set_gradient_checkpointing
from dear.models.precision import resolve_precision
from dear.preflight import train_config
from dear.training.module import DistillModule, accuracy_auc, run_means
from dear.training.preemption import Preemption, resume_command
from dear.training.runs import (
    build_evaluator,
    build_loggers,
    eval_problems,
    run_record,
    sandbox_record,
    write_json_atomic,
)

log = logging.getLogger(__name__)


class RunStopped(DearError):
    """A run that stopped before its last step (a signal, or too many non-finite steps), with its checkpoint."""


def train(cfg, run_dir: Path) -> dict | None:
    """Distil ``cfg.model`` from ``cfg.teacher`` as the composed config ``cfg`` says; return metrics.json
    (None on the other ranks of a data-parallel run, which write nothing of their own)."""
    s = train_config(cfg)  # every setting checked before anything is loaded
    L.seed_everything(s.seed, workers=True, verbose=False)
    if s.trainer.threads:
        torch.set_num_threads(s.trainer.threads)

    log.info("Loading the %s benchmark and the %s prompts", s.benchmark.name, s.data.name)
    problems = eval_problems(s)  # before any model: a set that cannot be had fails at once
    train_problems = training_problems(s.data, s.seed) if s.data.name != "toy" else None

    log.info("Loading student %s and teacher %s", s.model.name, s.teacher.name)
    student = load_model(s.model, s.cache_dir, s.toy_task, trainable=True)
    check_room(
        student,
        problems,
        s.benchmark.max_new_tokens,
        s.model.context_length,
        f"{s.benchmark.name} (benchmark.max_new_tokens)",
    )
    check_room(
        student,
        train_problems,
        s.rollout.max_new_tokens,
        s.model.context_length,
        f"{s.data.name} (rollout.max_new_tokens)",
    )
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

    log.info("Preparing prompts (%s) and the %s benchmark", s.data.name, s.benchmark.name)
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
    evaluator = build_evaluator(
        s, student, problems, vocab_size=vocab_size, kl_prompts=s.eval.kl_prompts, teacher=teacher
    )
    module = DistillModule(
        s, student.model, teacher.model, student.tokenizer, vocab_size, evaluator, prompts=data.dataset
    )
    if templates_differ(student, teacher):  # the teacher reads each training prompt in its own format
        module.teacher_prompts = TeacherPrompts.for_problems(train_problems or [], student, teacher)

    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    preemption = Preemption(last_ckpt)
    trainer = L.Trainer(
        accelerator=s.trainer.accelerator,
        devices=s.trainer.devices,
        strategy=s.trainer.strategy,
        precision=resolve_precision(s.trainer.precision),
        max_steps=s.steps,
        logger=build_loggers(s, run_dir),
        default_root_dir=str(run_dir),
        callbacks=[checkpoints(s, run_dir), preemption],
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    log.info("Training %s for %d steps (method=%s) in %s", s.model.name, s.steps, s.method.name, run_dir)
    t0 = time.perf_counter()
    with preemption.handlers(), writing(last_ckpt.parent):  # SIGTERM/SIGUSR1: checkpoint, then stop
        try:
            trainer.fit(module, train_dataloaders=data, ckpt_path=s.ckpt_path or resume_path(run_dir))
        except SIGTERMException:  # Lightning's own SIGTERM handler ends fit after the step, as ours does
            preemption.stop_now(trainer, module)
        if not module.stop_reason:  # a stopped run saved its checkpoint when it stopped
            trainer.save_checkpoint(last_ckpt)
    wall = time.perf_counter() - t0
    if module.stop_reason:
        raise RunStopped(f"{module.stop_reason}; checkpoint {last_ckpt}; resume with: {resume_command(last_ckpt)}")
    if not trainer.is_global_zero:  # data parallel: rank 0 evaluates and writes the student and metrics.json
        return None

    # In the preset's dtype (training held float32 weights); a run killed mid-export leaves the previous student/
    write_dir_atomic(run_dir / "student", lambda folder: export_model(student, folder))
    first, last = module.history[0], module.history[-1]
    metrics = run_record(
        s,
        run_dir,
        wall_time_s=wall,
        extra={
            "steps": int(trainer.global_step),
            "sandbox": sandbox_record(problems),
            "benchmarks": {
                s.benchmark.name: {
                    "accuracy_before": first["accuracy"],
                    "accuracy_after": last["accuracy"],
                    "gain": last["accuracy"] - first["accuracy"],
                    "subset": subset_note(s.benchmark.name),  # an offline subset of the published set, or None
                }
            },
            "heldout_reverse_kl": {"before": first.get("heldout_reverse_kl"), "after": last.get("heldout_reverse_kl")},
            "accuracy_auc": accuracy_auc(module.history),
            "curve": module.history,
            "mean_step_time_s": sum(module.step_seconds) / max(1, len(module.step_seconds)),
            **run_means(
                module
            ),  # grad_mass_coverage (README.md "The objective") and kept_share, averaged over the steps
            # HTML pages of what the method selects at the start and the end (dear/distill/selection_pages.py)
            "selection_pages": module.pictures,
            "skipped_steps": module.skipped_steps,  # non-finite loss, gradient or teacher logits (module.py)
        },
    )
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics


def checkpoints(s, run_dir: Path) -> L.pytorch.callbacks.ModelCheckpoint:
    """``checkpoints/last.ckpt`` every ``checkpoint.every_steps`` steps or ``every_minutes`` minutes."""
    c = s.checkpoint
    every = (
        {"train_time_interval": datetime.timedelta(minutes=c.every_minutes)}
        if c.every_minutes
        else {"every_n_train_steps": c.every_steps or max(1, s.steps)}
    )
    return L.pytorch.callbacks.ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0, **every)


def resume_path(run_dir: Path) -> str | None:
    """A requeued job (same run directory, same command) resumes from its own last checkpoint."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and not (run_dir / "metrics.json").is_file():
        log.warning("Resuming from %s (this run directory holds an unfinished run)", last)
        return str(last)
    return None
