"""Checks on a composed config, before anything is loaded or written: one line per mistake."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dear import objective
from dear.errors import DearError

NOT_KNOBS = ("name", "divergence", "hidden_layer")


def method_knobs(method: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(method, resolve=True).items() if k not in NOT_KNOBS}


def _number(cfg: DictConfig, key: str, *, low: float, high: float = float("inf"), integer: bool = False,
            low_open: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value > low if low_open else value >= low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        kind = "an integer" if integer else "a number"
        raise DearError(f"{key} must be {kind} {bound}" + (f" and <= {high}" if high != float("inf") else "")
                        + f", got {value!r}")


def validate_train(cfg: DictConfig) -> None:
    _number(cfg, "steps", low=0, integer=True)
    _number(cfg, "batch_size", low=1, integer=True)
    _number(cfg, "rollout.n", low=1, integer=True)
    _number(cfg, "rollout.temperature", low=0, low_open=True)
    _number(cfg, "rollout.max_new_tokens", low=1, integer=True)
    _number(cfg, "optim.lr", low=0, low_open=True)
    _number(cfg, "optim.warmup_steps", low=0, integer=True)
    _number(cfg, "loss.temperature", low=0, low_open=True)
    _number(cfg, "loss.beta", low=0, high=1)
    _number(cfg, "eval.every", low=0, integer=True)
    _number(cfg, "eval.kl_prompts", low=0, integer=True)
    _number(cfg, "seed", low=0, integer=True)
    for key, allowed in (("optim.schedule", ("cosine", "constant")), ("loss.kind", objective.LOSS_KINDS),
                         ("loss.normalize", objective.NORMALIZATIONS), ("method.divergence", objective.DIVERGENCES)):
        if OmegaConf.select(cfg, key) not in allowed:
            raise DearError(f"{key} must be one of {', '.join(allowed)}, got {OmegaConf.select(cfg, key)!r}")
    try:
        objective.selection_config(cfg.method.name, **method_knobs(cfg.method))
    except ValueError as e:
        raise DearError(f"method={cfg.method.name}: {e}") from None
    check_writable(cfg.cache_dir, "cache_dir")


def check_writable(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there."""
    p = Path(str(path)).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".probe-"):
            pass
    except OSError as e:
        raise DearError(f"{key}={p} is not writable ({e.strerror or e}); set {key}=/a/writable/dir") from None
    return p
