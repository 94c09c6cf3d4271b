"""Which tokens count (README.md "The objective", steps 1-3): decisions, evidence and each token's weight.

All inputs are ``[B, T]`` (hidden ``[B, T, H]``); every function ignores masked positions. The building
blocks (`select_decisions`, `evidence_similarity`, `score_evidence`, `evidence_pool`, `select_evidence`,
`select_tip`, `select_random`) are small pure functions, each tested against a naive reference; the
selectors a method names (`selector_all`, `selector_entropy`, `selector_dear`, `selector_tip`,
`selector_random`) compose them and are registered with their knobs in `dear.config.methods`;
`select_tokens` runs the one a method names. `selection_stats` is the per-step diagnostics.
Counts, ties and masks follow the conventions in `dear.objective`.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dear.config import methods
from dear.config.types import Aggregation, Boost, DecisionMode, Direction, EvidencePool, Scope, Similarity
from dear.objective.chunked import check_choice
from dear.objective.signals import Signals

BOOSTS: tuple[str, ...] = typing.get_args(Boost)  # evidence score forms
EVIDENCE_POOLS: tuple[str, ...] = typing.get_args(EvidencePool)  # what the evidence count is a share of
DECISION_MODES: tuple[str, ...] = typing.get_args(DecisionMode)
SCOPES: tuple[str, ...] = typing.get_args(Scope)
AGGREGATIONS: tuple[str, ...] = typing.get_args(Aggregation)
DIRECTIONS: tuple[str, ...] = typing.get_args(Direction)
SIMILARITIES: tuple[str, ...] = typing.get_args(Similarity)

# Slack in ⌈ρ·T⌉ so that float rounding of an exact decimal product (0.14·50 = 7.000000000000001)
# does not add a token.
_CEIL_SLACK = 1e-9

_COS_EPS = 1e-8


def _ceil_count(ratio: float, n: Tensor) -> Tensor:
    """``⌈ratio · n⌉`` as long, elementwise over a count tensor ``n``."""
    return torch.ceil(n.double() * ratio - _CEIL_SLACK).clamp_min(0).long()


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
    check_choice("scope", scope, SCOPES)
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
    check_choice("mode", mode, DECISION_MODES)
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
    check_choice("agg", agg, AGGREGATIONS)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("similarity", similarity, SIMILARITIES)
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
    check_choice("boost", boost, BOOSTS)
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
    check_choice("evidence_pool", pool, EVIDENCE_POOLS)
    return mask & ~decision if pool == "remaining" else mask


_evidence_pool = evidence_pool  # the same function, under a name `selector_dear`'s knob evidence_pool does not shadow


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
    check_choice("evidence_pool", evidence_pool, EVIDENCE_POOLS)
    check_choice("scope", scope, SCOPES)
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
    selector: str,
    knobs: Mapping[str, Any],
    *,
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    generator: torch.Generator | None = None,
) -> Selection:
    """Run the selector registered as ``selector`` (`dear.config.methods`) with its ``knobs``: per-token weights.

    entropy, divergence, mask ``[B, T]`` (mask True on response tokens), hidden ``[B, T, H]`` (the student's
    states at the layer the selector asked for; None when it asked for none). Before the selector runs, the
    mask is made bool and the signals float32 with 0 on masked positions, so masked values (even NaN or
    huge ones) never enter a selection. ``generator``: the random stream of a selector that draws (random).
    """
    if tuple(entropy.shape) != tuple(mask.shape) or tuple(divergence.shape) != tuple(mask.shape):
        raise ValueError(
            f"entropy, divergence and mask must all be [B, T], got {tuple(entropy.shape)}, "
            f"{tuple(divergence.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    entropy = entropy.float().masked_fill(~mask, 0.0)
    divergence = divergence.float().masked_fill(~mask, 0.0)
    spec = methods.get(selector)
    return spec.select()(entropy, divergence, hidden, mask, generator=generator, **spec.function_knobs(knobs))


# ---------------------------------------------------------------------------------------------
# The selectors dear ships, registered in dear/config/methods.py. Each takes the masked signals of
# `select_tokens` (entropy, divergence, mask [B, T], hidden [B, T, H] or None) and its knobs by name.
# ---------------------------------------------------------------------------------------------


def _nothing(mask: Tensor) -> Tensor:
    return torch.zeros_like(mask)


def selector_all(
    entropy: Tensor, divergence: Tensor, hidden: Tensor | None, mask: Tensor, *, generator=None
) -> Selection:
    """OPD: every response token, weight 1."""
    return Selection(weights=mask.float(), decision=_nothing(mask), evidence=_nothing(mask))


def selector_entropy(
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    *,
    generator=None,
    decision_ratio: float,
    mode: str,
    h_min: float | None,
    scope: str,
) -> Selection:
    """Decisions only (`select_decisions`), weight 1."""
    decision = select_decisions(entropy, mask, ratio=decision_ratio, mode=mode, h_min=h_min, scope=scope)
    return Selection(weights=decision.float(), decision=decision, evidence=_nothing(mask))


def selector_dear(
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    *,
    generator=None,
    decision_ratio: float,
    evidence_ratio: float,
    mode: str,
    h_min: float | None,
    scope: str,
    agg: str,
    direction: str,
    window: int | None,
    boost: str,
    lam: float,
    evidence_pool: str,
    confident_only: bool,
    similarity: str,
    w_dec: float,
    w_evi: float,
    w_other: float,
) -> Selection:
    """DEAR: decisions (`select_decisions`), then evidence among the non-decisions (the candidates; with
    ``confident_only`` only those with ``H_t ≤`` the sequence median), scored by `evidence_similarity` and
    `score_evidence` and counted over `evidence_pool`; weights ``w_dec``/``w_evi``/``w_other``."""
    decision = select_decisions(entropy, mask, ratio=decision_ratio, mode=mode, h_min=h_min, scope=scope)
    candidates = mask & ~decision
    if confident_only:
        candidates = candidates & (entropy <= _sequence_median(entropy, mask)[:, None])
    if evidence_ratio > 0:
        sim = evidence_similarity(
            hidden, decision, mask, agg=agg, direction=direction, window=window, similarity=similarity
        )
        score = score_evidence(sim, divergence, candidates, mask, boost=boost, lam=lam)
        pool = _evidence_pool(mask, decision, evidence_pool)
        evidence = select_evidence(score, pool, ratio=evidence_ratio, scope=scope)
    else:  # no evidence requested: skip the similarity (and the need for hidden states)
        score, evidence = None, _nothing(mask)
    other = mask & ~decision & ~evidence
    weights = w_dec * decision.float() + w_evi * evidence.float() + w_other * other.float()
    return Selection(weights=weights, decision=decision, evidence=evidence, score=score)


def selector_tip(
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    *,
    generator=None,
    tip_ratio: float,
    scope: str,
) -> Selection:
    """TIP baseline (`select_tip`), weight 1 on the chosen tokens."""
    chosen, s = select_tip(entropy, divergence, mask, ratio=tip_ratio, scope=scope)
    return Selection(weights=chosen.float(), decision=_nothing(mask), evidence=_nothing(mask), score=s)


def selector_random(
    entropy: Tensor,
    divergence: Tensor,
    hidden: Tensor | None,
    mask: Tensor,
    *,
    generator: torch.Generator | None = None,
    decision_ratio: float,
    evidence_ratio: float,
    scope: str,
    evidence_pool: str,
) -> Selection:
    """Random control (`select_random`): as many tokens as DEAR keeps, uniformly, weight 1."""
    chosen = select_random(
        mask,
        decision_ratio=decision_ratio,
        evidence_ratio=evidence_ratio,
        scope=scope,
        evidence_pool=evidence_pool,
        generator=generator,
    )
    return Selection(weights=chosen.float(), decision=_nothing(mask), evidence=_nothing(mask))


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
