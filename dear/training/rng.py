"""The random streams of a run: carried across checkpoints, and one a rank in a data-parallel run.

A resumed run is the same run only if every stream a training step draws from (torch's CPU and CUDA
generators, Python's, NumPy's, and the generator that ``method=random`` selects with) is where it was when
the checkpoint was written. `RandomStreams` saves them with each checkpoint and puts them back.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank ``rank``'s sampling stream in a data-parallel run, from the step it starts (or resumes) at."""
    return seed * 1_000_003 + 7_919 * (rank + 1) + step


def rng_state() -> dict:
    """Every random stream a training step draws from (torch's CPU and CUDA generators, Python's, NumPy's)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back the streams `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStreams(Callback):
    """Saves every random stream with each checkpoint and restores it as the next training step starts;
    in a data-parallel run, seeds each rank's own sampling stream as its first step starts."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.selection = torch.Generator().manual_seed(seed)  # what method=random selects with
        self.pending: dict | None = None  # the streams of a loaded checkpoint, until the next step starts
        self.rank_stream_pending = False  # set at the start of a data-parallel fit

    def state_dict(self) -> dict:
        return {"rng": rng_state(), "selection": self.selection.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        # Restored as the next training step starts, not here: Lightning draws from torch's generator
        # between loading a checkpoint and that step (the data loader's base seed).
        self.pending = state_dict["rng"]
        self.selection.set_state(state_dict["selection"])

    def on_train_start(self, trainer, pl_module) -> None:
        self.rank_stream_pending = trainer.world_size > 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.pending is not None:  # the first step after a checkpoint: draw what the run would have
            set_rng_state(self.pending)
            self.pending = None
        if self.rank_stream_pending:  # data parallel: each rank samples from its own stream
            torch.manual_seed(rank_seed(self.seed, trainer.global_rank, int(trainer.global_step)))
            self.rank_stream_pending = False
