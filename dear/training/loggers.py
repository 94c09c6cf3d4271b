"""Where a training run's step numbers go besides metrics.json: nowhere, a CSV file, or W&B."""

from __future__ import annotations

import os
from pathlib import Path

from dear.config.schema import TrainConfig
from dear.training.records import config_record


def build_loggers(settings: TrainConfig, run_dir: Path):
    """The Lightning logger ``logger.name`` asks for (False for none)."""
    lg = settings.logger
    if lg.name == "none":
        return False
    if lg.name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    from lightning.pytorch.loggers import WandbLogger  # logger=wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    # One W&B run per job, grouped by sweep or table, tagged with its method and student-teacher pair
    tags = [f"method={settings.method.name}", f"pair={settings.model.name}<-{settings.teacher.name}"]
    return WandbLogger(
        project=lg.project,
        entity=lg.entity,
        save_dir=str(run_dir),
        offline=lg.offline,
        name=run_dir.name,
        config=config_record(settings),
        group=lg.group,
        tags=tags,
    )
