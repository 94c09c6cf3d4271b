"""``dear-eval``: generate on a benchmark with one model, grade, and write what was seen."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from dear.data.toy import ToyTaskConfig
from dear.errors import DearError
from dear.models import load_model
from dear.runs import build_evaluator, run_record, write_json_atomic

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig, run_dir: Path) -> dict:
    if cfg.benchmark.get("limit") is not None and int(cfg.benchmark.limit) < 0:
        raise DearError(f"benchmark.limit must be >= 0, got {cfg.benchmark.limit}")
    if float(cfg.benchmark.get("temperature", 0.0)) < 0:
        raise DearError(f"benchmark.temperature must be >= 0, got {cfg.benchmark.temperature}")
    torch.manual_seed(int(cfg.seed))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    toy_task = ToyTaskConfig(**cfg.toy_task)
    log.info("Loading %s", cfg.model.name)
    loaded = load_model(cfg.model, cfg.cache_dir, toy_task, trainable=False)
    try:
        evaluator = build_evaluator(cfg, loaded, toy_task, progress=True)
    except ValueError as e:  # a bad benchmark option
        raise DearError(str(e)) from None
    log.info("Evaluating on %d problems of %s", len(evaluator.problems), cfg.benchmark.name)
    t0 = time.perf_counter()
    result = evaluator.evaluate(loaded.model)
    wall = time.perf_counter() - t0
    with open(run_dir / "problems.jsonl", "w") as f:
        for record in result.records:
            f.write(json.dumps(record) + "\n")
    summary = run_record(cfg, run_dir, wall_time_s=wall, extra={
        "benchmark": cfg.benchmark.name, "n_problems": len(result.records), "metrics": result.summary,
        "weights": loaded.source_dir})
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
