"""The learning-rate schedule shared by distillation (dear/training/module.py) and toy-model building."""

from __future__ import annotations

import math
import typing

from dear.config.schema import Schedule

SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)


def lr_factor(warmup: int, total: int, schedule: str):
    """Linear warm-up, then constant or cosine decay to 0 at ``total`` (annealing settles the student)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / max(1, warmup))
        if schedule == "constant" or step < warmup:
            return ramp
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor
