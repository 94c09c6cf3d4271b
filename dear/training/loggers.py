"""Where a training run's step numbers go besides metrics.json: nowhere, a CSV file, or W&B.

A W&B run is one job: named after its method, its seed and whatever else its sweep varies (``dear-opd-s1``,
``dear-dear-lam=0.5-s0``), grouped by ``logger.group`` (dear-table sets the grid's name) or else by its multirun
folder, tagged with its pair, method and seed, and finished when its fit ends, however it ends: Lightning leaves
the run open, and the next job of a sweep run in the same process would log into it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from dear.config.presets import run_name
from dear.config.schema import TrainConfig
from dear.training.records import config_record


def build_loggers(settings: TrainConfig, run_dir: Path):
    """The Lightning logger ``logger.name`` asks for (False for none)."""
    lg = settings.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        # A run resumed in its own folder logs to csv/resume-<k>/: Lightning's CSV logger deletes the metrics.csv
        # it finds, the steps before the stop
        version, k = "", 0
        while (run_dir / "csv" / version / "metrics.csv").exists():
            k, version = k + 1, f"resume-{k + 1}"
        return CSVLogger(save_dir=str(run_dir), name="csv", version=version)
    os.environ.setdefault("WANDB_SILENT", "true")  # logger=wandb
    name, sweep = job_identity(settings)
    return OneRunWandbLogger(
        project=lg.project,
        entity=lg.entity,
        save_dir=str(run_dir),
        offline=lg.offline,
        name=name,
        config=config_record(settings),
        group=lg.group or sweep,
        tags=run_tags(settings),
    )


class OneRunWandbLogger(WandbLogger):
    """Lightning's W&B logger, with one W&B run per fit: the run is finished when fit ends (exit code 1 when fit
    failed or was interrupted). Nothing logs to W&B after fit."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # Lightning passes anonymous=None, and wandb warns that the setting has no effect
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        self._finished = False

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        # "finished" is Lightning's SLURM requeue handler, which goes on to save a checkpoint: not an end
        if status in ("success", "failed") and self._experiment is not None and not self._finished:
            self._finished = True
            self._experiment.finish(exit_code=0 if status == "success" else 1)


def run_tags(settings: TrainConfig) -> list[str]:
    """The run's pair, method and seed, as W&B tags (64 characters at most each)."""
    tags = [
        f"pair={settings.model.name}<-{settings.teacher.name}",
        f"method={settings.method.name}",
        f"seed={settings.seed}",
    ]
    return [t[:64] for t in tags]


def job_identity(settings: TrainConfig) -> tuple[str, str | None]:
    """The run's W&B name and, in a multirun, its sweep's folder name (the default group).

    The name is ``dear-<method>[-<each other swept override>]-s<seed>``: a single run is named after its method and
    seed; a multirun job also after the values of the other overrides its command sweeps (read back from the
    sweep's ``multirun.yaml``), in the command's order, a config group by its choice (``qwen-1.5b``), a value by
    its last key (``lam=0.5``).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    own = [("method", settings.method.name)]
    try:
        hc = HydraConfig.get()
    except ValueError:  # not under Hydra (train() called from Python)
        return settings.logger.run_name or run_name(own, settings.seed), None
    if hc.mode != RunMode.MULTIRUN:
        return settings.logger.run_name or run_name(own, settings.seed), None
    sweep_dir = Path(hc.runtime.cwd) / hc.sweep.dir
    if settings.logger.run_name:  # given: a dear-table grid names each run after its row
        return settings.logger.run_name, sweep_dir.name
    values = _overrides(list(hc.overrides.task))
    swept = [key for key in _swept_keys(sweep_dir / "multirun.yaml") if key not in ("method", "seed")]
    return run_name(own + [(k, values[k]) for k in swept if k in values], settings.seed), sweep_dir.name


def _overrides(overrides: list[str]) -> dict[str, str]:
    """``key -> value`` of Hydra override strings (``+``/``++`` prefixes and quotes dropped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: str(o.value()) for o in parsed if not o.is_delete()}


def _swept_keys(multirun_yaml: Path) -> list[str]:
    """The keys a multirun's command sweeps (``method=opd,dear``, ``seed=range(3)``), from its multirun.yaml
    (Hydra's sweeper writes it in the sweep folder before the first job; empty when it is not there)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        task = OmegaConf.select(OmegaConf.load(multirun_yaml), "hydra.overrides.task")
    except OSError:
        return []
    command = OmegaConf.to_container(task) if task is not None else []  # unresolved, as the command gave them
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(command) if o.is_sweep_override()]
