"""From a composed config to checked, typed settings, before anything is loaded or written.

`dear.schema` says what is allowed; this module applies it to what Hydra composed and adds the
checks that need the machine (a writable cache, and `dear.preflight`'s: the accelerator, the W&B
key, the code sandbox, the hub). Every mistake is one line (`DearError`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from dear import preflight
from dear.errors import DearError
from dear.schema import EvalConfig, TrainConfig, load_config


def train_config(cfg: Any, *, machine: bool = True) -> TrainConfig:
    """``dear-train``'s settings, checked: types, ranges, keys, paths, a writable cache and, unless
    ``machine=False`` (the settings only, e.g. for a run on another machine), what this machine must offer."""
    settings = load_config(cfg, TrainConfig)
    check_writable(settings.cache_dir, "cache_dir")
    if machine:
        preflight.check_accelerator(settings.trainer)
        preflight.check_wandb_key(settings.logger)
        preflight.check_hub_model(settings.model, "model")
        preflight.check_hub_model(settings.teacher, "teacher")
        preflight.check_sandbox(settings.benchmark.name)
    return settings


def eval_config(cfg: Any, *, machine: bool = True) -> EvalConfig:
    """``dear-eval``'s settings, checked like `train_config`."""
    settings = load_config(cfg, EvalConfig)
    check_writable(settings.cache_dir, "cache_dir")
    if machine:
        preflight.check_accelerator(settings.trainer)
        preflight.check_hub_model(settings.model, "model")
        preflight.check_sandbox(settings.benchmark.name)
    return settings


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
