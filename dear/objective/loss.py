"""The weighted distillation loss (README.md "The objective", "Loss"): ``L = Σ w_t ℓ_t / normaliser``.

The selection (`dear.objective.selection`) gives each response token a weight ``w_t``; this computes
``ℓ_t`` only where ``w_t ≠ 0``, with its exact gradient, through the chunked engine. Conventions (masks,
vocabulary, ``-inf``): `dear.objective`.
"""

from __future__ import annotations

import typing

import torch
from torch import Tensor

from dear.config.types import LossKind, Normalization
from dear.objective.chunked import (
    check_choice,
    check_sampled,
    check_temperature_beta,
    chunked_token_loss,
    effective_kind,
    rows_per_chunk,
    shared_vocab,
)

LOSS_KINDS: tuple[str, ...] = typing.get_args(LossKind)  # loss ℓ_t
NORMALIZATIONS: tuple[str, ...] = typing.get_args(Normalization)


def distill_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    weights: Tensor,
    *,
    kind: str = "reverse_kl",
    sampled_ids: Tensor | None = None,
    mask: Tensor | None = None,
    normalize: str = "selected",
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    reduction: str = "mean",
    known: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted per-token distillation loss ``L`` (§2 "Loss") with its exact gradient.

    ``ℓ_t`` by kind: ``reverse_kl`` ``KL(p_θ‖q)``; ``forward_kl`` ``KL(q‖p_θ)``; ``jsd`` as in
    `token_divergence`; ``pg`` ``-A_t · log p_θ(y_t)`` with the detached ``A_t = log q(y_t) - log p_θ(y_t)``
    (``y`` = sampled_ids); ``ce`` ``-log p_θ(y_t)``, cross-entropy on the given tokens (sft: ``y`` are
    reference tokens, the teacher's logits are not used). Reduction by ``normalize``: "selected" ``Σ w ℓ / Σ w``; "all"
    ``Σ w ℓ / Σ mask``; "sequence" the mean over sequences with ≥ 1 response token of
    ``Σ_t w ℓ / T_i``. An empty denominator gives a loss of 0 (with a zero gradient).
    ``reduction="sum"`` returns the numerator alone (``Σ w ℓ``, or ``Σ_i Σ_t w ℓ / T_i``) and leaves the
    division to the caller: micro-batches add numerators and denominators over the whole step
    (``stats["denominator"]``: ``Σ w``, ``Σ mask`` or the number of sequences with a response token).

    student_logits ``[B, T, Vs]`` (may require grad), teacher_logits ``[B, T, Vt]`` (treated as
    constant), weights ``[B, T]`` ≥ 0, mask ``[B, T]`` (default ``weights > 0``; weights outside it
    are ignored), sampled_ids ``[B, T]`` long (pg). Only positions with ``w ≠ 0`` are computed;
    the others get zero gradient. Returns (loss 0-dim float32, stats of detached 0-dim tensors:
    loss, selected_frac (w > 0 among mask), weight_sum, n_selected, token_loss_selected (mean ℓ
    over selected positions)). The true reverse KL over all response tokens comes from
    `token_signals` / `selection_stats`, so this function does no second full-vocabulary pass.
    ``known``: for the reverse KL, ``(KL(p‖q), lse_s, lse_t)`` ``[B, T]`` from `token_signals` at the same
    temperature (its ``reverse_kl``, ``student_lse``, ``teacher_lse``): the forward then reads ``ℓ_t`` from it instead
    of projecting and normalising the rows again (the backward recomputes them as always).
    """
    check_choice("kind", kind, LOSS_KINDS)
    check_choice("normalize", normalize, NORMALIZATIONS)
    check_choice("reduction", reduction, ("mean", "sum"))
    check_temperature_beta(temperature, beta)
    if (
        student_logits.dim() != 3
        or student_logits.shape[:2] != teacher_logits.shape[:2]
        or tuple(weights.shape) != tuple(student_logits.shape[:2])
    ):
        raise ValueError(
            f"expected logits [B, T, V] x2 and weights [B, T], got {tuple(student_logits.shape)}, "
            f"{tuple(teacher_logits.shape)}, {tuple(weights.shape)}"
        )
    if bool((weights < 0).any()):
        raise ValueError("weights must be >= 0")
    vocab = shared_vocab(student_logits, teacher_logits, vocab_size)
    mask = weights > 0 if mask is None else mask.bool()
    w = weights.float().masked_fill(~mask, 0.0)  # [B, T]
    b, t = (w != 0).nonzero(as_tuple=True)  # [M] positions that need the full-vocabulary pass
    y = check_sampled(sampled_ids, w.shape, vocab, kind, w != 0)
    if known is not None and effective_kind(kind, beta) != "reverse_kl":
        raise ValueError(f"known rows carry the reverse KL; kind={kind!r} (beta={beta}) computes another loss")
    token_loss = chunked_token_loss(
        student_logits,
        teacher_logits,
        b,
        t,
        y,
        effective_kind(kind, beta),
        temperature,
        beta,
        vocab,
        rows_per_chunk(vocab, chunk_size),
        known=None if known is None else tuple(x[b, t] for x in known),
    )  # [M]
    weighted = w[b, t] * token_loss  # [M]
    if normalize == "sequence":
        per_seq = torch.zeros(w.shape[0], dtype=weighted.dtype, device=w.device).index_add(0, b, weighted)  # [B]
        lengths = mask.sum(-1)
        has = lengths > 0
        numerator, denom = (per_seq[has] / lengths[has]).sum(), has.sum()
    else:
        numerator = weighted.sum()
        denom = w.sum() if normalize == "selected" else mask.sum().float()
    if reduction == "sum":
        loss = numerator
    else:
        loss = numerator / denom if bool(denom > 0) else numerator * 0.0
    n_sel = torch.tensor(float(b.numel()), device=w.device)
    stats = {
        "loss": loss.detach(),
        "denominator": denom.detach().float(),
        "selected_frac": n_sel / mask.sum().clamp_min(1),
        "weight_sum": w.sum(),
        "n_selected": n_sel,
        "token_loss_selected": token_loss.detach().sum() / n_sel.clamp_min(1),
    }
    return loss, stats
