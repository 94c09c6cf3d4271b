"""What every run writes next to its results: loggers, evaluators, versions, atomic JSON."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dear.data.toy import ToyTaskConfig
from dear.eval.runner import Evaluator

PACKAGES = ("dear", "torch", "transformers", "lightning", "hydra-core", "omegaconf", "wandb", "datasets")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` so that ``path`` is either absent or complete, never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=float)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_record(cfg: DictConfig, run_dir: Path, *, wall_time_s: float, extra: dict) -> dict:
    return {
        "status": "complete",
        "run_dir": str(run_dir),
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "teacher": cfg.teacher.name if "teacher" in cfg else None,
        "method": cfg.method.name if "method" in cfg else None,
        **extra,
        "wall_time_s": wall_time_s,
        "versions": versions(),
        "command": " ".join(sys.argv),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def build_evaluator(cfg: DictConfig, loaded, toy_task: ToyTaskConfig, *, vocab_size: int | None = None,
                    kl_prompts: int = 0, progress: bool = False) -> Evaluator:
    from dataclasses import asdict

    from dear.data.benchmarks import load_benchmark

    b = cfg.benchmark
    options = dict(b.get("options") or {})
    if b.name == "toy":
        options["task"] = asdict(toy_task)
    problems = load_benchmark(b.name, limit=b.get("limit"), seed=int(cfg.seed), **options)
    return Evaluator(
        name=b.name, problems=problems, tokenizer=loaded.tokenizer, chat_template=loaded.chat_template,
        max_new_tokens=int(b.max_new_tokens), batch_size=int(cfg.eval.batch_size),
        samples=int(b.get("samples", 1)), temperature=float(b.get("temperature", 0.0)),
        kl_prompts=kl_prompts, vocab_size=vocab_size, progress=progress)


def build_loggers(cfg: DictConfig, run_dir: Path):
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        offline = bool(cfg.logger.offline)
        os.environ.setdefault("WANDB_SILENT", "true")
        return WandbLogger(project=cfg.logger.project, entity=cfg.logger.get("entity"), save_dir=str(run_dir),
                           offline=offline, name=run_dir.name,
                           config=OmegaConf.to_container(cfg, resolve=True))
    from dear.errors import DearError

    raise DearError(f"logger={name} is not one of wandb, csv, none")
