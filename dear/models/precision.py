"""Where a run computes and in which number formats: one rule for dear-train and dear-eval.

- ``trainer.accelerator`` names the device: ``auto`` is the GPU when torch sees one, else the CPU.
- ``trainer.precision`` names the compute format as Lightning does: ``auto`` is ``bf16-mixed`` on a GPU and
  ``32-true`` on the CPU (bfloat16 matrix work is slow on most CPUs).
- The weights a run *trains* are always held in float32, whatever the preset's ``dtype`` says: under a
  ``*-mixed`` precision the forward and backward compute in bf16/fp16 (autocast) while AdamW updates the
  float32 weights. A bfloat16 weight cannot take a small step: its spacing at ``|w| = 0.02`` is about
  ``7.8e-5``, so an update of ``1e-6`` rounds back to the same number.
- Frozen models (the teacher, a model under ``dear-eval``) stay in their preset's dtype.
"""

from __future__ import annotations

import contextlib

import torch

# Lightning's precision names and the autocast format each computes in (None: no autocast).
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def resolve_precision(setting: str) -> str:
    """``auto``: bf16 mixed precision on a GPU, full fp32 on the CPU; any other setting as given."""
    if setting != "auto":
        return setting
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def resolve_device(accelerator: str) -> torch.device:
    """The one device a single-process run computes on: ``cuda`` for gpu/cuda/auto-with-a-GPU, else ``cpu``."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def compute_context(precision: str, device: torch.device):
    """The autocast context a ``*-mixed`` precision computes in on ``device`` (a no-op context otherwise)."""
    dtype = AUTOCAST.get(resolve_precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
