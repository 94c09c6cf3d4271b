"""Shared test set-up: offline always, tiny toy models built once per session."""

from __future__ import annotations

import os

# Offline by design: no test may reach a model or data hub (set before anything imports HF libs).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Two threads for the 2-core machine the suite is sized for; `make mutate` runs two pytest processes at once
# and asks for one each (two threads each on two cores spin against one another and run several times slower).
torch.set_num_threads(int(os.environ.get("DEAR_TEST_THREADS", "2")))

ROOT = Path(__file__).resolve().parents[1]

# Toy models small and briefly trained: the plumbing, not the quality, is under test here.
TINY_MODELS = [
    "model.toy.hidden_size=16",
    "model.toy.intermediate_size=32",
    "model.toy.train_steps=10",
    "teacher.toy.hidden_size=24",
    "teacher.toy.intermediate_size=48",
    "teacher.toy.train_steps=10",
]
TINY_RUN = TINY_MODELS + [
    "steps=2",
    "batch_size=3",
    "rollout.n=2",
    "rollout.max_new_tokens=24",
    "eval.every=1",
    "benchmark.limit=8",
    "benchmark.max_new_tokens=24",
    "eval.kl_prompts=4",
    "eval.reuse_before=false",  # each test generates its own answers (some script them); test_smollm2_table.py reuses
    "logger=csv",
]


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    """One cache of tiny toy models for the whole session (each build takes a second or two)."""
    return tmp_path_factory.mktemp("dear-cache")


def compose(overrides: list[str], config_name: str = "train"):
    """The config ``dear-train`` would run with these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import dear.cli  # noqa: F401  (registers the run-id resolver)

    with initialize_config_module(config_module="dear.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


@functools.cache
def _method_yaml(name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose([f"method={name}"]).method, resolve=True)


def method_config(name: str, **overrides):
    """The `MethodConfig` of conf/method/<name>.yaml with ``overrides`` (the path dear-train takes)."""
    from dear.config.schema import MethodConfig, load

    return load(MethodConfig, {**_method_yaml(name), **overrides}, "method.")
