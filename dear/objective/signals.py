"""Per-token signals, no grad (README.md "The objective", step 0): what the selection reads.

Entropy ``H_t`` of the student's ``p = softmax(z_s/τ)``, a divergence ``D_t`` to the teacher's
``q = softmax(z_t/τ)``, the true reverse KL, both argmaxes and the reverse-KL gradient's norm, computed by
the chunked engine (`dear.objective.chunked`) over the response positions only. Logits may be
`HeadLogits`. Conventions (masks, vocabulary, ``-inf``): `dear.objective`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
from torch import Tensor

from dear.config.types import Divergence
from dear.objective.chunked import (
    Workspace,
    all_positions,
    as_3d,
    check_choice,
    check_sampled,
    check_temperature_beta,
    chunked_token_loss,
    chunks,
    compute_dtype,
    effective_kind,
    gather_rows,
    load_rows,
    log_softmax_,
    rows_entropy,
    rows_kl,
    rows_per_chunk,
    rows_value,
    shared_vocab,
)

DIVERGENCES: tuple[str, ...] = typing.get_args(Divergence)  # signal D_t


@torch.no_grad()
def token_entropy(
    logits: Tensor, temperature: float = 1.0, *, vocab_size: int | None = None, chunk_size: int | None = None
) -> Tensor:
    """Student entropy ``H_t = -Σ_v p(v) log p(v)``, ``p = softmax(z[..., :V*]/τ)``, in nats.

    logits ``[..., V]`` (any float dtype) -> ``[...]`` float32, no grad, chunked over positions.
    """
    check_temperature_beta(temperature, 0.0)
    vocab = shared_vocab(logits, None, vocab_size)
    z = as_3d(logits)  # [B', T', V]
    b, t = all_positions(z.shape[:2], z.device)
    out = torch.zeros(z.shape[:2], dtype=torch.float32, device=z.device)
    rows = rows_per_chunk(vocab, chunk_size)
    ws = Workspace(min(rows, b.numel()), vocab, compute_dtype(z), z.device, teacher=False)
    for sl in chunks(b.numel(), rows):
        r, _, _ = load_rows(ws, b[sl], t[sl], z, None, vocab, temperature)
        out[b[sl], t[sl]] = rows_entropy(r).float()
    return out.reshape(logits.shape[:-1])


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    kind: str = "reverse_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    *,
    sampled_ids: Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Per-position divergence ``D_t`` between ``p = softmax(z_s/τ)`` and ``q = softmax(z_t/τ)``.

    kinds: ``reverse_kl`` ``KL(p‖q)``; ``forward_kl`` ``KL(q‖p)``; ``jsd`` TRL's generalised JSD
    ``β·KL(q‖m) + (1-β)·KL(p‖m)``, ``m = (1-β)p + βq`` (β = 0: ``KL(q‖p)``, β = 1: ``KL(p‖q)``, as in
    TRL); ``logratio`` ``|log p(y) - log q(y)|`` at ``sampled_ids`` ``[...]``.

    student_logits ``[..., Vs]``, teacher_logits ``[..., Vt]`` -> ``[...]`` (float32, float64 for
    float64 inputs), no reduction. Differentiable in ``student_logits`` with the exact gradient
    (analytic, recomputed chunk by chunk in backward).
    """
    check_choice("kind", kind, DIVERGENCES)
    check_temperature_beta(temperature, beta)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student and teacher logits must share leading dims, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    vocab = shared_vocab(student_logits, teacher_logits, vocab_size)
    zs, zt = as_3d(student_logits), as_3d(teacher_logits)  # [B', T', V]
    y = check_sampled(sampled_ids, student_logits.shape[:-1], vocab, kind)
    y = y.reshape(zs.shape[:2]) if y is not None else None
    b, t = all_positions(zs.shape[:2], zs.device)
    value = chunked_token_loss(
        zs, zt, b, t, y, effective_kind(kind, beta), temperature, beta, vocab, rows_per_chunk(vocab, chunk_size)
    )  # [B'·T']
    return value.reshape(student_logits.shape[:-1])


@dataclass(frozen=True)
class Signals:
    """Per-token signals of one batch, all ``[B, T]``, 0 on masked positions.

    entropy: student ``H_t``; divergence: the selection's ``D_t`` (its kind as asked);
    reverse_kl: always the true ``KL(p‖q)`` (for logging); student_argmax / teacher_argmax:
    long, argmax of the raw logits over the shared vocabulary (first maximum on ties);
    grad_norm: ``‖g_t‖₂`` with ``g_t = p ⊙ (log p − log q − KL(p‖q))`` the reverse-KL gradient at the
    tempered student logits ``z_s/τ`` (entries with ``p_v = 0`` are 0), the weight of a token in the
    gradient-mass coverage; None when not computed. student_lse / teacher_lse: the log-normalisers of
    ``z_s/τ`` and ``z_t/τ``, in the pass's compute dtype, so that the loss (`distill_loss`'s ``known``) need not
    project and normalise the same rows again; None when not computed.
    """

    entropy: Tensor
    divergence: Tensor
    reverse_kl: Tensor
    student_argmax: Tensor
    teacher_argmax: Tensor
    grad_norm: Tensor | None = None
    student_lse: Tensor | None = None
    teacher_lse: Tensor | None = None


@torch.no_grad()
def token_signals(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    *,
    sampled_ids: Tensor | None = None,
    divergence: str = "reverse_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> Signals:
    """All per-token signals in one chunked, no-grad pass over the response positions: entropy, the
    selection's divergence, the true reverse KL, both argmaxes and the reverse-KL gradient norm.

    student_logits ``[B, T, Vs]``, teacher_logits ``[B, T, Vt]``, mask ``[B, T]`` bool,
    sampled_ids ``[B, T]`` (only for ``divergence="logratio"``) -> `Signals` of float32/long ``[B, T]``.
    """
    check_choice("divergence", divergence, DIVERGENCES)
    check_temperature_beta(temperature, beta)
    if (
        student_logits.dim() != 3
        or student_logits.shape[:2] != teacher_logits.shape[:2]
        or tuple(mask.shape) != tuple(student_logits.shape[:2])
    ):
        raise ValueError(
            f"expected logits [B, T, V] x2 and mask [B, T], got {tuple(student_logits.shape)}, "
            f"{tuple(teacher_logits.shape)}, {tuple(mask.shape)}"
        )
    vocab = shared_vocab(student_logits, teacher_logits, vocab_size)
    y = check_sampled(sampled_ids, mask.shape, vocab, divergence, mask.bool())
    kind = effective_kind(divergence, beta)
    b, t = mask.bool().nonzero(as_tuple=True)  # response positions, row-major
    out = {
        name: torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        for name in ("entropy", "divergence", "reverse_kl", "grad_norm")
    }
    s_arg = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    t_arg = torch.zeros_like(s_arg)
    rows = rows_per_chunk(vocab, chunk_size)
    dtype = compute_dtype(student_logits, teacher_logits)
    lse = {name: torch.zeros(mask.shape, dtype=dtype, device=mask.device) for name in ("student_lse", "teacher_lse")}
    ws = Workspace(min(rows, b.numel()), vocab, dtype, mask.device)
    for sl in chunks(b.numel(), rows):
        bi, ti = b[sl], t[sl]
        r = ws.rows(ti.numel())
        s_arg[bi, ti] = gather_rows(r.logp, student_logits, bi, ti, vocab).argmax(-1)  # raw logits
        t_arg[bi, ti] = gather_rows(r.logq, teacher_logits, bi, ti, vocab).argmax(-1)
        lse["student_lse"][bi, ti] = log_softmax_(r.logp, r.p, temperature)
        lse["teacher_lse"][bi, ti] = log_softmax_(r.logq, r.q, temperature)
        out["entropy"][bi, ti] = rows_entropy(r).float()
        rkl = rows_kl(r.logp, r.p, r.logq, r.tmp, r.zero)  # leaves zero = (p == 0)
        out["reverse_kl"][bi, ti] = rkl.float()
        g = torch.sub(r.logp, r.logq, out=r.tmp).sub_(rkl[:, None]).mul_(r.p).masked_fill_(r.zero, 0.0)  # [m, V]
        out["grad_norm"][bi, ti] = torch.linalg.vector_norm(g, dim=-1).float()
        div = rkl if kind == "reverse_kl" else rows_value(kind, r, beta, y[bi, ti] if y is not None else None)[0]
        out["divergence"][bi, ti] = div.float()
    return Signals(student_argmax=s_arg, teacher_argmax=t_arg, **out, **lse)
