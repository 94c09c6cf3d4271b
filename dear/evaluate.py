"""``dear-eval``: generate on a benchmark with one model, grade, and write what was seen."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from dear.data.benchmarks import subset_note
from dear.errors import DearError
from dear.files import write_json_atomic
from dear.models.load import check_room, load_model
from dear.models.precision import compute_context, resolve_device, resolve_precision
from dear.preflight.settings import eval_config
from dear.training.benchmark import build_evaluator, eval_problems
from dear.training.records import run_record, sandbox_record

log = logging.getLogger(__name__)


def evaluate(cfg, run_dir: Path) -> dict:
    """Evaluate ``cfg.model`` on ``cfg.benchmark``; write problems.jsonl and summary.json; return the summary."""
    s = eval_config(cfg)  # every setting checked before anything is loaded
    torch.manual_seed(s.seed)
    if s.trainer.threads:
        torch.set_num_threads(s.trainer.threads)
    try:
        problems = eval_problems(s)  # before the model: a set that cannot be had fails at once
    except ValueError as e:  # a bad benchmark option
        raise DearError(str(e)) from None
    log.info("Loading %s", s.model.name)
    loaded = load_model(s.model, s.cache_dir, s.toy_task, trainable=False)
    check_room(loaded, problems, s.benchmark.max_new_tokens, s.model.context_length, "benchmark.max_new_tokens")
    device, precision = resolve_device(s.trainer.accelerator), resolve_precision(s.trainer.precision)
    loaded.model.to(device)  # in the preset's dtype; *-mixed precisions compute under autocast, as dear-train does
    evaluator = build_evaluator(s, loaded, problems, progress=True)
    log.info("Evaluating on %d problems of %s (%s, %s)", len(evaluator.problems), s.benchmark.name, device, precision)
    t0 = time.perf_counter()
    with compute_context(precision, device):
        result = evaluator.evaluate(loaded.model)
    wall = time.perf_counter() - t0
    with open(run_dir / "problems.jsonl", "w") as f:
        for record in result.records:
            f.write(json.dumps(record) + "\n")
    summary = run_record(
        s,
        run_dir,
        wall_time_s=wall,
        extra={
            "benchmark": s.benchmark.name,
            "subset": subset_note(s.benchmark.name),
            "n_problems": len(result.records),
            "metrics": result.summary,
            "weights": loaded.source_dir,
            "device": str(device),
            "precision": precision,
            "sandbox": sandbox_record(problems),
        },
    )
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
