"""Console entry points: ``dear-train``, ``dear-eval`` (Hydra apps) and ``dear-table``.

The config tree ships inside the package (``dear/conf``, linked as ``conf/`` at the repo
root), so the installed scripts find it from any working directory. Mistakes a user can make
end the program with one line on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dear.errors import DearError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "teacher", "method", "data", "benchmark", "trainer", "logger", "experiment", "toy_task")
OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[a-z_]+)=(?P<value>[^=]*)$")

log = logging.getLogger("dear")

if not OmegaConf.has_resolver("dear_run_id"):
    # A random suffix in run directory names, so two runs started in the same second never share one.
    OmegaConf.register_new_resolver("dear_run_id", lambda: uuid.uuid4().hex[:6], use_cache=True)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_group_overrides(prog: str, argv: list[str]) -> None:
    """Refuse an unknown preset before Hydra composes anything (its own message spans a page)."""
    for arg in argv:
        m = OVERRIDE.match(arg)
        if not m or m["group"] not in GROUPS or "(" in m["value"] or arg.startswith("~"):
            continue
        known = choices(m["group"])
        for value in filter(None, m["value"].split(",")):
            if value not in known and value != "null":
                fail(prog, f"unknown {m['group']} preset '{value}'; choose from: {', '.join(known)}")


def guarded(prog: str, fn, *args):
    """Run ``fn``; a user's mistake becomes one line and exit status 2."""
    try:
        return fn(*args)
    except DearError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(prog, str(e))


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from dear.train import train as run_train

    metrics = guarded("dear-train", run_train, cfg, run_dir())
    for name, b in metrics["benchmarks"].items():
        log.info("student %s on %s: accuracy %.3f -> %.3f (%+.1f points); held-out reverse KL %.4f -> %.4f",
                 cfg.model.name, name, b["accuracy_before"], b["accuracy_after"], 100 * b["gain"],
                 metrics["heldout_reverse_kl"]["before"] or float("nan"),
                 metrics["heldout_reverse_kl"]["after"] or float("nan"))
    log.info("run directory: %s (metrics.json, config, checkpoints, student/, wandb/)", metrics["run_dir"])


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    from dear.evaluate import evaluate

    summary = guarded("dear-eval", evaluate, cfg, run_dir())
    log.info("%s on %s: %s", cfg.model.name, cfg.benchmark.name,
             ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["metrics"].items()))
    log.info("run directory: %s", summary["run_dir"])


def train() -> None:
    check_group_overrides("dear-train", sys.argv[1:])
    _train_app()


def evaluate() -> None:
    check_group_overrides("dear-eval", sys.argv[1:])
    _eval_app()


def table() -> None:
    from dear.table import main

    main(sys.argv[1:])
