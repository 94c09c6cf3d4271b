"""The DEAR objective: token signals, token selection and the weighted distillation loss.

This module is README.md "The objective" written as tensor functions, and reads top to bottom like it:

1. Signals, no grad (`token_entropy`, `token_divergence`, `token_signals`): entropy ``H_t``
   of ``p = softmax(z_s/τ)``, divergence ``D_t`` to ``q = softmax(z_t/τ)``, argmaxes.
2. Selection (`select_decisions`, `evidence_similarity`, `score_evidence`, `evidence_pool`,
   `select_evidence`, `select_tip`, `select_random`, `select_tokens`): decisions by entropy,
   evidence by cosine similarity to the decisions boosted by divergence, per-token weights ``w_t``.
3. Loss (`distill_loss`): ``L = Σ w_t ℓ_t / Σ w_t`` with the exact gradient of ``ℓ_t``.
4. Diagnostics (`selection_stats`).

Conventions shared by every function:

- Logits are ``[B, T, V]`` (``[..., V]`` where stated); ``mask [B, T]`` is True on response
  tokens only. Masked positions are never selected, never enter a statistic, and hold 0 in
  every per-position output.
- Vocabulary: student and teacher heads may be padded to different sizes (Qwen2.5: 151936
  vs 152064 rows). Both are sliced to ``vocab_size`` if given, else to the smaller of the two
  last dims, before anything is computed; padding rows are never compared.
- Memory: full-vocabulary work runs over chunks of positions, in one reusable workspace of
  five float32 ``[rows, V]`` buffers (plus a bool one; jsd adds its log-mixture), which is all
  that is alive besides the inputs and, in backward, the gradient. By default a chunk holds
  ``2**24 // V`` positions (110 at V = 151936: 64 MiB per buffer, ~340 MiB in all);
  ``chunk_size`` overrides it. bf16/fp16 inputs are upcast per chunk. The loss keeps only
  per-position scalars and recomputes each chunk's softmax in backward; only positions with
  a nonzero weight are computed at all. Wherever logits are taken, `HeadLogits` (final hidden
  states and the LM head's weight) may stand in: each chunk then computes its own rows of logits,
  so the ``[B, T, V]`` logits and their gradient never exist.
- ``-inf`` logits are allowed: ``0 · log 0 = 0`` everywhere. A divergence that is infinite
  mathematically (e.g. ``KL(p‖q)`` with ``q_v = 0 < p_v``) is returned as ``inf``.
- Ties are broken deterministically: among equal scores the lower position index wins
  (with ``scope="batch"``, the lower flattened index ``i·T + t``, i.e. earlier sequences first).
- Counts are ``⌈ρ·T_i⌉`` with ``T_i = mask[i].sum()`` (the evidence count: ``⌈ρ_e·|pool_i|⌉``, the
  pool being the non-decisions by default, see `evidence_pool`), computed with a 1e-9 slack so
  that a product that is an integer in decimal (0.14·50 = 7.000000000000001) is not bumped up.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import torch
from torch import Tensor

from dear.config.schema import (
    Aggregation,
    Boost,
    DecisionMode,
    Direction,
    Divergence,
    EvidencePool,
    LossKind,
    MethodConfig,
    Normalization,
    Scope,
    Similarity,
)

__all__ = [
    "HeadLogits",
    "Signals",
    "Selection",
    "MethodConfig",
    "DIVERGENCES",
    "LOSS_KINDS",
    "NORMALIZATIONS",
    "token_entropy",
    "token_divergence",
    "token_signals",
    "select_decisions",
    "evidence_similarity",
    "score_evidence",
    "select_evidence",
    "evidence_pool",
    "select_tip",
    "select_random",
    "select_tokens",
    "distill_loss",
    "selection_stats",
]

DIVERGENCES: tuple[str, ...] = typing.get_args(Divergence)  # signal D_t
LOSS_KINDS: tuple[str, ...] = typing.get_args(LossKind)  # loss ℓ_t
NORMALIZATIONS: tuple[str, ...] = typing.get_args(Normalization)
BOOSTS: tuple[str, ...] = typing.get_args(Boost)  # evidence score forms (§2 step 2)
EVIDENCE_POOLS: tuple[str, ...] = typing.get_args(EvidencePool)  # what the evidence count is a share of
DECISION_MODES: tuple[str, ...] = typing.get_args(DecisionMode)
SCOPES: tuple[str, ...] = typing.get_args(Scope)
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
DIRECTIONS: tuple[str, ...] = typing.get_args(Direction)
SIMILARITIES: tuple[str, ...] = typing.get_args(Similarity)

# Elements per chunk buffer: 2**24 floats = 64 MiB, 110 positions at V = 151936 (see module doc).
_CHUNK_ELEMENTS = 2**24
# Slack in ⌈ρ·T⌉ so that float rounding of an exact decimal product (0.14·50 = 7.000000000000001)
# does not add a token.
_CEIL_SLACK = 1e-9
_COS_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# Shared helpers: vocabulary, chunking, validation
# ---------------------------------------------------------------------------------------------


def _shared_vocab(student_logits: Tensor, teacher_logits: Tensor | None, vocab_size: int | None) -> int:
    """Size of the shared vocabulary V*: ``vocab_size`` if given, else the smaller last dim."""
    dims = [student_logits.shape[-1]] + ([teacher_logits.shape[-1]] if teacher_logits is not None else [])
    if vocab_size is None:
        return min(dims)
    if not 1 <= vocab_size <= min(dims):
        raise ValueError(f"vocab_size must be in [1, {min(dims)}] (the smaller logits last dim), got {vocab_size}")
    return int(vocab_size)


def _rows_per_chunk(vocab: int, chunk_size: int | None) -> int:
    """Positions per chunk: ``chunk_size`` if given, else ``2**24 // V`` (at least 1)."""
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")
    return int(chunk_size)


def _as_3d(x: Tensor) -> Tensor:
    """View ``[..., V]`` as ``[B', T', V]`` (leading dims folded into B'); a view when possible."""
    if x.dim() == 1:
        return x[None, None]
    if x.dim() == 2:
        return x[None]
    if x.dim() == 3:
        return x
    return x.reshape(-1, x.shape[-2], x.shape[-1])


@dataclass(frozen=True)
class HeadLogits:
    """Logits that never exist whole: ``z[b, t] = hidden[b, t] @ weight[:V]ᵀ``, computed chunk by chunk.

    hidden ``[B, T, H]`` (the final hidden states, after the last norm), weight ``[V, H]`` (the LM head's,
    without bias). Every function here that takes logits takes this too: a chunk's rows are computed
    from the hidden states when they are needed and dropped after, so neither ``[B, T, V]`` logits nor
    their gradient is allocated. In `distill_loss` gradients flow to ``hidden`` and ``weight``.
    """

    hidden: Tensor
    weight: Tensor

    def __post_init__(self):
        if self.hidden.dim() != 3 or self.weight.dim() != 2 or self.hidden.shape[-1] != self.weight.shape[-1]:
            raise ValueError(
                f"HeadLogits needs hidden [B, T, H] and weight [V, H], got {tuple(self.hidden.shape)} "
                f"and {tuple(self.weight.shape)}"
            )

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        return torch.promote_types(self.hidden.dtype, self.weight.dtype)

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def dim(self) -> int:
        return 3

    def detach(self) -> HeadLogits:
        return HeadLogits(self.hidden.detach(), self.weight.detach())

    def rows(self, b: Tensor, t: Tensor, vocab: int) -> Tensor:
        """``z[b_i, t_i, :V]`` ``[m, V]`` in the head's dtype (one chunk)."""
        return self.hidden[b, t].to(self.weight.dtype) @ self.weight[:vocab].T


def _check_temperature_beta(temperature: float, beta: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _ceil_count(ratio: float, n: Tensor) -> Tensor:
    """``⌈ratio · n⌉`` as long, elementwise over a count tensor ``n``."""
    return torch.ceil(n.double() * ratio - _CEIL_SLACK).clamp_min(0).long()


# ---------------------------------------------------------------------------------------------
# 1. Per-token signals. Full-vocabulary work runs over a row-major list of positions (b, t),
#    chunk by chunk, in [rows, V] buffers that are allocated once per pass and reused: fresh
#    multi-MB allocations per chunk would cost more in page faults than the arithmetic.
# ---------------------------------------------------------------------------------------------


def _compute_dtype(*logits: Tensor) -> torch.dtype:
    """Chunk dtype: bf16/fp16 logits are upcast to float32; float64 stays float64."""
    dtype = torch.float32
    for x in logits:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


@dataclass
class _Rows:
    """One chunk of m positions, each ``[m, V]``: student ``log p``/``p``, teacher ``log q``/``q``
    (None when the teacher is not needed), a float scratch and a bool scratch."""

    logp: Tensor
    p: Tensor
    logq: Tensor | None
    q: Tensor | None
    tmp: Tensor
    zero: Tensor


class _Workspace:
    """The only full-vocabulary temporaries of a pass: five float ``[rows, V]`` buffers and a bool one."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device, teacher: bool = True):
        def new() -> Tensor:
            return torch.empty(rows, vocab, dtype=dtype, device=device)

        self.logp, self.p, self.tmp = new(), new(), new()
        self.logq, self.q = (new(), new()) if teacher else (None, None)
        self.zero = torch.empty(rows, vocab, dtype=torch.bool, device=device)

    def rows(self, m: int) -> _Rows:
        cut = lambda x: x[:m] if x is not None else None  # noqa: E731
        return _Rows(cut(self.logp), cut(self.p), cut(self.logq), cut(self.q), cut(self.tmp), cut(self.zero))


def _chunks(n: int, rows: int):
    """Slices of ``rows`` consecutive entries of a position list of length n."""
    for start in range(0, n, rows):
        yield slice(start, start + rows)


def _gather_rows(out: Tensor, logits: Tensor | HeadLogits, b: Tensor, t: Tensor, vocab: int) -> Tensor:
    """``out[i] = logits[b_i, t_i, :V]`` (upcast): one indexing kernel written straight into out (for
    `HeadLogits`: the chunk's rows computed from the hidden states).

    (``index_select`` per sequence was the obvious alternative; it launches one parallel region per
    row and is ~100x slower on a busy 2-core CPU.) out ``[m, V]``."""
    if isinstance(logits, HeadLogits):
        return out.copy_(logits.rows(b, t, vocab))
    src = logits[..., :vocab]  # [B, T, V] view
    if src.dtype == out.dtype:
        return torch.ops.aten.index.Tensor_out(src, [b, t], out=out)
    return out.copy_(src[b, t])  # bf16/fp16: a half-size temporary, then upcast


def _scatter_rows(grad: Tensor, rows: Tensor, b: Tensor, t: Tensor, vocab: int) -> None:
    """``grad[b_i, t_i, :V] = rows[i]`` (cast to grad's dtype), in place."""
    grad[..., :vocab].index_put_((b, t), rows.to(grad.dtype))


def _log_softmax_(logp: Tensor, p: Tensor, temperature: float, lse: Tensor | None = None) -> Tensor:
    """In place: ``logp`` holds raw logits z on entry and ``log softmax(z/τ)`` on exit, ``p`` gets
    ``softmax(z/τ)``. Returns the log-normaliser of ``z/τ`` per row [m], or uses the given one."""
    if temperature != 1.0:
        logp.div_(temperature)
    if lse is not None:
        torch.exp(logp.sub_(lse[:, None]), out=p)
        return lse
    shift = logp.amax(-1, keepdim=True)  # [m, 1]
    shift.masked_fill_(~torch.isfinite(shift), 0.0)
    torch.exp(logp.sub_(shift), out=p)
    total = p.sum(-1, keepdim=True)
    p.div_(total)
    log_total = total.log_()
    logp.sub_(log_total)
    return (shift + log_total).squeeze(-1)


def _load(
    ws: _Workspace,
    b: Tensor,
    t: Tensor,
    student: Tensor,
    teacher: Tensor | None,
    vocab: int,
    temperature: float,
    lse_s: Tensor | None = None,
    lse_t: Tensor | None = None,
):
    """Gather and normalise one chunk of positions: (_Rows, lse_s [m], lse_t [m] | None)."""
    r = ws.rows(t.numel())
    lse_s = _log_softmax_(_gather_rows(r.logp, student, b, t, vocab), r.p, temperature, lse_s)
    if teacher is not None:
        lse_t = _log_softmax_(_gather_rows(r.logq, teacher, b, t, vocab), r.q, temperature, lse_t)
    return r, lse_s, lse_t


def _rows_entropy(r: _Rows) -> Tensor:
    """``H = -Σ_v p_v log p_v`` per row, with ``0 · log 0 = 0``. -> [m]."""
    torch.eq(r.p, 0, out=r.zero)
    return -torch.mul(r.p, r.logp, out=r.tmp).masked_fill_(r.zero, 0.0).sum(-1)


def _rows_kl(logp_a: Tensor, a: Tensor, logp_b: Tensor, tmp: Tensor, zero: Tensor) -> Tensor:
    """``KL(a‖b) = Σ_v a_v (log a_v - log b_v)`` per row; terms with ``a_v = 0`` are 0. -> [m].

    Leaves ``zero = (a == 0)``."""
    torch.eq(a, 0, out=zero)
    return torch.sub(logp_a, logp_b, out=tmp).mul_(a).masked_fill_(zero, 0.0).sum(-1)


def _log_mixture(logp: Tensor, logq: Tensor, beta: float) -> Tensor:
    """``log m`` with ``m = (1-β)·p + β·q`` (TRL's mixture: β is the teacher's share). [m, V].

    Computed in log space (robust to underflow); the one temporary outside the workspace."""
    return torch.logaddexp(logp + math.log1p(-beta), logq + math.log(beta))


def _effective_kind(kind: str, beta: float) -> str:
    """TRL's endpoints of the generalised JSD: β = 0 is ``KL(q‖p)``, β = 1 is ``KL(p‖q)``."""
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    return kind


def _rows_value(kind: str, r: _Rows, beta: float, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-row ``ℓ`` of the (effective) kind, and ``A = log q(y) - log p(y)`` for the sampled kinds.

    reverse_kl ``KL(p‖q)``; forward_kl ``KL(q‖p)``; jsd (0<β<1) ``β·KL(q‖m) + (1-β)·KL(p‖m)``;
    pg ``-A·log p(y)``; ce ``-log p(y)``; logratio ``|A|``. -> ([m], [m] | None).
    """
    if kind == "reverse_kl":
        return _rows_kl(r.logp, r.p, r.logq, r.tmp, r.zero), None
    if kind == "forward_kl":
        return _rows_kl(r.logq, r.q, r.logp, r.tmp, r.zero), None
    if kind == "jsd":
        logm = _log_mixture(r.logp, r.logq, beta)
        kl_qm = _rows_kl(r.logq, r.q, logm, r.tmp, r.zero)
        return beta * kl_qm + (1.0 - beta) * _rows_kl(r.logp, r.p, logm, r.tmp, r.zero), None
    rows = torch.arange(y.numel(), device=y.device)
    logp_y = r.logp[rows, y]
    aux = r.logq[rows, y] - logp_y
    value = -aux * logp_y if kind == "pg" else -logp_y if kind == "ce" else aux.abs()
    return value, aux


def _rows_grad(kind: str, r: _Rows, beta: float, value: Tensor, y: Tensor | None, aux: Tensor | None) -> Tensor:
    """``∂ℓ/∂(z_s/τ)`` per row, [m, V], written over the chunk's buffers (the caller scales it by
    ``(∂L/∂ℓ)/τ``). Entries with ``p_v = 0`` get exactly 0 (no NaN from ``-inf - -inf``).

    - reverse_kl ``KL(p‖q)``:  ``p ⊙ (log p - log q - KL)``  (``value`` is the row's KL)
    - forward_kl ``KL(q‖p)``:  ``p - q``
    - jsd (0<β<1):             ``(1-β) · p ⊙ (log p - log m - KL(p‖m))``  (the ``q/m`` terms cancel)
    - pg ``-A·log p(y)``:      ``-A · (onehot(y) - p)``, ``A`` detached (``aux``)
    - ce ``-log p(y)``:        ``p - onehot(y)`` (sft on reference tokens; the teacher is not read)
    - logratio ``|A|``:        ``-sign(A) · (onehot(y) - p)``
    """
    if kind == "reverse_kl":
        torch.eq(r.p, 0, out=r.zero)
        return r.logp.sub_(r.logq).sub_(value[:, None]).mul_(r.p).masked_fill_(r.zero, 0.0)
    if kind == "forward_kl":
        return r.p.sub_(r.q)
    if kind == "jsd":
        logm = _log_mixture(r.logp, r.logq, beta)
        kl_pm = _rows_kl(r.logp, r.p, logm, r.tmp, r.zero)  # leaves zero = (p == 0)
        return r.logp.sub_(logm).sub_(kl_pm[:, None]).mul_(r.p).masked_fill_(r.zero, 0.0).mul_(1.0 - beta)
    coef = -aux if kind == "pg" else -torch.ones_like(aux) if kind == "ce" else -torch.sign(aux)  # ∂ℓ/∂log p(y), [m]
    g = r.p.mul_(-coef[:, None])
    g[torch.arange(g.shape[0], device=g.device), y] += coef
    return g


class _Const:
    """A value autograd does not see (the teacher's logits: no gradient, and inference tensors allowed)."""

    def __init__(self, value):
        self.value = value


def _head_accumulate(grad_h: Tensor, grad_w: Tensor, g: Tensor, head: HeadLogits, b: Tensor, t: Tensor, vocab: int):
    """Back through ``z = h @ Wᵀ`` for one chunk: ``∂h[b, t] += g @ W[:V]``, ``∂W[:V] += gᵀ @ h[b, t]``."""
    w = head.weight[:vocab]
    gw = g.to(w.dtype)
    grad_h.index_put_((b, t), (gw @ w).to(grad_h.dtype), accumulate=True)
    grad_w[:vocab].addmm_(g.to(grad_w.dtype).T, head.hidden[b, t].to(grad_w.dtype))


class _ChunkedTokenLoss(torch.autograd.Function):
    """Per-position ``ℓ`` at positions ``(b, t)``, chunked, with a recomputing exact backward.

    forward(s_a, s_b, teacher, b [M], t [M] (row-major), sampled [B,T] | None, kind, τ, β, V*, rows) -> ℓ [M].
    The student is ``s_a`` = logits ``[B,T,Vs]`` (``s_b`` None) or ``s_a, s_b`` = the hidden states and
    the head weight of a `HeadLogits`; the teacher (logits or `HeadLogits`) comes wrapped in `_Const`.
    Saves the inputs by reference and per-row scalars (the two log-normalisers, ℓ, A); backward
    recomputes each chunk's log-probs and writes its gradient into ``zeros_like(logits)``, or, for
    `HeadLogits`, into the hidden states' and the head's gradients, chunk by chunk. The teacher gets no
    gradient.
    """

    @staticmethod
    def forward(ctx, s_a, s_b, teacher, b, t, sampled, kind, temperature, beta, vocab, rows):  # type: ignore[override]
        student = s_a if s_b is None else HeadLogits(s_a, s_b)
        teacher = teacher.value
        dtype = _compute_dtype(student, teacher)
        value, aux, lse_s, lse_t = (torch.zeros(b.numel(), dtype=dtype, device=student.device) for _ in range(4))
        ws = _Workspace(min(rows, b.numel()), vocab, dtype, student.device)
        for sl in _chunks(b.numel(), rows):
            r, lse_s[sl], lse_t[sl] = _load(ws, b[sl], t[sl], student, teacher, vocab, temperature)
            y = sampled[b[sl], t[sl]] if sampled is not None else None
            value[sl], a = _rows_value(kind, r, beta, y)
            if a is not None:
                aux[sl] = a
        ctx.save_for_backward(s_a, s_b, b, t, sampled, lse_s, lse_t, value, aux)
        ctx.teacher = teacher
        ctx.cfg = (kind, temperature, beta, vocab, rows)
        return value

    @staticmethod
    def backward(ctx, grad_value):  # type: ignore[override]
        s_a, s_b, b, t, sampled, lse_s, lse_t, value, aux = ctx.saved_tensors
        teacher = ctx.teacher
        kind, temperature, beta, vocab, rows = ctx.cfg
        none = (None,) * 9
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return (None, None) + none
        head = HeadLogits(s_a, s_b) if s_b is not None else None
        student = head if head is not None else s_a
        if head is None:
            grad = torch.zeros_like(s_a)  # [B, T, Vs]; padding rows and unselected positions stay 0
        else:  # the hidden states' gradient, and the head's (in float32 when the head is half precision)
            grad_h = torch.zeros_like(s_a)
            acc = torch.float32 if s_b.dtype in (torch.float16, torch.bfloat16) else s_b.dtype
            grad_w = torch.zeros(s_b.shape, dtype=acc, device=s_b.device)
        scale = grad_value / temperature  # [M]
        needs_teacher = kind in ("reverse_kl", "forward_kl", "jsd")
        ws = _Workspace(
            min(rows, b.numel()), vocab, _compute_dtype(student, teacher), s_a.device, teacher=needs_teacher
        )
        for sl in _chunks(b.numel(), rows):
            r, _, _ = _load(
                ws, b[sl], t[sl], student, teacher if needs_teacher else None, vocab, temperature, lse_s[sl], lse_t[sl]
            )
            y = sampled[b[sl], t[sl]] if sampled is not None else None
            g = _rows_grad(kind, r, beta, value[sl], y, aux[sl]).mul_(scale[sl, None])  # [m, V]
            if head is None:
                _scatter_rows(grad, g, b[sl], t[sl], vocab)
            else:
                _head_accumulate(grad_h, grad_w, g, head, b[sl], t[sl], vocab)
        if head is None:
            return (grad, None) + none
        return (grad_h, grad_w.to(s_b.dtype)) + none


def _token_loss(student, teacher, b, t, y, kind, temperature, beta, vocab, rows) -> Tensor:
    """`_ChunkedTokenLoss` on logits or `HeadLogits` (student and teacher alike): ℓ [M]."""
    s_a, s_b = (student.hidden, student.weight) if isinstance(student, HeadLogits) else (student, None)
    return _ChunkedTokenLoss.apply(s_a, s_b, _Const(teacher), b, t, y, kind, temperature, beta, vocab, rows)


def _check_sampled(
    sampled_ids: Tensor | None, shape: torch.Size, vocab: int, kind: str, used: Tensor | None = None
) -> Tensor | None:
    """Validate ``sampled_ids [B, T]`` for the sampled-token kinds (pg, logratio, ce); None otherwise.

    Ids must lie in ``[0, V*)`` at the ``used`` positions (bool ``[B, T]``, default all); elsewhere
    (prompt/padding, e.g. -100) they are clamped so that gathers stay in range.
    """
    if kind not in ("pg", "logratio", "ce"):
        return None
    if sampled_ids is None:
        raise ValueError(f"kind={kind!r} needs sampled_ids (the sampled token y_t per position, shape {tuple(shape)})")
    if tuple(sampled_ids.shape) != tuple(shape):
        raise ValueError(f"sampled_ids must have shape {tuple(shape)}, got {tuple(sampled_ids.shape)}")
    ids = sampled_ids.long()
    bad = (ids < 0) | (ids >= vocab)
    if bool((bad if used is None else bad & used).any()):
        raise ValueError(f"sampled_ids must lie in [0, {vocab}) (the shared vocabulary) on the positions used")
    return ids.clamp(0, vocab - 1)


def _all_positions(shape: torch.Size, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row-major ``(b, t)`` of every position of a ``[B, T]`` grid."""
    return torch.ones(shape, dtype=torch.bool, device=device).nonzero(as_tuple=True)


@torch.no_grad()
def token_entropy(
    logits: Tensor, temperature: float = 1.0, *, vocab_size: int | None = None, chunk_size: int | None = None
) -> Tensor:
    """Student entropy ``H_t = -Σ_v p(v) log p(v)``, ``p = softmax(z[..., :V*]/τ)``, in nats.

    logits ``[..., V]`` (any float dtype) -> ``[...]`` float32, no grad, chunked over positions.
    """
    _check_temperature_beta(temperature, 0.0)
    vocab = _shared_vocab(logits, None, vocab_size)
    z = _as_3d(logits)  # [B', T', V]
    b, t = _all_positions(z.shape[:2], z.device)
    out = torch.zeros(z.shape[:2], dtype=torch.float32, device=z.device)
    rows = _rows_per_chunk(vocab, chunk_size)
    ws = _Workspace(min(rows, b.numel()), vocab, _compute_dtype(z), z.device, teacher=False)
    for sl in _chunks(b.numel(), rows):
        r, _, _ = _load(ws, b[sl], t[sl], z, None, vocab, temperature)
        out[b[sl], t[sl]] = _rows_entropy(r).float()
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
    _check_choice("kind", kind, DIVERGENCES)
    _check_temperature_beta(temperature, beta)
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise ValueError(
            f"student and teacher logits must share leading dims, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}"
        )
    vocab = _shared_vocab(student_logits, teacher_logits, vocab_size)
    zs, zt = _as_3d(student_logits), _as_3d(teacher_logits)  # [B', T', V]
    y = _check_sampled(sampled_ids, student_logits.shape[:-1], vocab, kind)
    y = y.reshape(zs.shape[:2]) if y is not None else None
    b, t = _all_positions(zs.shape[:2], zs.device)
    value = _token_loss(
        zs, zt, b, t, y, _effective_kind(kind, beta), temperature, beta, vocab, _rows_per_chunk(vocab, chunk_size)
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
    gradient-mass coverage; None when not computed.
    """

    entropy: Tensor
    divergence: Tensor
    reverse_kl: Tensor
    student_argmax: Tensor
    teacher_argmax: Tensor
    grad_norm: Tensor | None = None


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
    _check_choice("divergence", divergence, DIVERGENCES)
    _check_temperature_beta(temperature, beta)
    if (
        student_logits.dim() != 3
        or student_logits.shape[:2] != teacher_logits.shape[:2]
        or tuple(mask.shape) != tuple(student_logits.shape[:2])
    ):
        raise ValueError(
            f"expected logits [B, T, V] x2 and mask [B, T], got {tuple(student_logits.shape)}, "
            f"{tuple(teacher_logits.shape)}, {tuple(mask.shape)}"
        )
    vocab = _shared_vocab(student_logits, teacher_logits, vocab_size)
    y = _check_sampled(sampled_ids, mask.shape, vocab, divergence, mask.bool())
    kind = _effective_kind(divergence, beta)
    b, t = mask.bool().nonzero(as_tuple=True)  # response positions, row-major
    out = {
        name: torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        for name in ("entropy", "divergence", "reverse_kl", "grad_norm")
    }
    s_arg = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)
    t_arg = torch.zeros_like(s_arg)
    rows = _rows_per_chunk(vocab, chunk_size)
    ws = _Workspace(min(rows, b.numel()), vocab, _compute_dtype(student_logits, teacher_logits), mask.device)
    for sl in _chunks(b.numel(), rows):
        bi, ti = b[sl], t[sl]
        r = ws.rows(ti.numel())
        s_arg[bi, ti] = _gather_rows(r.logp, student_logits, bi, ti, vocab).argmax(-1)  # raw logits
        t_arg[bi, ti] = _gather_rows(r.logq, teacher_logits, bi, ti, vocab).argmax(-1)
        _log_softmax_(r.logp, r.p, temperature)
        _log_softmax_(r.logq, r.q, temperature)
        out["entropy"][bi, ti] = _rows_entropy(r).float()
        rkl = _rows_kl(r.logp, r.p, r.logq, r.tmp, r.zero)  # leaves zero = (p == 0)
        out["reverse_kl"][bi, ti] = rkl.float()
        g = torch.sub(r.logp, r.logq, out=r.tmp).sub_(rkl[:, None]).mul_(r.p).masked_fill_(r.zero, 0.0)  # [m, V]
        out["grad_norm"][bi, ti] = torch.linalg.vector_norm(g, dim=-1).float()
        div = rkl if kind == "reverse_kl" else _rows_value(kind, r, beta, y[bi, ti] if y is not None else None)[0]
        out["divergence"][bi, ti] = div.float()
    return Signals(student_argmax=s_arg, teacher_argmax=t_arg, **out)


# ---------------------------------------------------------------------------------------------
# 2. Selection. All inputs [B, T] (hidden [B, T, H]); every function ignores masked positions.
# ---------------------------------------------------------------------------------------------


def _topk_mask(score: Tensor, eligible: Tensor, k: Tensor) -> Tensor:
    """Per row, the ``k[i]`` eligible positions with the highest score; ties -> lower index.

    score ``[B, T]`` float, eligible ``[B, T]`` bool (positions with score ``-inf`` are not
    eligible), k ``[B]`` long, capped at the number eligible -> ``[B, T]`` bool.
    """
    eligible = eligible & (score > -math.inf)
    keyed = score.masked_fill(~eligible, -math.inf)
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices  # stable: lower index first
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(score.shape[-1], device=score.device).expand_as(order).contiguous()
    )
    k = torch.minimum(k, eligible.sum(-1))
    return (rank < k[:, None]) & eligible


def _topk_by_scope(score: Tensor, eligible: Tensor, mask: Tensor, ratio: float, scope: str) -> Tensor:
    """Top ``⌈ratio·T_i⌉`` per sequence (scope "sequence") or ``⌈ratio·Σ_i T_i⌉`` over the batch."""
    _check_choice("scope", scope, SCOPES)
    if scope == "batch":
        k = _ceil_count(ratio, mask.sum().reshape(1))
        return _topk_mask(score.reshape(1, -1), eligible.reshape(1, -1), k).reshape(score.shape)
    return _topk_mask(score, eligible, _ceil_count(ratio, mask.sum(-1)))


def _sequence_median(x: Tensor, mask: Tensor) -> Tensor:
    """Lower median of ``x`` over each sequence's response tokens: ``[B, T] -> [B]`` (0 if none).

    (For ``x ≤ median`` the lower and the averaged median select the same positions.)
    """
    n = mask.sum(-1)
    ordered = x.masked_fill(~mask, math.inf).sort(-1).values
    med = ordered.gather(-1, ((n - 1) // 2).clamp_min(0)[:, None]).squeeze(-1)
    return torch.where(n > 0, med, torch.zeros_like(med))


def _minmax(x: Tensor, where: Tensor, dim: int | None = -1, constant: float = 0.0) -> Tensor:
    """Min-max normalise ``x`` to [0, 1] over the positions ``where`` (per row, or all if dim None).

    A constant (or empty) set maps to ``constant`` (default 0). Values outside ``where`` are meaningless.
    """
    lo = x.masked_fill(~where, math.inf)
    hi = x.masked_fill(~where, -math.inf)
    lo = lo.amin(dim, keepdim=True) if dim is not None else lo.amin()
    hi = hi.amax(dim, keepdim=True) if dim is not None else hi.amax()
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, 1.0), torch.full_like(x, constant))


def select_decisions(
    entropy: Tensor,
    mask: Tensor,
    *,
    ratio: float = 0.2,
    mode: str = "topk",
    h_min: float | None = None,
    scope: str = "sequence",
) -> Tensor:
    """Decisions 𝒟 (§2 step 1): the top ``⌈ρ_d·T_i⌉`` response positions by ``H_t``.

    ``mode="threshold"``: every response position with ``H_t ≥ h_min``. ``scope="batch"``: the top
    ``⌈ρ_d·Σ T_i⌉`` over the whole batch. entropy, mask ``[B, T]`` -> ``[B, T]`` bool.
    """
    _check_choice("mode", mode, DECISION_MODES)
    if mode == "threshold":
        if h_min is None:
            raise ValueError("mode='threshold' needs h_min, the entropy a decision must reach")
        return mask & (entropy >= h_min)
    return _topk_by_scope(entropy, mask, mask, ratio, scope)


def evidence_similarity(
    hidden: Tensor | None,
    decision: Tensor,
    mask: Tensor,
    *,
    agg: str = "max",
    direction: str = "both",
    window: int | None = None,
    similarity: str = "cosine",
) -> Tensor:
    """``sim_t = agg_{d ∈ 𝒟_i, allowed(t, d)} cos(h_t, h_d)`` (§2 step 2), per sequence.

    allowed(t, d): ``t < d`` ("before"), ``t > d`` ("after") or any ("both"), and ``|t - d| ≤ window``
    if a window is set. ``similarity="none"`` uses ``cos ≡ 1`` (dear_nosim). Positions without an
    allowed decision, and masked positions, get ``-inf``: they never become evidence.
    hidden ``[B, T, H]`` (any float dtype; computed in ≥ float32), decision, mask ``[B, T]`` -> ``[B, T]``.
    Memory is ``O(B·T·K)`` with K the most decisions in a sequence (a cosine matrix against the
    gathered decision states only).
    """
    _check_choice("agg", agg, AGGREGATIONS)
    _check_choice("direction", direction, DIRECTIONS)
    _check_choice("similarity", similarity, SIMILARITIES)
    bsz, length = mask.shape
    n_dec = decision.sum(-1)  # [B]
    k_max = int(n_dec.max()) if decision.numel() else 0
    if k_max == 0:
        return torch.full(mask.shape, -math.inf, device=mask.device)
    dec_pos = torch.sort((~decision).to(torch.int8), dim=-1, stable=True).indices[:, :k_max]  # [B, K]
    dec_valid = torch.arange(k_max, device=mask.device)[None, :] < n_dec[:, None]  # [B, K]
    pos_t = torch.arange(length, device=mask.device)[None, :, None]  # [1, T, 1]
    pos_d = dec_pos[:, None, :]  # [B, 1, K]
    allowed = dec_valid[:, None, :].expand(bsz, length, k_max)  # [B, T, K]
    if direction == "before":
        allowed = allowed & (pos_t < pos_d)
    elif direction == "after":
        allowed = allowed & (pos_t > pos_d)
    if window is not None:
        allowed = allowed & ((pos_t - pos_d).abs() <= window)
    if similarity == "none":
        cos = torch.ones(allowed.shape, device=mask.device)
    else:
        if hidden is None:
            raise ValueError("hidden must be given ([B, T, H] student hidden states) for similarity='cosine'")
        h = hidden.to(torch.promote_types(hidden.dtype, torch.float32)).masked_fill(~mask[..., None], 0.0)
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(_COS_EPS)  # [B, T, H] unit rows
        h_dec = h.gather(1, dec_pos[..., None].expand(-1, -1, h.shape[-1]))  # [B, K, H]
        cos = h @ h_dec.transpose(1, 2)  # [B, T, K]
    if agg == "max":
        sim = cos.masked_fill(~allowed, -math.inf).amax(-1)  # [B, T]
    else:
        count = allowed.sum(-1)
        sim = cos.masked_fill(~allowed, 0.0).sum(-1) / count.clamp_min(1)
        sim = sim.masked_fill(count == 0, -math.inf)
    return sim.masked_fill(~mask, -math.inf)


def score_evidence(
    sim: Tensor,
    divergence: Tensor,
    candidates: Tensor,
    mask: Tensor,
    *,
    boost: str = "normalized",
    lam: float = 1.0,
) -> Tensor:
    """Evidence score of each candidate (§2 step 2); ``-inf`` elsewhere.

    normalized (the paper's): ``â_t · (1 + λ · δ̂_t)``; additive: ``â_t + λ · δ̂_t``; with ``â``, ``δ̂``
    the relevance ``sim`` and the divergence ``D`` min-max normalised to [0, 1] over the sequence's
    competing candidates. A constant (or one-element) set normalises to 0, except the relevance of
    the normalized form, which goes to 1 (all equally relevant), so that ``similarity="none"`` (the
    paper's gap-only) ranks by divergence instead of by position. multiplicative:
    ``sim_t · (1 + λ · D_t / mean_u D_u)``, unnormalised, the
    mean over the sequence's response tokens (ratio taken as 0 when that mean is 0); none: ``sim_t``.
    Competing candidates: ``candidates & mask`` with a finite sim (a candidate without an allowed
    decision is dropped). Normalisation is per sequence whatever the selection's scope.
    sim, divergence ``[B, T]`` float, candidates, mask ``[B, T]`` bool -> ``[B, T]``.
    """
    _check_choice("boost", boost, BOOSTS)
    candidates = candidates & mask & (sim > -math.inf)
    div = divergence.masked_fill(~mask, 0.0)
    if boost == "multiplicative":
        mean_div = div.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp_min(1)  # [B, 1]
        ratio = torch.where(mean_div > 0, div / torch.where(mean_div > 0, mean_div, 1.0), torch.zeros_like(div))
        score = sim * (1.0 + lam * ratio)
    elif boost in ("normalized", "additive"):
        a_hat = _minmax(sim, candidates, constant=1.0 if boost == "normalized" else 0.0)  # [B, T] on candidates
        d_hat = _minmax(div, candidates)
        score = a_hat * (1.0 + lam * d_hat) if boost == "normalized" else a_hat + lam * d_hat
    else:
        score = sim
    return score.masked_fill(~candidates, -math.inf)


def select_evidence(score: Tensor, pool: Tensor, *, ratio: float = 0.2, scope: str = "sequence") -> Tensor:
    """Evidence ℰ (§2 step 3): the top ``⌈ρ_e·|pool_i|⌉`` positions by score among those with a finite
    score (count capped by what is available); ``scope="batch"``: top ``⌈ρ_e·Σ_i |pool_i|⌉`` over the batch.

    pool: the positions whose number sets the count, the non-decision response positions for
    ``evidence_pool="remaining"`` (the paper's) or every response position for ``"all"``; only
    positions in the pool with a finite score are chosen. Ties: lower position first.
    score ``[B, T]`` (``-inf`` = not a candidate), pool ``[B, T]`` bool -> ``[B, T]`` bool.
    """
    return _topk_by_scope(score, pool, pool, ratio, scope)


def evidence_pool(mask: Tensor, decision: Tensor, pool: str = "remaining") -> Tensor:
    """The positions whose number sets the evidence count: ``mask & ~decision`` ("remaining", the
    paper's: ``⌈ρ_e·(T_i − |𝒟_i|)⌉``) or ``mask`` ("all": ``⌈ρ_e·T_i⌉``). ``[B, T]`` bool each."""
    _check_choice("evidence_pool", pool, EVIDENCE_POOLS)
    return mask & ~decision if pool == "remaining" else mask


def select_tip(
    entropy: Tensor, divergence: Tensor, mask: Tensor, *, ratio: float = 0.5, scope: str = "sequence"
) -> tuple[Tensor, Tensor]:
    """TIP baseline: ``s = Ĥ + D̂ - Ĥ·D̂`` (soft-OR) of entropy and divergence min-max normalised
    over the batch's response positions; the top ``⌈ratio·T_i⌉`` per sequence (or over the batch).
    entropy, divergence, mask ``[B, T]`` -> (chosen ``[B, T]`` bool, s ``[B, T]``, 0 when masked).
    """
    h_hat = _minmax(entropy, mask, dim=None)
    d_hat = _minmax(divergence, mask, dim=None)
    s = (h_hat + d_hat - h_hat * d_hat).masked_fill(~mask, 0.0)
    return _topk_by_scope(s, mask, mask, ratio, scope), s


def select_random(
    mask: Tensor,
    *,
    decision_ratio: float = 0.2,
    evidence_ratio: float = 0.2,
    scope: str = "sequence",
    evidence_pool: str = "remaining",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random control: a uniform subset of DEAR's top-k size of response positions per sequence:
    ``min(k_d + ⌈ρ_e·(T_i − k_d)⌉, T_i)`` with ``k_d = ⌈ρ_d·T_i⌉`` (``evidence_pool="remaining"``) or
    ``min(k_d + ⌈ρ_e·T_i⌉, T_i)`` (``"all"``); with ``scope="batch"`` the same with ``Σ T_i`` over the batch.
    Uniform because it takes the top-k of i.i.d. uniform keys drawn from ``generator``.
    mask ``[B, T]`` -> ``[B, T]`` bool.
    """
    _check_choice("evidence_pool", evidence_pool, EVIDENCE_POOLS)
    _check_choice("scope", scope, SCOPES)
    keys = torch.rand(mask.shape, generator=generator, device=mask.device)

    def count(n: Tensor) -> Tensor:
        k_dec = torch.minimum(_ceil_count(decision_ratio, n), n)
        pool = n - k_dec if evidence_pool == "remaining" else n
        return torch.minimum(k_dec + _ceil_count(evidence_ratio, pool), n)

    if scope == "batch":
        k = count(mask.sum().reshape(1))
        return _topk_mask(keys.reshape(1, -1), mask.reshape(1, -1), k).reshape(mask.shape)
    return _topk_mask(keys, mask, count(mask.sum(-1)))


@dataclass(frozen=True)
class Selection:
    """Which tokens count, ``[B, T]`` each; masked positions are 0 / False.

    weights: ``w_t`` (float32); decision: 𝒟; evidence: ℰ (both empty for opd/tip/random, whose
    choice lives in ``weights > 0``); score: the evidence score (``-inf`` where a position does
    not compete) for the DEAR family, the soft-OR score for tip, None otherwise.
    """

    weights: Tensor
    decision: Tensor
    evidence: Tensor
    score: Tensor | None = None


def select_tokens(
    method: MethodConfig,
    *,
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    generator: torch.Generator | None = None,
) -> Selection:
    """Run a method's selection (README.md "The objective", ``method.selector``) and return per-token weights.

    selector ``all``: every response token, weight 1 (OPD); ``entropy``: decisions only, weight 1;
    ``tip``: `select_tip`; ``random``: `select_random`; ``dear``: decisions, then evidence scored by
    `evidence_similarity` and `score_evidence` among the non-decisions (candidates), counted over
    `evidence_pool`, weights ``w_dec``/``w_evi``/``w_other``.
    entropy, divergence, mask ``[B, T]`` (mask True on response tokens), hidden ``[B, T, H]`` (only
    needed when evidence is scored by cosine similarity).
    """
    if tuple(entropy.shape) != tuple(mask.shape) or tuple(divergence.shape) != tuple(mask.shape):
        raise ValueError(
            f"entropy, divergence and mask must all be [B, T], got {tuple(entropy.shape)}, "
            f"{tuple(divergence.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    entropy = entropy.float().masked_fill(~mask, 0.0)  # masked values (even NaN/huge) never enter
    divergence = divergence.float().masked_fill(~mask, 0.0)
    nothing = torch.zeros_like(mask)
    m = method

    if m.selector == "all":
        return Selection(weights=mask.float(), decision=nothing, evidence=nothing)
    if m.selector == "tip":
        chosen, s = select_tip(entropy, divergence, mask, ratio=m.tip_ratio, scope=m.scope)
        return Selection(weights=chosen.float(), decision=nothing, evidence=nothing, score=s)
    if m.selector == "random":
        chosen = select_random(
            mask,
            decision_ratio=m.decision_ratio,
            evidence_ratio=m.evidence_ratio,
            scope=m.scope,
            evidence_pool=m.evidence_pool,
            generator=generator,
        )
        return Selection(weights=chosen.float(), decision=nothing, evidence=nothing)

    decision = select_decisions(entropy, mask, ratio=m.decision_ratio, mode=m.mode, h_min=m.h_min, scope=m.scope)
    if m.selector == "entropy":
        return Selection(weights=decision.float(), decision=decision, evidence=nothing)
    candidates = mask & ~decision
    if m.confident_only:
        candidates = candidates & (entropy <= _sequence_median(entropy, mask)[:, None])
    if m.evidence_ratio > 0:
        sim = evidence_similarity(
            hidden, decision, mask, agg=m.agg, direction=m.direction, window=m.window, similarity=m.similarity
        )
        score = score_evidence(sim, divergence, candidates, mask, boost=m.boost, lam=m.lam)
        evidence = select_evidence(
            score, evidence_pool(mask, decision, m.evidence_pool), ratio=m.evidence_ratio, scope=m.scope
        )
    else:  # no evidence requested: skip the similarity (and the need for hidden states)
        score, evidence = None, nothing
    other = mask & ~decision & ~evidence
    weights = m.w_dec * decision.float() + m.w_evi * evidence.float() + m.w_other * other.float()
    return Selection(weights=weights, decision=decision, evidence=evidence, score=score)


# ---------------------------------------------------------------------------------------------
# 3. Loss
# ---------------------------------------------------------------------------------------------


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
    """
    _check_choice("kind", kind, LOSS_KINDS)
    _check_choice("normalize", normalize, NORMALIZATIONS)
    _check_choice("reduction", reduction, ("mean", "sum"))
    _check_temperature_beta(temperature, beta)
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
    vocab = _shared_vocab(student_logits, teacher_logits, vocab_size)
    mask = weights > 0 if mask is None else mask.bool()
    w = weights.float().masked_fill(~mask, 0.0)  # [B, T]
    b, t = (w != 0).nonzero(as_tuple=True)  # [M] positions that need the full-vocabulary pass
    y = _check_sampled(sampled_ids, w.shape, vocab, kind, w != 0)
    token_loss = _token_loss(
        student_logits,
        teacher_logits,
        b,
        t,
        y,
        _effective_kind(kind, beta),
        temperature,
        beta,
        vocab,
        _rows_per_chunk(vocab, chunk_size),
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


# ---------------------------------------------------------------------------------------------
# 4. Diagnostics
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def selection_stats(selection: Selection, signals: Signals, mask: Tensor) -> dict[str, float]:
    """Per-step diagnostics (§2 last paragraph) as floats; means over masked-in positions only.

    Keys: selected_frac / decision_frac / evidence_frac (of response tokens); entropy_{group},
    divergence_{group} for group in selected, decision, evidence, other (other = neither
    decision nor evidence; NaN for an empty group); reverse_kl: true mean ``KL(p‖q)`` over all
    response tokens; cyw_rate: response positions with ``H_t ≤`` their sequence's (lower) median
    entropy whose student argmax ≠ teacher argmax, as a fraction of response tokens;
    cyw_in_evidence / cyw_in_selected: the share of those positions in ℰ / with ``w > 0`` (NaN if none);
    grad_mass_coverage (when ``signals.grad_norm`` is set): ``Σ_{t: w_t > 0} ‖g_t‖₂ / Σ_t ‖g_t‖₂`` over
    the response tokens, the paper's share of the reverse-KL gradient mass the selection keeps (NaN
    if the denominator is 0; 1.0 for opd).
    """
    mask = mask.bool()
    n = mask.sum().clamp_min(1).float()
    selected = mask & (selection.weights > 0)
    decision, evidence = mask & selection.decision, mask & selection.evidence
    other = mask & ~decision & ~evidence

    def mean_over(x: Tensor, where: Tensor) -> float:
        count = int(where.sum())
        return float(x.float()[where].sum() / count) if count else math.nan

    stats = {
        "selected_frac": float(selected.sum() / n),
        "decision_frac": float(decision.sum() / n),
        "evidence_frac": float(evidence.sum() / n),
        "reverse_kl": float(signals.reverse_kl.float()[mask].sum() / n),
    }
    for group, where in (("selected", selected), ("decision", decision), ("evidence", evidence), ("other", other)):
        stats[f"entropy_{group}"] = mean_over(signals.entropy, where)
        stats[f"divergence_{group}"] = mean_over(signals.divergence, where)
    entropy = signals.entropy.float().masked_fill(~mask, 0.0)
    confident = mask & (entropy <= _sequence_median(entropy, mask)[:, None])
    cyw = confident & (signals.student_argmax != signals.teacher_argmax)
    n_cyw = int(cyw.sum())
    stats["cyw_rate"] = float(n_cyw / n)
    stats["cyw_in_evidence"] = float((cyw & evidence).sum() / n_cyw) if n_cyw else math.nan
    stats["cyw_in_selected"] = float((cyw & selected).sum() / n_cyw) if n_cyw else math.nan
    if signals.grad_norm is not None:
        g = signals.grad_norm.double()
        total = float(g[mask].sum())
        stats["grad_mass_coverage"] = float(g[selected].sum()) / total if total > 0 else math.nan
    return stats
