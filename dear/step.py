"""One step of on-policy distillation, from a batch of rollouts to ``(loss, stats)``.

Plain functions, no Lightning: the LightningModule (``dear/module.py``), the benchmark
(``bench/bench_step.py``) and the evaluator's held-out KL (``dear/eval/runner.py``) all call
them, so there is one forward pass and one step to read and to test.

    rollout ──forward_pair──> student logits (grad), teacher logits, student hidden states
            ──token_signals──> H_t, D_t, true KL, argmaxes          (dear/objective.py)
            ──select_tokens──> per-token weights w_t                  (method)
            ──distill_loss───> L = Σ w_t ℓ_t / normaliser            (loss)

Alignment: the logits at column ``t`` predict token ``input_ids[:, t+1]``, so every tensor here is
``[B, L-1, ...]`` and the response mask is ``rollout.target_mask``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dear import objective
from dear.bridge import align_to_student
from dear.rollout import Rollout
from dear.schema import LossConfig, MethodConfig


@dataclass
class Forward:
    student_logits: Tensor  # [B, L-1, Vs]: column t predicts input_ids[:, t+1]; carries grad if asked
    teacher_logits: Tensor  # [B, L-1, Vt], no grad
    hidden: Tensor | None  # [B, L-1, H] detached student hidden states at the asked layer, or None


def _inputs(rollout: Rollout) -> dict[str, Tensor]:
    return dict(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids)


def forward_pair(
    student,
    teacher,
    rollout: Rollout,
    *,
    hidden_layer: int | None = None,
    grad: bool = True,
    teacher_rollout: Rollout | None = None,
) -> Forward:
    """Run student and teacher over the same response tokens (same attention mask and position ids).

    ``hidden_layer``: index into the student's hidden states (-1: the last layer's output, which the
    LM head reads); None skips them. ``grad=False`` runs the student without autograd too.
    ``teacher_rollout``: the same responses after the teacher's own prompt (`dear.bridge.teacher_view`);
    its logits are moved back to the student's columns.
    """
    with contextlib.nullcontext() if grad else torch.no_grad():
        out = student(**_inputs(rollout), output_hidden_states=hidden_layer is not None)
    with torch.no_grad():
        t_logits = teacher(**_inputs(teacher_rollout or rollout)).logits[:, :-1]
    if teacher_rollout is not None:
        t_logits = align_to_student(t_logits, rollout, teacher_rollout)
    hidden = out.hidden_states[hidden_layer][:, :-1].detach() if hidden_layer is not None else None
    return Forward(out.logits[:, :-1], t_logits, hidden)


def step_signals(
    fwd: Forward, rollout: Rollout, method: MethodConfig, loss: LossConfig, vocab_size: int | None
) -> objective.Signals:
    """The per-token signals of one batch (no grad): entropy, the method's D_t, the true KL, argmaxes."""
    return objective.token_signals(
        fwd.student_logits.detach(),
        fwd.teacher_logits,
        rollout.target_mask,
        sampled_ids=rollout.input_ids[:, 1:],
        divergence=method.divergence,
        temperature=loss.temperature,
        beta=loss.beta,
        vocab_size=vocab_size,
    )


def select_step(
    student,
    teacher,
    rollout: Rollout,
    method: MethodConfig,
    loss: LossConfig,
    *,
    vocab_size: int | None,
    generator: torch.Generator | None = None,
    teacher_rollout: Rollout | None = None,
    grad: bool = True,
) -> tuple[Forward, objective.Signals, objective.Selection]:
    """The step up to the loss: forward both models, compute the token signals, run the method's selection.

    ``grad=False`` keeps the student's forward out of autograd (for pictures of what a method selects).
    """
    fwd = forward_pair(
        student,
        teacher,
        rollout,
        hidden_layer=method.hidden_layer if method.selector == "dear" else None,
        grad=grad,
        teacher_rollout=teacher_rollout,
    )
    signals = step_signals(fwd, rollout, method, loss, vocab_size)
    selection = objective.select_tokens(
        method,
        entropy=signals.entropy,
        divergence=signals.divergence,
        hidden=fwd.hidden,
        mask=rollout.target_mask,
        generator=generator,
    )
    return fwd, signals, selection


def distill_step(
    student,
    teacher,
    rollout: Rollout,
    method: MethodConfig,
    loss: LossConfig,
    *,
    vocab_size: int | None,
    generator: torch.Generator | None = None,
    teacher_rollout: Rollout | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Forward both models, select the tokens that count, and return the weighted loss and step stats.

    The loss carries the student's graph (call ``backward`` on it); stats are floats named as they
    are logged (``train/...``): the selection diagnostics of `objective.selection_stats`, the loss and
    the mean response length.
    """
    fwd, signals, selection = select_step(
        student,
        teacher,
        rollout,
        method,
        loss,
        vocab_size=vocab_size,
        generator=generator,
        teacher_rollout=teacher_rollout,
    )
    mask, targets = rollout.target_mask, rollout.input_ids[:, 1:]
    value, loss_stats = objective.distill_loss(
        fwd.student_logits,
        fwd.teacher_logits,
        selection.weights,
        kind=loss.kind,
        sampled_ids=targets,
        mask=mask,
        normalize=loss.normalize,
        temperature=loss.temperature,
        beta=loss.beta,
        vocab_size=vocab_size,
    )
    stats = {
        f"train/{k}": v for k, v in objective.selection_stats(selection, signals, mask).items() if not math.isnan(v)
    }
    stats["train/loss"] = float(loss_stats["loss"])
    stats["train/response_tokens"] = float(mask.sum()) / mask.shape[0]
    return value, stats


def rollout_reverse_kl(
    student,
    teacher,
    rollout: Rollout,
    vocab_size: int | None,
    temperature: float = 1.0,
    teacher_rollout: Rollout | None = None,
) -> tuple[float, int]:
    """``(Σ KL(p‖q), number of response tokens)`` over a batch of rollouts: the held-out KL's terms."""
    with torch.no_grad():  # a block, not a decorator, so mutation testing reaches the body
        fwd = forward_pair(student, teacher, rollout, grad=False, teacher_rollout=teacher_rollout)
        signals = objective.token_signals(
            fwd.student_logits, fwd.teacher_logits, rollout.target_mask, temperature=temperature, vocab_size=vocab_size
        )
    return float(signals.reverse_kl.sum()), int(rollout.target_mask.sum())
