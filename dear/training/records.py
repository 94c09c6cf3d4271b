"""What a run writes beside its numbers (dear-train's metrics.json, dear-eval's summary.json): the seed, the
names, the package versions, the command, every setting, and how model-written code was isolated."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path

from dear.config.schema import EvalConfig, TrainConfig
from dear.data.kinds import runs_code

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
    if not runs_code(problems):
        return None
    from dear.eval.code import isolation

    return {"isolation": isolation(), "DEAR_SANDBOX": os.environ.get("DEAR_SANDBOX", "strict")}


def config_record(settings: TrainConfig | EvalConfig) -> dict:
    """Every setting a run used, as plain JSON, each section as its config file writes it (the method's
    knobs flat beside its name, as in conf/method/)."""
    record = asdict(settings)
    if isinstance(settings, TrainConfig):
        record["method"] = settings.method.record()
    return json.loads(json.dumps(record, default=str))
