"""Presets read as a run sees them: the files of a config group (dear/conf/<group>/), and the benchmarks a run
evaluates at its ends (``benchmark`` and those ``eval.benchmarks`` names), each resolved against the run's student.

Hydra composes one preset per group; ``eval.benchmarks`` lists more benchmark presets by name, so a run trains once
and is evaluated on many. Each is its file in conf/benchmark/, with ``${model.…}`` read from the run's student preset
(``max_new_tokens: ${model.max_new_tokens}``), checked by the same `BenchmarkConfig` schema as ``benchmark``.
"""

from __future__ import annotations

import dataclasses
import re

from dear.config.schema import CONF_DIR, BenchmarkConfig, ConfigError, TrainConfig, check_fits, load


def choices(group: str) -> list[str]:
    """The presets of a config group: its files' names."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def benchmark_preset(name: str, s: TrainConfig) -> BenchmarkConfig:
    """Benchmark preset ``name`` (conf/benchmark/<name>.yaml) as run ``s`` evaluates it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = CONF_DIR / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"eval.benchmarks names '{name}', which is no benchmark preset; choose from: "
            f"{', '.join(choices('benchmark'))}"
        )
    try:
        tree = OmegaConf.create({"model": dataclasses.asdict(s.model), "benchmark": OmegaConf.load(path)})
        data = OmegaConf.to_container(tree.benchmark, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"eval.benchmarks: {path.name} cannot be read for this run ({e.msg})") from None
    benchmark = load(BenchmarkConfig, data, f"eval.benchmarks[{name}].")
    check_fits(f"{name}'s max_new_tokens", benchmark.max_new_tokens, "model", s.model)  # its answers: the student's
    return benchmark


def benchmarks(s: TrainConfig) -> list[BenchmarkConfig]:
    """Every benchmark run ``s`` evaluates before and after training: ``benchmark`` (the one its curve follows
    during training) first, then each of ``eval.benchmarks`` not already listed, in their order."""
    out = [s.benchmark]
    for name in s.eval.benchmarks:
        if name not in (b.name for b in out):
            out.append(benchmark_preset(name, s))
    return out


def run_name(settings: list[tuple[str, str]], seed: int) -> str:
    """A run's W&B name from the settings that tell it apart (dear-train's sweep jobs, dear-table's grid rows):
    ``dear-<each setting>-s<seed>``, a preset by its name (``qwen-1.5b``), any other value as ``<last key>=<value>``
    (``decision_ratio=0.4``)."""
    parts = [value if (CONF_DIR / key).is_dir() else f"{key.rsplit('.', 1)[-1]}={value}" for key, value in settings]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(["dear", *parts, f"s{seed}"]))
