"""The full-vocabulary engine under the objective: every ``[.., V]`` computation runs here, chunk by chunk.

`dear.objective.signals` and `dear.objective.loss` say *what* is computed per position (an entropy, a
divergence, a loss and its exact gradient); this module says *how*, without the memory a naive version
needs. Work runs over a row-major list of positions ``(b, t)``, in one reusable workspace of five float32
``[rows, V]`` buffers (plus a bool one; jsd adds its log-mixture), which is all that is alive besides the
inputs and, in backward, the gradient. By default a chunk holds ``2**24 // V`` positions (110 at
V = 151936: 64 MiB per buffer, ~340 MiB in all); ``chunk_size`` overrides it. bf16/fp16 inputs are upcast
per chunk. The loss keeps only per-position scalars and recomputes each chunk's softmax in backward. Wherever
logits are taken, `HeadLogits` (final hidden states and the LM head's weight) may stand in: each chunk then
computes its own rows of logits, so the ``[B, T, V]`` logits and their gradient never exist.

Buffers are allocated once per pass and reused: fresh multi-MB allocations per chunk would cost more in
page faults than the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Elements per chunk buffer: 2**24 floats = 64 MiB, 110 positions at V = 151936 (see module doc).
CHUNK_ELEMENTS = 2**24


def shared_vocab(student_logits: Tensor, teacher_logits: Tensor | None, vocab_size: int | None) -> int:
    """Size of the shared vocabulary V*: ``vocab_size`` if given, else the smaller last dim."""
    dims = [student_logits.shape[-1]] + ([teacher_logits.shape[-1]] if teacher_logits is not None else [])
    if vocab_size is None:
        return min(dims)
    if not 1 <= vocab_size <= min(dims):
        raise ValueError(f"vocab_size must be in [1, {min(dims)}] (the smaller logits last dim), got {vocab_size}")
    return int(vocab_size)


def rows_per_chunk(vocab: int, chunk_size: int | None) -> int:
    """Positions per chunk: ``chunk_size`` if given, else ``2**24 // V`` (at least 1)."""
    if chunk_size is None:
        return max(1, CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")
    return int(chunk_size)


def as_3d(x: Tensor) -> Tensor:
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

    def rows(self, b: Tensor, t: Tensor, vocab: int, out: Tensor | None = None) -> Tensor:
        """``z[b_i, t_i, :V]`` ``[m, V]`` in the head's dtype (one chunk); written straight into ``out`` (``[m, V]``,
        contiguous) when it has the head's dtype and autocast is off: no ``[m, V]`` temporary to fault in and copy
        (at V 151,936 and 256 rows, 0.145 s against 0.189 s a projection on 2 CPU threads)."""
        hidden = self.hidden[b, t].to(self.weight.dtype)
        head = self.weight[:vocab].T
        if out is not None and out.dtype == head.dtype and not torch.is_autocast_enabled(head.device.type):
            return torch.mm(hidden, head, out=out)
        return hidden @ head


def check_temperature_beta(temperature: float, beta: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def compute_dtype(*logits: Tensor) -> torch.dtype:
    """Chunk dtype: bf16/fp16 logits are upcast to float32; float64 stays float64."""
    dtype = torch.float32
    for x in logits:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


@dataclass
class Rows:
    """One chunk of m positions, each ``[m, V]``: student ``log p``/``p``, teacher ``log q``/``q``
    (None when the teacher is not needed), a float scratch and a bool scratch."""

    logp: Tensor
    p: Tensor
    logq: Tensor | None
    q: Tensor | None
    tmp: Tensor
    zero: Tensor


class Workspace:
    """The only full-vocabulary temporaries of a pass: five float ``[rows, V]`` buffers and a bool one."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device, teacher: bool = True):
        def new() -> Tensor:
            return torch.empty(rows, vocab, dtype=dtype, device=device)

        self.logp, self.p, self.tmp = new(), new(), new()
        self.logq, self.q = (new(), new()) if teacher else (None, None)
        self.zero = torch.empty(rows, vocab, dtype=torch.bool, device=device)

    def rows(self, m: int) -> Rows:
        cut = lambda x: x[:m] if x is not None else None  # noqa: E731
        return Rows(cut(self.logp), cut(self.p), cut(self.logq), cut(self.q), cut(self.tmp), cut(self.zero))


def chunks(n: int, rows: int):
    """Slices of ``rows`` consecutive entries of a position list of length n."""
    for start in range(0, n, rows):
        yield slice(start, start + rows)


def gather_rows(out: Tensor, logits: Tensor | HeadLogits, b: Tensor, t: Tensor, vocab: int) -> Tensor:
    """``out[i] = logits[b_i, t_i, :V]`` (upcast): one indexing kernel written straight into out (for
    `HeadLogits`: the chunk's rows computed from the hidden states).

    (``index_select`` per sequence was the obvious alternative; it launches one parallel region per
    row and is ~100x slower on a busy 2-core CPU.) out ``[m, V]``."""
    if isinstance(logits, HeadLogits):
        rows = logits.rows(b, t, vocab, out=out)
        return rows if rows is out else out.copy_(rows)
    src = logits[..., :vocab]  # [B, T, V] view
    if src.dtype == out.dtype:
        return torch.ops.aten.index.Tensor_out(src, [b, t], out=out)
    return out.copy_(src[b, t])  # bf16/fp16: a half-size temporary, then upcast


def _scatter_rows(grad: Tensor, rows: Tensor, b: Tensor, t: Tensor, vocab: int) -> None:
    """``grad[b_i, t_i, :V] = rows[i]`` (cast to grad's dtype), in place."""
    grad[..., :vocab].index_put_((b, t), rows.to(grad.dtype))


def log_softmax_(logp: Tensor, p: Tensor, temperature: float, lse: Tensor | None = None) -> Tensor:
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


def load_rows(
    ws: Workspace,
    b: Tensor,
    t: Tensor,
    student: Tensor,
    teacher: Tensor | None,
    vocab: int,
    temperature: float,
    lse_s: Tensor | None = None,
    lse_t: Tensor | None = None,
):
    """Gather and normalise one chunk of positions: (Rows, lse_s [m], lse_t [m] | None)."""
    r = ws.rows(t.numel())
    lse_s = log_softmax_(gather_rows(r.logp, student, b, t, vocab), r.p, temperature, lse_s)
    if teacher is not None:
        lse_t = log_softmax_(gather_rows(r.logq, teacher, b, t, vocab), r.q, temperature, lse_t)
    return r, lse_s, lse_t


def rows_entropy(r: Rows) -> Tensor:
    """``H = -Σ_v p_v log p_v`` per row, with ``0 · log 0 = 0``. -> [m]."""
    torch.eq(r.p, 0, out=r.zero)
    return -torch.mul(r.p, r.logp, out=r.tmp).masked_fill_(r.zero, 0.0).sum(-1)


def rows_kl(logp_a: Tensor, a: Tensor, logp_b: Tensor, tmp: Tensor, zero: Tensor) -> Tensor:
    """``KL(a‖b) = Σ_v a_v (log a_v - log b_v)`` per row; terms with ``a_v = 0`` are 0. -> [m].

    Leaves ``zero = (a == 0)``."""
    torch.eq(a, 0, out=zero)
    return torch.sub(logp_a, logp_b, out=tmp).mul_(a).masked_fill_(zero, 0.0).sum(-1)


def _log_mixture(logp: Tensor, logq: Tensor, beta: float) -> Tensor:
    """``log m`` with ``m = (1-β)·p + β·q`` (TRL's mixture: β is the teacher's share). [m, V].

    Computed in log space (robust to underflow); the one temporary outside the workspace."""
    return torch.logaddexp(logp + math.log1p(-beta), logq + math.log(beta))


def effective_kind(kind: str, beta: float) -> str:
    """TRL's endpoints of the generalised JSD: β = 0 is ``KL(q‖p)``, β = 1 is ``KL(p‖q)``."""
    if kind == "jsd" and beta == 0.0:
        return "forward_kl"
    if kind == "jsd" and beta == 1.0:
        return "reverse_kl"
    return kind


def rows_value(kind: str, r: Rows, beta: float, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-row ``ℓ`` of the (effective) kind, and ``A = log q(y) - log p(y)`` for the sampled kinds.

    reverse_kl ``KL(p‖q)``; forward_kl ``KL(q‖p)``; jsd (0<β<1) ``β·KL(q‖m) + (1-β)·KL(p‖m)``;
    pg ``-A·log p(y)``; ce ``-log p(y)``; logratio ``|A|``. -> ([m], [m] | None).
    """
    if kind == "reverse_kl":
        return rows_kl(r.logp, r.p, r.logq, r.tmp, r.zero), None
    if kind == "forward_kl":
        return rows_kl(r.logq, r.q, r.logp, r.tmp, r.zero), None
    if kind == "jsd":
        logm = _log_mixture(r.logp, r.logq, beta)
        kl_qm = rows_kl(r.logq, r.q, logm, r.tmp, r.zero)
        return beta * kl_qm + (1.0 - beta) * rows_kl(r.logp, r.p, logm, r.tmp, r.zero), None
    rows = torch.arange(y.numel(), device=y.device)
    logp_y = r.logp[rows, y]
    aux = r.logq[rows, y] - logp_y
    value = -aux * logp_y if kind == "pg" else -logp_y if kind == "ce" else aux.abs()
    return value, aux


def _rows_grad(kind: str, r: Rows, beta: float, value: Tensor, y: Tensor | None, aux: Tensor | None) -> Tensor:
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
        kl_pm = rows_kl(r.logp, r.p, logm, r.tmp, r.zero)  # leaves zero = (p == 0)
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

    forward(logits_or_hidden, head_weight, teacher, b [M], t [M] (row-major), sampled [B,T] | None, kind, τ, β,
    V*, rows, known) -> ℓ [M]. The student is either its logits ``[B,T,Vs]`` (``logits_or_hidden``, with ``head_weight``
    None) or a `HeadLogits` passed as its two tensors, the final hidden states (``logits_or_hidden``) and the LM
    head's weight (``head_weight``), so that autograd sees both; the teacher (logits or `HeadLogits`) comes
    wrapped in `_Const`, as does ``known`` (None, or ``(ℓ, lse_s, lse_t)`` of the rows: no forward pass).
    Saves the inputs by reference and per-row scalars (the two log-normalisers, ℓ, A); backward
    recomputes each chunk's log-probs and writes its gradient into ``zeros_like(logits)``, or, for
    `HeadLogits`, into the hidden states' and the head's gradients, chunk by chunk. The teacher gets no
    gradient.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, logits_or_hidden, head_weight, teacher, b, t, sampled, kind, temperature, beta, vocab, rows, known
    ):
        student = logits_or_hidden if head_weight is None else HeadLogits(logits_or_hidden, head_weight)
        teacher = teacher.value
        dtype = compute_dtype(student, teacher)
        aux = torch.zeros(b.numel(), dtype=dtype, device=student.device)
        if known is not None:  # ℓ and both log-normalisers of these rows, from the token signals' pass
            value, lse_s, lse_t = (x.clone() for x in known.value)
        else:
            value, lse_s, lse_t = (torch.zeros_like(aux) for _ in range(3))
            ws = Workspace(min(rows, b.numel()), vocab, dtype, student.device)
            for sl in chunks(b.numel(), rows):
                r, lse_s[sl], lse_t[sl] = load_rows(ws, b[sl], t[sl], student, teacher, vocab, temperature)
                y = sampled[b[sl], t[sl]] if sampled is not None else None
                value[sl], a = rows_value(kind, r, beta, y)
                if a is not None:
                    aux[sl] = a
        ctx.save_for_backward(logits_or_hidden, head_weight, b, t, sampled, lse_s, lse_t, value, aux)
        ctx.teacher = teacher
        ctx.cfg = (kind, temperature, beta, vocab, rows)
        return value

    @staticmethod
    def backward(ctx, grad_value):  # type: ignore[override]
        logits_or_hidden, head_weight, b, t, sampled, lse_s, lse_t, value, aux = ctx.saved_tensors
        teacher = ctx.teacher
        kind, temperature, beta, vocab, rows = ctx.cfg
        none = (None,) * 10
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return (None, None) + none
        head = HeadLogits(logits_or_hidden, head_weight) if head_weight is not None else None
        student = head if head is not None else logits_or_hidden
        if head is None:
            grad = torch.zeros_like(logits_or_hidden)  # [B, T, Vs]; padding rows and unselected positions stay 0
        else:  # the hidden states' gradient, and the head's (in float32 when the head is half precision)
            grad_h = torch.zeros_like(logits_or_hidden)
            acc = torch.float32 if head_weight.dtype in (torch.float16, torch.bfloat16) else head_weight.dtype
            grad_w = torch.zeros(head_weight.shape, dtype=acc, device=head_weight.device)
        scale = grad_value / temperature  # [M]
        needs_teacher = kind in ("reverse_kl", "forward_kl", "jsd")
        ws = Workspace(
            min(rows, b.numel()), vocab, compute_dtype(student, teacher), logits_or_hidden.device, teacher=needs_teacher
        )
        for sl in chunks(b.numel(), rows):
            r, _, _ = load_rows(
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
        return (grad_h, grad_w.to(head_weight.dtype)) + none


def chunked_token_loss(student, teacher, b, t, y, kind, temperature, beta, vocab, rows, known=None) -> Tensor:
    """`_ChunkedTokenLoss` on logits or `HeadLogits` (student and teacher alike): ℓ [M].

    ``known``: ``(ℓ, lse_s, lse_t)`` of these rows ``[M]`` each, already computed at the same temperature
    (`token_signals`, for the reverse KL): the forward then projects and normalises nothing; backward is unchanged.
    It is taken only when the backward's rows will be the same numbers: in the pass's compute dtype (not a float32
    KL for a float64 pass), and not from an LM head under autocast, whose bf16 rows may round differently when
    the backward projects them in other chunks than the signals' pass did.
    """
    logits_or_hidden, head_weight = (
        (student.hidden, student.weight) if isinstance(student, HeadLogits) else (student, None)
    )
    heads = [x for x in (student, teacher) if isinstance(x, HeadLogits)]
    if known is not None and (
        any(x.dtype != compute_dtype(student, teacher) for x in known)
        or any(torch.is_autocast_enabled(x.device.type) for x in heads)
    ):
        known = None
    return _ChunkedTokenLoss.apply(
        logits_or_hidden,
        head_weight,
        _Const(teacher),
        b,
        t,
        y,
        kind,
        temperature,
        beta,
        vocab,
        rows,
        None if known is None else _Const(known),
    )


def check_sampled(
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


def all_positions(shape: torch.Size, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row-major ``(b, t)`` of every position of a ``[B, T]`` grid."""
    return torch.ones(shape, dtype=torch.bool, device=device).nonzero(as_tuple=True)
