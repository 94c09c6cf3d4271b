"""One step of on-policy distillation, from a batch of rollouts to ``(loss, stats)``.

Plain functions, no Lightning: the LightningModule (``dear/training/module.py``), the benchmark
(``bench/bench_step.py``) and the evaluator's held-out KL (``dear/eval/runner.py``) all call
them, so there is one forward pass and one step to read and to test.

    rollout ──forward_pair──> student logits (grad), teacher logits, student hidden states
            ──token_signals──> H_t, D_t, true KL, argmaxes          (dear/objective/)
            ──select_tokens──> per-token weights w_t                  (method)
            ──distill_loss───> L = Σ w_t ℓ_t / normaliser            (loss)
            ──backward───────> the student's .grad                   (per micro-batch: step.micro_batch_size)

Alignment: the logits at column ``t`` predict token ``input_ids[:, t+1]``, so every tensor here is
``[B, L-1, ...]`` and the response mask is ``rollout.target_mask``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dear import objective
from dear.config import methods
from dear.config.schema import LossConfig, MethodConfig, StepConfig
from dear.distill.rollout import Rollout
from dear.distill.teacher_view import align_to_student
from dear.objective.chunked import effective_kind


@dataclass
class Forward:
    # [B, L-1-start, Vs] (or the same as `objective.HeadLogits`): column c predicts input_ids[:, start+c+1];
    # grad if asked
    student_logits: Tensor | objective.HeadLogits
    teacher_logits: Tensor | objective.HeadLogits  # [B, L-1-start, Vt], no grad
    hidden: Tensor | None  # [B, L-1-start, H] detached student hidden states at the asked layer, or None
    start: int = 0  # the first column of [B, L-1] these hold (`response_start`: the prompt's columns left out)


def response_start(rollout: Rollout) -> int:
    """The first column of ``[B, L-1]`` that can predict a response token (``P-1``): the columns before it predict
    prompt tokens, which are never targets, so a step's logits, signals and loss skip them."""
    return rollout.prompt_width - 1


def targets(rollout: Rollout, start: int = 0) -> tuple[Tensor, Tensor]:
    """``(target mask, sampled ids)`` of the columns ``start …`` of ``[B, L-1]``, aligned with a `Forward`'s tensors."""
    return rollout.target_mask[:, start:], rollout.input_ids[:, start + 1 :]


def widen(x: Tensor, start: int) -> Tensor:
    """``[B, T-start, ...]`` back to ``[B, T, ...]`` with zeros in the first ``start`` columns (never targets)."""
    if start == 0:
        return x
    return torch.cat([x.new_zeros(x.shape[0], start, *x.shape[2:]), x], dim=1)


def _inputs(rollout: Rollout) -> dict:
    """The forward's inputs; no KV cache (a scoring pass would keep every layer's keys and values alive)."""
    return dict(
        input_ids=rollout.input_ids,
        attention_mask=rollout.attention_mask,
        position_ids=rollout.position_ids,
        use_cache=False,
    )


def lm_head(model) -> Tensor:
    """The LM head's weight ``[V, H]`` of a model whose logits are ``final hidden state @ Wᵀ`` (no bias)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError(
            f"step.logits=chunked needs a bias-free linear LM head; {type(model).__name__} has "
            f"{type(head).__name__}; use step.logits=full"
        )
    return head.weight


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (Hugging Face causal LMs do: the head then runs on the
    last positions only)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _run(model, rollout: Rollout, logits: str, hidden_states: bool, start: int = 0):
    """One forward: ``(logits [B, L-1-start, V] or HeadLogits, hidden states tuple or None)``, columns ``start …``
    of ``[B, L-1]`` (the LM head runs on those positions only)."""
    width = rollout.input_ids.shape[1]
    if logits == "full":
        keep = {"logits_to_keep": width - start} if start > 0 and _keeps_logits(model) else {}
        out = model(**_inputs(rollout), output_hidden_states=hidden_states, **keep)
        return out.logits[:, start - width : -1], out.hidden_states  # the last width-start columns, then drop one
    out = model.get_decoder()(**_inputs(rollout), output_hidden_states=hidden_states)
    return objective.HeadLogits(out.last_hidden_state[:, start:-1], lm_head(model)), out.hidden_states


def forward_pair(
    student,
    teacher,
    rollout: Rollout,
    *,
    hidden_layer: int | None = None,
    grad: bool = True,
    teacher_rollout: Rollout | None = None,
    logits: str = "full",
    start: int = 0,
) -> Forward:
    """Run student and teacher over the same response tokens (same attention mask and position ids).

    ``hidden_layer``: index into the student's hidden states (-1: the last layer's output, which the
    LM head reads); None skips them. ``grad=False`` runs the student without autograd too.
    ``teacher_rollout``: the same responses after the teacher's own prompt (`dear.distill.teacher_view.teacher_view`);
    its logits are moved back to the student's columns. ``logits="chunked"``: both models stop at their
    final hidden states and return `objective.HeadLogits`, so no ``[B, L, V]`` tensor is made; the
    teacher runs under ``inference_mode``. ``start``: every tensor returned holds the columns ``start …`` of
    ``[B, L-1]`` only (`response_start`: the LM heads run on the response's positions alone).
    """
    if not 0 <= start <= response_start(rollout):
        raise ValueError(f"start must lie in [0, {response_start(rollout)}] (the prompt's columns), got {start}")
    # the teacher's own prompt has its own width: it keeps as many of its prompt's columns, as far as it has them
    t_start = (
        start if teacher_rollout is None else max(0, response_start(teacher_rollout) - response_start(rollout) + start)
    )
    with contextlib.nullcontext() if grad else torch.no_grad():
        s_logits, s_hidden = _run(student, rollout, logits, hidden_layer is not None, start)
    with torch.no_grad() if logits == "full" else torch.inference_mode():
        t_logits, _ = _run(teacher, teacher_rollout or rollout, logits, False, t_start)
    if teacher_rollout is not None:
        if logits == "full":
            t_logits = align_to_student(t_logits, rollout, teacher_rollout, start, t_start)
        else:
            t_logits = objective.HeadLogits(
                align_to_student(t_logits.hidden, rollout, teacher_rollout, start, t_start), t_logits.weight
            )
    hidden = s_hidden[hidden_layer][:, start:-1].detach() if hidden_layer is not None else None
    return Forward(s_logits, t_logits, hidden, start)


def step_signals(
    fwd: Forward, rollout: Rollout, method: MethodConfig, loss: LossConfig, vocab_size: int | None
) -> objective.Signals:
    """The per-token signals of one batch (no grad): entropy, the method's D_t, the true KL, argmaxes, ``[B, L-1]``
    whatever columns ``fwd`` holds (0 before ``fwd.start``)."""
    mask, sampled = targets(rollout, fwd.start)
    signals = objective.token_signals(
        fwd.student_logits.detach(),
        fwd.teacher_logits,
        mask,
        sampled_ids=sampled,
        divergence=method.divergence,
        temperature=loss.temperature,
        beta=loss.beta,
        vocab_size=vocab_size,
    )
    return _widened(signals, fwd.start)


def _widened(item, start: int):
    """`Signals` of ``[B, T-start]`` tensors as ``[B, T]``, zeros before ``start``."""
    return type(item)(
        **{
            f.name: None if getattr(item, f.name) is None else widen(getattr(item, f.name), start)
            for f in dataclasses.fields(item)
        }
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
    logits: str = "full",
) -> tuple[Forward, objective.Signals, objective.Selection]:
    """The step up to the loss: forward both models, compute the token signals, run the method's selection.

    ``grad=False`` keeps the student's forward out of autograd (for pictures of what a method selects). The
    forward holds the response's columns only (`response_start`); signals and selection are ``[B, L-1]``, the
    selection made on the whole width as if the prompt's columns had been computed (they are never targets).
    """
    fwd = forward_pair(
        student,
        teacher,
        rollout,
        hidden_layer=methods.get(method.selector).hidden_layer(method.knobs),
        grad=grad,
        teacher_rollout=teacher_rollout,
        logits=logits,
        start=response_start(rollout),
    )
    signals = step_signals(fwd, rollout, method, loss, vocab_size)
    selection = objective.select_tokens(
        method.selector,
        method.knobs,
        entropy=signals.entropy,
        divergence=signals.divergence,
        hidden=None if fwd.hidden is None else widen(fwd.hidden, fwd.start),
        mask=rollout.target_mask,
        generator=generator,
    )
    return fwd, signals, selection


def _cat(items: list):
    """Dataclasses of ``[b, T]`` tensors (Signals, Selection) joined along the batch."""
    fields = dataclasses.fields(items[0])
    return type(items[0])(
        **{
            f.name: None if getattr(items[0], f.name) is None else torch.cat([getattr(x, f.name) for x in items])
            for f in fields
        }
    )


def micro_batches(
    rollout: Rollout, teacher_rollout: Rollout | None, step: StepConfig | None
) -> list[tuple[Rollout, Rollout | None]]:
    """The ``(rollouts, the teacher's view of them)`` of each micro-batch of ``step.micro_batch_size`` rows (one
    micro-batch holding everything when it is unset): how the training step and the scoring split a batch."""
    size = rollout.input_ids.shape[0]
    per = min((step.micro_batch_size if step else None) or size, size)
    return [
        (rollout.rows(sl), teacher_rollout.rows(sl) if teacher_rollout is not None else None)
        for sl in (slice(start, start + per) for start in range(0, size, per))
    ]


def _known_rows(sig: objective.Signals, loss: LossConfig, start: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """What the token signals already computed of a reverse-KL loss's rows (the KL and both log-normalisers, same
    temperature), columns ``start …``, so the loss's forward need not project them again (the chunked engine
    decides whether it can take them); None for another loss."""
    if effective_kind(loss.kind, loss.beta) != "reverse_kl" or sig.student_lse is None:
        return None
    return sig.reverse_kl[:, start:], sig.student_lse[:, start:], sig.teacher_lse[:, start:]


def _backward(tensor: Tensor) -> None:
    tensor.backward()


@dataclass(frozen=True)
class DataParallel:
    """The ranks of a data-parallel run, as the step needs them: how many, and a sum over all of them."""

    size: int
    sum: Callable[[Tensor], Tensor]


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
    step: StepConfig | None = None,
    backward: Callable[[Tensor], None] = _backward,
    ranks: DataParallel | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """One step's forward and backward: select the tokens that count, and accumulate the weighted loss's
    gradient in the student's ``.grad``. Returns the loss (detached) and the step stats.

    ``step.micro_batch_size`` rollouts at a time go through forward, signals, selection and ``backward``
    (the module passes Lightning's ``manual_backward``), so only one micro-batch's graph is alive.
    Selection is per sequence (``method.scope=batch`` is refused with micro-batches), so it does not
    depend on the split. The loss's denominator is the whole step's (``Σ w``, ``Σ mask`` or the number of
    sequences): each micro-batch's numerator is backpropagated and the summed gradient is divided once
    at the end, so the gradient is the one-shot step's. With one micro-batch, the loss itself is
    backpropagated. Stats are floats named as they are logged (``train/...``): the selection diagnostics
    of `objective.selection_stats` over the whole step, the loss and the mean response length.

    ``ranks``: under data parallelism (gradients averaged over ranks after each backward) the
    denominator is summed over the ranks too, so every rank applies the same factor and the gradient
    is the one a single process would take over all ranks' rollouts. The returned loss stays this rank's.
    """
    parts = micro_batches(rollout, teacher_rollout, step)
    logits = step.logits if step else "full"
    whole = len(parts) == 1
    world = ranks.size if ranks is not None else 1
    numerator, denominator, signals, selections = 0.0, 0.0, [], []
    for part, seen in parts:
        fwd, sig, selection = select_step(
            student,
            teacher,
            part,
            method,
            loss,
            vocab_size=vocab_size,
            generator=generator,
            teacher_rollout=seen,
            logits=logits,
        )
        mask, sampled = targets(part, fwd.start)
        value, loss_stats = objective.distill_loss(
            fwd.student_logits,
            fwd.teacher_logits,
            selection.weights[:, fwd.start :],
            kind=loss.kind,
            sampled_ids=sampled,
            mask=mask,
            normalize=loss.normalize,
            temperature=loss.temperature,
            beta=loss.beta,
            vocab_size=vocab_size,
            reduction="mean" if whole else "sum",
            known=_known_rows(sig, loss, fwd.start),
        )
        if whole and world > 1:  # this rank's mean, then rescaled so the averaged gradient is the global one
            global_den = float(ranks.sum(loss_stats["denominator"].clone()))
            local_den = float(loss_stats["denominator"])
            backward(value * (world * local_den / global_den) if global_den > 0 else value * 0.0)
        else:
            backward(value)
        del fwd
        numerator = numerator + value.detach()
        denominator = denominator + loss_stats["denominator"]
        signals.append(sig)
        selections.append(selection)
    if whole:
        total = numerator
    else:  # Σ numerators' gradients / the step's denominator (0 when nothing was selected)
        local = float(denominator)
        shared = float(ranks.sum(denominator.clone())) if world > 1 else local
        factor = world / shared if shared > 0 else 0.0
        for p in student.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)
        total = numerator / local if local > 0 else numerator * 0.0
    mask = rollout.target_mask
    selection_stats = objective.selection_stats(_cat(selections), _cat(signals), mask)
    stats = {f"train/{k}": v for k, v in selection_stats.items() if not math.isnan(v)}
    stats["train/loss"] = float(total)
    stats["train/response_tokens"] = float(mask.sum()) / mask.shape[0]
    return total, stats


def score_step(
    student,
    teacher,
    rollout: Rollout,
    method: MethodConfig | None,
    loss: LossConfig,
    *,
    vocab_size: int | None,
    step: StepConfig | None = None,
    generator: torch.Generator | None = None,
    teacher_rollout: Rollout | None = None,
) -> tuple[objective.Signals, objective.Selection | None]:
    """A step's signals and, with a ``method``, its selection, without any gradient: what evaluation (the
    held-out KL) and the selection pages read. It runs as a training step does, ``step.micro_batch_size``
    rollouts at a time with ``step.logits`` (chunked: the LM head never makes ``[B, L, V]`` logits), so no
    phase of a run needs more memory for its logits than a training step. ``method=None``: signals only
    (the divergence is reverse KL)."""
    logits = step.logits if step else "full"
    signals, selections = [], []
    with torch.no_grad():  # a block, not a decorator, so mutation testing reaches the body
        for part, seen in micro_batches(rollout, teacher_rollout, step):
            if method is None:
                fwd = forward_pair(
                    student, teacher, part, grad=False, teacher_rollout=seen, logits=logits, start=response_start(part)
                )
                sig = objective.token_signals(
                    fwd.student_logits,
                    fwd.teacher_logits,
                    targets(part, fwd.start)[0],
                    temperature=loss.temperature,
                    vocab_size=vocab_size,
                )
                signals.append(_widened(sig, fwd.start))
            else:
                _, sig, selection = select_step(
                    student,
                    teacher,
                    part,
                    method,
                    loss,
                    vocab_size=vocab_size,
                    generator=generator,
                    teacher_rollout=seen,
                    grad=False,
                    logits=logits,
                )
                signals.append(sig)
                selections.append(selection)
    return _cat(signals), (_cat(selections) if selections else None)


def rollout_reverse_kl(
    student,
    teacher,
    rollout: Rollout,
    vocab_size: int | None,
    temperature: float = 1.0,
    teacher_rollout: Rollout | None = None,
    step: StepConfig | None = None,
) -> tuple[float, int]:
    """``(Σ KL(p‖q), number of response tokens)`` over a batch of rollouts: the held-out KL's terms, computed
    in the training step's micro-batches and logits mode (`score_step`)."""
    loss = LossConfig(kind="reverse_kl", normalize="all", temperature=temperature, beta=0.5)
    signals, _ = score_step(
        student, teacher, rollout, None, loss, vocab_size=vocab_size, step=step, teacher_rollout=teacher_rollout
    )
    return float(signals.reverse_kl.sum()), int(rollout.target_mask.sum())
