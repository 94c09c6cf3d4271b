"""The learning-rate schedule shared by distillation (dear/training/module.py) and toy-model building, and the
distillation run's optimizer (`optimizer`: the training module, the benchmarks and the memory check use it)."""

from __future__ import annotations

import math
import typing

import torch

from dear.config.schema import OptimConfig, Schedule

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


FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")  # where torch's AdamW has a fused kernel


def fused_for(precision: str) -> bool:
    """Whether a run at Lightning ``precision`` takes the fused AdamW: not under mixed precision, whose plugin
    refuses to clip gradients for an optimizer that unscales them itself (a fused one); torch's default there on
    a GPU is the foreach AdamW, one kernel per step of the update over all parameters."""
    return not str(precision).endswith("-mixed")


def optimizer(params, optim: OptimConfig, steps: int, *, fused: bool = True):
    """The run's ``(AdamW, its LambdaLR schedule)``. With ``fused`` (`fused_for` the run's precision) AdamW is
    fused (one kernel over all parameters, nothing allocated beyond its moments) where torch has the kernel for
    the parameters' device: on the CPU it updates SmolLM2-135M 8x faster than torch's default there, the loop
    over parameters (0.04 s against 0.31 s a step, 2 threads, `make bench`'s machine)."""
    params = list(params)
    fused = fused and all(p.device.type in FUSED_DEVICES and p.dtype.is_floating_point for p in params)
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused or None)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(optim.warmup_steps, steps, optim.schedule))
