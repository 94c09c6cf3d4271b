"""``dear-train``: one readable function from a composed config to a finished run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from dear.config import validate_train
from dear.data.prompts import prompt_loader
from dear.data.toy import ToyTaskConfig
from dear.models import check_compatible, load_model
from dear.module import DistillModule, accuracy_auc
from dear.runs import build_evaluator, build_loggers, run_record, write_json_atomic

log = logging.getLogger(__name__)


def train(cfg: DictConfig, run_dir: Path) -> dict:
    validate_train(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.trainer.get("threads"):
        torch.set_num_threads(int(cfg.trainer.threads))
    toy_task = ToyTaskConfig(**cfg.toy_task)

    log.info("Loading student %s and teacher %s", cfg.model.name, cfg.teacher.name)
    student = load_model(cfg.model, cfg.cache_dir, toy_task, trainable=True)
    teacher = load_model(cfg.teacher, cfg.cache_dir, toy_task, trainable=False, group="teacher")
    vocab_size = check_compatible(student, teacher)

    log.info("Preparing prompts (%s) and the %s benchmark", cfg.data.name, cfg.benchmark.name)
    data = prompt_loader(cfg.data, toy_task, student.tokenizer, chat_template=student.chat_template,
                         batch_size=int(cfg.batch_size), seed=int(cfg.seed))
    evaluator = build_evaluator(cfg, student, toy_task, vocab_size=vocab_size, kl_prompts=int(cfg.eval.kl_prompts))
    module = DistillModule(cfg, student.model, teacher.model, student.tokenizer, vocab_size, evaluator)

    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, precision=cfg.trainer.precision,
        max_steps=int(cfg.steps), logger=build_loggers(cfg, run_dir), default_root_dir=str(run_dir),
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(
            dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
            every_n_train_steps=max(1, int(cfg.eval.every) or int(cfg.steps) or 1))],
        gradient_clip_val=float(cfg.optim.grad_clip), log_every_n_steps=1, num_sanity_val_steps=0,
        limit_val_batches=0, enable_model_summary=False,
    )
    log.info("Training %s for %d steps (method=%s) in %s", cfg.model.name, cfg.steps, cfg.method.name, run_dir)
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=data, ckpt_path=cfg.ckpt_path)
    wall = time.perf_counter() - t0

    student.model.save_pretrained(run_dir / "student")
    student.tokenizer.save_pretrained(run_dir / "student")
    first, last = module.history[0], module.history[-1]
    metrics = run_record(cfg, run_dir, wall_time_s=wall, extra={
        "steps": int(trainer.global_step),
        "benchmarks": {cfg.benchmark.name: {"accuracy_before": first["accuracy"], "accuracy_after": last["accuracy"],
                                            "gain": last["accuracy"] - first["accuracy"]}},
        "heldout_reverse_kl": {"before": first.get("heldout_reverse_kl"), "after": last.get("heldout_reverse_kl")},
        "accuracy_auc": accuracy_auc(module.history),
        "curve": module.history,
        "mean_step_time_s": sum(module.step_seconds) / max(1, len(module.step_seconds)),
    })
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
