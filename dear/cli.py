"""Console entry points: ``dear-train``, ``dear-eval`` (Hydra apps) and ``dear-table``.

The config tree ships inside the package (``dear/conf``, linked as ``conf/`` at the repo root), so the installed
scripts find it from any working directory. Before a Hydra app starts, `dear.preflight` checks every run the command
line asks for; ``--dry-run`` lists them and starts none. ``ckpt_path=<run>/checkpoints/last.ckpt`` goes on in
``<run>``. Mistakes a user can make end the program with one line on stderr and exit status 2;
``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dear.errors import DearError
from dear.preflight.command import (
    check_group_overrides,
    dry_run,
    fail,
    is_sweep,
    one_process_per_job,
    preflight,
    resume_in_place,
    runs_here,
    take_flag,
    with_setup,
)
from dear.training.records import code_version

log = logging.getLogger("dear")

if not OmegaConf.has_resolver("dear_run_id"):
    # A random suffix in run directory names, so two runs started in the same second never share one.
    OmegaConf.register_new_resolver("dear_run_id", lambda: uuid.uuid4().hex[:6], use_cache=True)


def guarded(prog: str, fn, *args):
    """Run ``fn``; a user's mistake becomes one line and exit status 2."""
    try:
        return fn(*args)
    except DearError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(prog, str(e))


def _number(x: float | None) -> float:
    """A summary value for printing: NaN only when it is missing (0.0 is a value)."""
    return float("nan") if x is None else float(x)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from dear.train import train as run_train

    metrics = guarded("dear-train", run_train, cfg, run_dir())
    if metrics is None:  # a data-parallel rank other than 0: rank 0 reports
        return
    kl = metrics["heldout_reverse_kl"]
    for i, (name, b) in enumerate(metrics["benchmarks"].items()):  # the curve's benchmark first: its held-out KL
        log.info(
            "student %s on %s: accuracy %.3f -> %.3f (%+.1f points)%s",
            cfg.model.name,
            name,
            b["accuracy_before"],
            b["accuracy_after"],
            100 * b["gain"],
            f"; held-out reverse KL {_number(kl['before']):.4f} -> {_number(kl['after']):.4f}" if i == 0 else "",
        )
    log.info("run directory: %s (metrics.json, responses/, checkpoints/, student/, .hydra/)", metrics["run_dir"])
    if metrics.get("selection_pages"):
        log.info("what %s selects (start, end): %s", cfg.method.name, " ".join(metrics["selection_pages"]))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    from dear.evaluate import evaluate

    summary = guarded("dear-eval", evaluate, cfg, run_dir())
    log.info(
        "%s on %s: %s",
        cfg.model.name,
        cfg.benchmark.name,
        ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["metrics"].items()),
    )
    log.info("run directory: %s", summary["run_dir"])


def train() -> None:
    from dear.preflight.settings import train_config

    argv, dry = take_flag(sys.argv[1:], "--dry-run")
    check_group_overrides("dear-train", argv)
    argv, setup_note = with_setup("dear-train", argv)
    argv, resume_note = resume_in_place("dear-train", argv)
    sweep, here = is_sweep(argv), runs_here(argv)

    def check(cfg):
        return one_process_per_job(train_config(cfg, machine=here), sweep and here)  # SLURM starts each rank itself

    (dry_run if dry else preflight)("dear-train", "train", argv, check)
    for note in filter(None, (setup_note, resume_note)):
        print(note, file=sys.stderr)
    if dry:
        return
    code_version()  # the commit of the code that starts, whatever the tree holds when metrics.json is written
    sys.argv[1:] = argv  # Hydra's app reads sys.argv
    _train_app()


def evaluate() -> None:
    from dear.preflight.settings import eval_config

    argv, dry = take_flag(sys.argv[1:], "--dry-run")
    check_group_overrides("dear-eval", argv)
    here = runs_here(argv)

    def check(cfg):
        return eval_config(cfg, machine=here)

    (dry_run if dry else preflight)("dear-eval", "eval", argv, check)
    if dry:
        return
    code_version()
    sys.argv[1:] = argv
    _eval_app()


def table() -> None:
    from dear.tables.collate import main

    main(sys.argv[1:])
