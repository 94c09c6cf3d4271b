"""What every run writes next to its results: loggers, evaluators, versions, atomic JSON."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from dear.config.schema import EvalConfig, TrainConfig
from dear.eval.runner import Evaluator
from dear.files import write_json_atomic  # noqa: F401  (re-exported: runs write their records with it)

log = logging.getLogger(__name__)

PACKAGES = ("dear", "torch", "transformers", "lightning", "hydra-core", "omegaconf", "wandb", "datasets")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_record(settings: TrainConfig | EvalConfig, run_dir: Path, *, wall_time_s: float, extra: dict) -> dict:
    """What every run writes beside its numbers: seed, names, versions, the command and every setting."""
    return {
        "status": "complete",
        "run_dir": str(run_dir),
        "seed": settings.seed,
        "model": settings.model.name,
        "teacher": settings.teacher.name if isinstance(settings, TrainConfig) else None,
        "method": settings.method.name if isinstance(settings, TrainConfig) else None,
        **extra,
        "wall_time_s": wall_time_s,
        "versions": versions(),
        "command": " ".join(sys.argv),
        "config": config_record(settings),
    }


def sandbox_record(problems: list) -> dict | None:
    """How model-written code was isolated while grading ``problems`` (None when none of them is code)."""
    if not any(p.kind in ("code", "code-io") for p in problems):
        return None
    from dear.eval.code import isolation

    return {"isolation": isolation(), "DEAR_SANDBOX": os.environ.get("DEAR_SANDBOX", "strict")}


def config_record(settings: TrainConfig | EvalConfig) -> dict:
    """Every setting a run used, as plain JSON (None where a knob is not read)."""
    return json.loads(json.dumps(asdict(settings), default=str))


def eval_problems(settings: TrainConfig | EvalConfig) -> list:
    """The problems of ``settings.benchmark`` (loaded before any model, so a missing set fails at once)."""
    from dear.data.benchmarks import load_benchmark, subset_note

    b = settings.benchmark
    options = dict(b.options or {})
    if b.name == "toy":
        options["task"] = asdict(settings.toy_task)
    problems = load_benchmark(b.name, limit=b.limit, seed=settings.seed, **options)
    if subset_note(b.name):  # metrics.json and the tables say it too
        log.warning("benchmark %s is an offline subset: %s", b.name, subset_note(b.name))
    return problems


def build_evaluator(
    settings: TrainConfig | EvalConfig,
    loaded,
    problems: list,
    *,
    vocab_size: int | None = None,
    kl_prompts: int = 0,
    progress: bool = False,
    teacher=None,
) -> Evaluator:
    """The evaluator of ``problems`` (`eval_problems`) for the `LoadedModel` ``loaded`` and its teacher, if any."""
    b = settings.benchmark
    return Evaluator(
        name=b.name,
        problems=problems,
        tokenizer=loaded.tokenizer,
        chat_template=loaded.chat_template,
        template_kwargs=loaded.template_kwargs,
        max_new_tokens=b.max_new_tokens,
        batch_size=settings.eval.batch_size,
        samples=b.samples,
        temperature=b.temperature,
        kl_prompts=kl_prompts,
        vocab_size=vocab_size,
        step=settings.step if isinstance(settings, TrainConfig) else None,
        progress=progress,
        **_teacher_format(loaded, teacher),
    )


def _teacher_format(student, teacher) -> dict:
    """Evaluator arguments for a teacher that reads prompts in its own format (dear/distill/teacher_view.py)."""
    from dear.data.benchmarks import format_prompt
    from dear.distill.teacher_view import prompt_formatter, templates_differ

    if teacher is None or not templates_differ(student, teacher):
        return {}
    return {
        "teacher_format": prompt_formatter(format_prompt, teacher),
        "teacher_tokenizer": teacher.tokenizer,
    }


def build_loggers(settings: TrainConfig, run_dir: Path):
    lg = settings.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    from lightning.pytorch.loggers import WandbLogger  # logger=wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    # One W&B run per job, grouped by sweep or table, tagged with its method and student-teacher pair
    tags = [f"method={settings.method.name}", f"pair={settings.model.name}<-{settings.teacher.name}"]
    return WandbLogger(
        project=lg.project,
        entity=lg.entity,
        save_dir=str(run_dir),
        offline=lg.offline,
        name=run_dir.name,
        config=config_record(settings),
        group=lg.group,
        tags=tags,
    )
