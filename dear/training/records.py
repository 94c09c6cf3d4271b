"""What a run writes beside its numbers (dear-train's metrics.json, dear-eval's summary.json): the seed, the
names, the package versions, the code's git commit, the hardware, the command, every setting, the checkpoint it
resumed from, and how model-written code was isolated."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from dear.config.schema import EvalConfig, TrainConfig
from dear.data.kinds import runs_code

PACKAGES = ("dear", "torch", "transformers", "lightning", "hydra-core", "omegaconf", "wandb", "datasets")
SOURCE = Path(__file__).resolve().parents[1]  # the dear package's folder: a git checkout's, or site-packages'
GIT_TIMEOUT_S = 5


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def code_version(source: Path = SOURCE) -> dict | None:
    """The git commit of the code in ``source`` and whether tracked files differ from it (``dirty``, as
    ``git describe --dirty`` says: untracked files do not count); None where that code is not a tracked part of a
    git checkout (an installed wheel, no git, a timeout). Asked once per process: `dear.cli` asks before a run
    starts, so a tree changed during a long run does not change the answer."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(source), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # a status that refreshes no index: reads only
        )

    try:
        # not "inside a work tree": site-packages under a checkout's ignored .venv/ is not that checkout's code
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0 or status.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def hardware(settings: TrainConfig | EvalConfig) -> dict:
    """The accelerator a run computed on (``trainer.accelerator``, ``auto`` resolved as Lightning and
    `dear.models.precision.resolve_device` do), its name, how many per machine and machines, and torch's threads."""
    import torch

    from dear.models.precision import resolve_device

    trainer = settings.trainer
    kind = resolve_device(trainer.accelerator).type  # cuda, mps or cpu
    if kind == "cuda":
        count = torch.cuda.device_count() if trainer.devices == "auto" else int(trainer.devices)
        name = torch.cuda.get_device_name(torch.cuda.current_device())
    else:
        count = 1 if trainer.devices == "auto" else int(trainer.devices)  # processes on one CPU / Apple GPU
        name = cpu_name() if kind == "cpu" else f"Apple MPS ({platform.machine()})"
    return {
        "accelerator": kind,
        "name": name,
        "count": count,
        "nodes": getattr(trainer, "num_nodes", 1),
        "torch_threads": torch.get_num_threads(),
    }


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def run_record(settings: TrainConfig | EvalConfig, run_dir: Path, *, wall_time_s: float, extra: dict) -> dict:
    """What every run writes beside its numbers: seed, names, versions, the code's commit, the hardware, the
    command, every setting, and the checkpoint a training run resumed from."""
    resumed_from = getattr(settings, "ckpt_path", None)
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
        "git": code_version(),
        "hardware": hardware(settings),
        "command": " ".join(sys.argv),
        "resumed_from": str(Path(resumed_from).expanduser().absolute()) if resumed_from else None,
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
