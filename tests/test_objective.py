"""Tests of dear/objective/ against naive references written plainly (README.md "The objective").

The references loop over positions (and vocabulary entries where it is clearer) in float64,
handling ``-inf`` logits by working on each distribution's support only.
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction

import pytest
import torch

from dear.objective import (
    HeadLogits,
    Selection,
    Signals,
    distill_loss,
    select_tokens,
    selection_stats,
    token_divergence,
    token_entropy,
    token_signals,
)

from conftest import method_config

NEG = float("-inf")


def select(method: str, *, entropy, divergence, hidden, mask, generator=None, **overrides) -> Selection:
    """`select_tokens` with conf/method/<method>.yaml and ``overrides``, as dear-train calls it."""
    m = method_config(method, **overrides)
    return select_tokens(
        m.selector,
        m.knobs,
        entropy=entropy,
        divergence=divergence,
        hidden=hidden,
        mask=mask,
        generator=generator,
    )


# ---------------------------------------------------------------------------------------------
# Fixtures: logits with padding, uneven lengths, a length-1 sequence and -inf entries
# ---------------------------------------------------------------------------------------------


def make_mask() -> torch.Tensor:
    """[3, 6]: seq 0 prompt 0-1 then response 2-5; seq 1 a single response token; seq 2 padding."""
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 2:] = True
    mask[1, 5] = True
    mask[2, 1:4] = True
    return mask


def make_logits(seed: int, vocab: int = 9, teacher_extra: int = 3, student_only_inf: bool = True):
    """Student [3, 6, V], teacher [3, 6, V + extra] with -inf columns and huge teacher padding rows."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(3, 6, vocab, generator=g) * 2.0
    zt = torch.randn(3, 6, vocab + teacher_extra, generator=g) * 2.0
    zt[..., vocab:] = 40.0  # padding rows: would dominate q if they were compared
    zs[..., 1] = NEG  # a token both models rule out
    zt[..., 1] = NEG
    zs[0, 3] = 0.0  # a uniform student row (all-equal logits) over the 8 finite entries
    zs[0, 3, 1] = NEG
    zs[2, 2, :] = NEG  # a one-hot student row
    zs[2, 2, 4] = 0.5
    zt[2, 2, 4] = 3.0
    if student_only_inf:
        zs[0, 4, 6] = NEG  # p = 0 where q > 0: finite for reverse KL / JSD, infinite for forward KL
    else:  # forward KL needs supp(q) ⊆ supp(p)
        zt[..., :vocab][torch.isinf(zs)] = NEG
    return zs, zt


def sampled_for(zs: torch.Tensor, seed: int) -> torch.Tensor:
    """Sampled ids on the student's support (what a rollout would produce)."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(zs.double(), -1).reshape(-1, zs.shape[-1])
    return torch.multinomial(probs, 1, generator=g).reshape(zs.shape[:-1])


def support(z: torch.Tensor) -> list[int]:
    return [v for v in range(z.shape[0]) if math.isfinite(float(z[v].detach()))]


def naive_log_probs(z: torch.Tensor, tau: float) -> dict[int, torch.Tensor]:
    """log softmax(z/τ) on the support of z, as {vocab id: 0-dim tensor} (keeps autograd)."""
    idx = support(z)
    scaled = [z[v] / tau for v in idx]
    lse = torch.logsumexp(torch.stack(scaled), 0)
    return {v: s - lse for v, s in zip(idx, scaled)}


def naive_token(
    zs: torch.Tensor, zt: torch.Tensor, kind: str, tau: float = 1.0, beta: float = 0.5, y: int | None = None
) -> torch.Tensor:
    """One position's ℓ in float64 (zs may require grad; zt already sliced to V*)."""
    lp, lq = naive_log_probs(zs, tau), naive_log_probs(zt, tau)
    if kind == "jsd" and beta == 0.0:
        kind = "forward_kl"
    if kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "entropy":
        return -sum(lp[v].exp() * lp[v] for v in lp)
    if kind == "reverse_kl":
        return sum(lp[v].exp() * (lp[v] - lq[v]) for v in lp)
    if kind == "forward_kl":
        return sum(lq[v].exp() * (lq[v] - lp[v]) for v in lq)
    if kind == "jsd":

        def log_m(v):
            pv = lp[v].exp() if v in lp else 0.0
            qv = lq[v].exp() if v in lq else 0.0
            return torch.log((1 - beta) * pv + beta * qv)

        kl_qm = sum(lq[v].exp() * (lq[v] - log_m(v)) for v in lq)
        kl_pm = sum(lp[v].exp() * (lp[v] - log_m(v)) for v in lp)
        return beta * kl_qm + (1 - beta) * kl_pm
    if kind == "logratio":
        return (lp[y] - lq[y]).abs()
    if kind == "pg":
        advantage = (lq[y] - lp[y]).detach()
        return -advantage * lp[y]
    if kind == "ce":
        return -lp[y]
    raise AssertionError(kind)


def naive_loss(zs, zt, weights, mask, kind, normalize, tau=1.0, beta=0.5, y=None, vocab=None):
    """Σ w ℓ over masked-in positions with the given normalisation, float64, loops."""
    vocab = vocab or min(zs.shape[-1], zt.shape[-1])
    B, T = weights.shape
    per_seq, total = [], 0.0
    for i in range(B):
        seq = 0.0
        for t in range(T):
            w = float(weights[i, t])
            if not mask[i, t] or w == 0:
                continue
            yt = int(y[i, t]) if y is not None else None
            seq = seq + w * naive_token(zs[i, t, :vocab], zt[i, t, :vocab], kind, tau, beta, yt)
        total = total + seq
        n_i = int(mask[i].sum())
        if n_i:
            per_seq.append(seq / n_i)
    if normalize == "selected":
        return total / sum(float(weights[i, t]) for i in range(B) for t in range(T) if mask[i, t])
    if normalize == "all":
        return total / int(mask.sum())
    return sum(per_seq) / len(per_seq)


def naive_grad(zs, zt, weights, mask, kind, normalize, **kw):
    x = zs.detach().double().requires_grad_()
    loss = naive_loss(x, zt.double(), weights.double(), mask, kind, normalize, **kw)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------
# 1. Signals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_entropy_matches_naive(tau, dtype):
    zs, _ = make_logits(0)
    zs = zs.to(dtype)
    got = token_entropy(zs, tau, chunk_size=4)
    assert got.shape == (3, 6) and got.dtype == torch.float32 and not got.requires_grad
    ref = torch.tensor(
        [
            [float(naive_token(zs[i, t].double(), zs[i, t].double(), "entropy", tau)) for t in range(6)]
            for i in range(3)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    assert got[0, 3] == pytest.approx(math.log(8), abs=1e-5)  # uniform over the 8 finite logits
    assert got[2, 2] == 0.0  # one-hot row
    # any leading shape, and vocab_size slicing
    torch.testing.assert_close(token_entropy(zs[0, 2], tau), got[0, 2])
    torch.testing.assert_close(token_entropy(zs.reshape(18, -1), tau), got.reshape(18))
    torch.testing.assert_close(token_entropy(zs[None], tau)[0], got)
    sliced = token_entropy(zs, tau, vocab_size=5)
    torch.testing.assert_close(sliced, token_entropy(zs[..., :5], tau))


DIVERGENCE_CASES = [
    ("reverse_kl", 0.5),
    ("forward_kl", 0.5),
    ("jsd", 0.3),
    ("jsd", 0.0),
    ("jsd", 1.0),
    ("logratio", 0.5),
]


@pytest.mark.parametrize("kind,beta", DIVERGENCE_CASES)
@pytest.mark.parametrize("tau", [1.0, 1.7])
def test_token_divergence_value_and_grad(kind, beta, tau):
    student_only_inf = kind not in ("forward_kl",) and not (kind == "jsd" and beta == 0.0)
    zs, zt = make_logits(1, student_only_inf=student_only_inf)
    y = sampled_for(zs, 1)
    x = zs.clone().requires_grad_()
    got = token_divergence(x, zt, kind, tau, beta, sampled_ids=y, chunk_size=5)
    assert got.shape == (3, 6)
    coef = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((got * coef).sum(), x)

    xr = zs.double().requires_grad_()
    ref = torch.stack(
        [
            torch.stack([naive_token(xr[i, t], zt[i, t, :9].double(), kind, tau, beta, int(y[i, t])) for t in range(6)])
            for i in range(3)
        ]
    )
    (ref_grad,) = torch.autograd.grad((ref * coef.double()).sum(), xr)
    torch.testing.assert_close(got.double(), ref.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=2e-5, rtol=1e-5)
    assert torch.isfinite(grad).all()
    assert (grad[..., 1] == 0).all()  # -inf logits get exactly zero gradient


def test_token_divergence_is_infinite_where_support_is_violated():
    zs, zt = make_logits(2)
    d = token_divergence(zs, zt, "forward_kl")
    assert math.isinf(float(d[0, 4]))  # q > 0 where p = 0
    assert torch.isfinite(token_divergence(zs, zt, "reverse_kl")).all()


@pytest.mark.parametrize(
    "divergence,beta", [("reverse_kl", 0.5), ("jsd", 0.25), ("logratio", 0.5), ("forward_kl", 0.5)]
)
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_token_signals_matches_naive(divergence, beta, chunk_size):
    zs, zt = make_logits(3, student_only_inf=divergence != "forward_kl")
    mask = make_mask()
    y = sampled_for(zs, 3)
    y[~mask] = -100  # ids on masked positions are never used
    tau = 0.8
    sig = token_signals(
        zs, zt, mask, sampled_ids=y, divergence=divergence, temperature=tau, beta=beta, chunk_size=chunk_size
    )
    assert isinstance(sig, Signals)
    for i in range(3):
        for t in range(6):
            if not mask[i, t]:
                assert sig.entropy[i, t] == 0 and sig.divergence[i, t] == 0 and sig.reverse_kl[i, t] == 0
                assert sig.grad_norm[i, t] == 0
                assert sig.student_argmax[i, t] == 0 and sig.teacher_argmax[i, t] == 0
                continue
            s, q = zs[i, t].double(), zt[i, t, :9].double()
            yt = int(y[i, t])
            assert float(sig.entropy[i, t]) == pytest.approx(float(naive_token(s, q, "entropy", tau)), abs=1e-5)
            assert float(sig.reverse_kl[i, t]) == pytest.approx(float(naive_token(s, q, "reverse_kl", tau)), abs=1e-5)
            ref_d = float(naive_token(s, q, divergence, tau, beta, yt))
            assert float(sig.divergence[i, t]) == pytest.approx(ref_d, abs=1e-5)
            # ‖∂KL(p‖q)/∂(z/τ)‖₂ by autograd on the support (off-support entries have zero gradient)
            s_req = s.clone().requires_grad_(True)
            naive_token(s_req, q, "reverse_kl", tau).backward()
            ref_g = float((s_req.grad * tau).norm())
            assert float(sig.grad_norm[i, t]) == pytest.approx(ref_g, rel=1e-4, abs=1e-6)
            assert int(sig.student_argmax[i, t]) == max(range(9), key=lambda v: (float(s[v]), -v))
            assert int(sig.teacher_argmax[i, t]) == max(range(9), key=lambda v: (float(q[v]), -v))
    assert sig.student_argmax.dtype == torch.long


def test_qwen_head_pair_is_sliced_to_the_shared_vocabulary():
    """Student head 151936 rows, teacher 152064: padding rows must never be compared."""
    g = torch.Generator().manual_seed(4)
    zs = torch.randn(2, 3, 151936, generator=g)
    zt = torch.randn(2, 3, 152064, generator=g)
    zt[..., 151936:] = 60.0  # if compared, q would sit entirely on padding rows
    mask = torch.tensor([[True, True, False], [False, True, True]])
    lp = torch.log_softmax(zs.double(), -1)
    lq = torch.log_softmax(zt[..., :151936].double(), -1)
    ref_kl = (lp.exp() * (lp - lq)).sum(-1)
    sig = token_signals(zs, zt, mask)
    torch.testing.assert_close(sig.reverse_kl.double(), ref_kl * mask, atol=1e-5, rtol=1e-5)
    assert (sig.teacher_argmax[mask] < 151936).all()

    x = zs.clone().requires_grad_()
    loss, _ = distill_loss(x, zt, mask.float())
    loss.backward()
    assert x.grad.shape == zs.shape
    torch.testing.assert_close(loss.double(), ref_kl[mask].mean(), atol=1e-5, rtol=1e-5)
    # an explicit smaller V*: columns beyond it get zero gradient and do not enter the loss
    x.grad = None
    loss_small, _ = distill_loss(x, zt, mask.float(), vocab_size=151000)
    loss_small.backward()
    assert (x.grad[..., 151000:] == 0).all() and x.grad[..., :151000].abs().sum() > 0
    lp, lq = torch.log_softmax(zs[..., :151000].double(), -1), torch.log_softmax(zt[..., :151000].double(), -1)
    torch.testing.assert_close(loss_small.double(), (lp.exp() * (lp - lq)).sum(-1)[mask].mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="vocab_size"):
        distill_loss(x, zt, mask.float(), vocab_size=152064)


# ---------------------------------------------------------------------------------------------
# 3. Loss
# ---------------------------------------------------------------------------------------------


def make_weights(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(3, 6, generator=g) + 0.5
    w[0, 5] = 0.0  # a response position that is not selected
    w[0, 0] = 7.0  # a prompt position with weight: must be ignored under the mask
    return w


@pytest.mark.parametrize("normalize", ["selected", "all", "sequence"])
@pytest.mark.parametrize(
    "kind,beta", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.4), ("pg", 0.5), ("ce", 0.5)]
)
def test_distill_loss_value_and_grad(kind, beta, normalize):
    zs, zt = make_logits(5, student_only_inf=kind != "forward_kl")
    mask = make_mask()
    weights = make_weights(5)
    y = sampled_for(zs, 5)
    tau = 1.7
    x = zs.clone().requires_grad_()
    loss, stats = distill_loss(
        x,
        zt,
        weights,
        kind=kind,
        sampled_ids=y,
        mask=mask,
        normalize=normalize,
        temperature=tau,
        beta=beta,
        chunk_size=3,
    )
    (grad,) = torch.autograd.grad(loss, x)
    ref, ref_grad = naive_grad(zs, zt, weights, mask, kind, normalize, tau=tau, beta=beta, y=y)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(float(ref), abs=1e-5, rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-5)
    # unselected, prompt and padding positions get exactly zero gradient
    assert (grad[~mask] == 0).all() and (grad[0, 5] == 0).all()
    assert float(stats["loss"]) == pytest.approx(loss.item())
    assert float(stats["selected_frac"]) == pytest.approx(7 / 8)  # 8 response tokens, one with w = 0
    assert float(stats["n_selected"]) == 7


@pytest.mark.parametrize("normalize", ["selected", "sequence"])
@pytest.mark.parametrize(
    "kind,beta", [("reverse_kl", 0.5), ("forward_kl", 0.5), ("jsd", 0.4), ("pg", 0.5), ("ce", 0.5)]
)
def test_head_logits_match_naive(kind, beta, normalize):
    """Logits that never exist whole (`HeadLogits`: hidden states and the LM head, a chunk of rows at a
    time) give the naive loss, and the gradient reaches hidden states and head by the chain rule."""
    g = torch.Generator().manual_seed(11)
    h, w = torch.randn(3, 6, 4, generator=g), torch.randn(9, 4, generator=g)  # student: V = 9
    th, tw = torch.randn(3, 6, 5, generator=g), torch.randn(12, 5, generator=g)  # teacher head padded to 12
    zs, zt = h @ w.T, th @ tw.T
    mask, weights, y = make_mask(), make_weights(5), sampled_for(zs, 5)
    hx, wx = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss, _ = distill_loss(
        HeadLogits(hx, wx),
        HeadLogits(th, tw),
        weights,
        kind=kind,
        sampled_ids=y,
        mask=mask,
        normalize=normalize,
        temperature=1.3,
        beta=beta,
        chunk_size=4,
    )
    grad_h, grad_w = torch.autograd.grad(loss, [hx, wx])
    ref, ref_grad = naive_grad(zs, zt, weights, mask, kind, normalize, tau=1.3, beta=beta, y=y)
    assert loss.item() == pytest.approx(float(ref), abs=1e-5, rel=1e-5)
    torch.testing.assert_close(grad_h.double(), ref_grad @ w.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_w.double(), torch.einsum("btv,bth->vh", ref_grad, h.double()), atol=1e-5, rtol=1e-5)
    sig = token_signals(HeadLogits(h, w), HeadLogits(th, tw), mask, chunk_size=4)
    ref_sig = token_signals(zs, zt, mask)
    for name in ("entropy", "reverse_kl", "grad_norm", "student_argmax", "teacher_argmax"):
        torch.testing.assert_close(getattr(sig, name), getattr(ref_sig, name), atol=1e-5, rtol=1e-5)


def test_distill_loss_default_mask_and_temperature_one():
    zs, zt = make_logits(6)
    weights = make_weights(6) * make_mask()
    x = zs.clone().requires_grad_()
    loss, stats = distill_loss(x, zt, weights)  # mask defaults to weights > 0, reverse KL, selected
    loss.backward()
    ref, ref_grad = naive_grad(zs, zt, weights, weights > 0, "reverse_kl", "selected")
    assert loss.item() == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_grad, atol=1e-5, rtol=1e-5)
    assert float(stats["selected_frac"]) == 1.0


@pytest.mark.parametrize("normalize", ["selected", "all", "sequence"])
def test_distill_loss_with_a_sequence_without_response_tokens(normalize):
    zs, zt = make_logits(11)
    mask = make_mask()
    mask[1] = False  # e.g. a rollout truncated to nothing
    weights = make_weights(11)
    x = zs.clone().requires_grad_()
    loss, _ = distill_loss(x, zt, weights, mask=mask, normalize=normalize)
    loss.backward()
    ref, ref_grad = naive_grad(zs, zt, weights, mask, "reverse_kl", normalize)
    assert loss.item() == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_grad, atol=1e-5, rtol=1e-5)
    assert (x.grad[1] == 0).all()


def test_logits_views_need_no_copy_and_route_the_gradient():
    """``logits[:, :-1]`` (the positions that predict y) is a non-contiguous view: same loss, and
    the gradient reaches the base tensor's rows only."""
    zs, zt = make_logits(12)
    base = torch.cat([zs, torch.randn(3, 1, 9)], dim=1).requires_grad_()  # [3, 7, 9]
    mask, weights = make_mask(), make_weights(12)
    loss, _ = distill_loss(base[:, :-1], zt, weights, mask=mask, temperature=0.9)
    loss.backward()
    ref, ref_grad = naive_grad(zs, zt, weights, mask, "reverse_kl", "selected", tau=0.9)
    assert loss.item() == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(base.grad[:, :-1].double(), ref_grad, atol=1e-5, rtol=1e-5)
    assert (base.grad[:, -1] == 0).all()


def test_distill_loss_bf16_inputs():
    zs, zt = make_logits(7)
    zs, zt = zs.bfloat16(), zt.bfloat16()
    mask = make_mask()
    x = zs.clone().requires_grad_()
    loss, _ = distill_loss(x, zt, mask.float())
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    ref, ref_grad = naive_grad(zs.double(), zt.double(), mask.float(), mask, "reverse_kl", "selected")
    assert loss.item() == pytest.approx(float(ref), abs=1e-5)
    torch.testing.assert_close(x.grad.double(), ref_grad, atol=1e-2, rtol=1e-2)  # bf16 grad storage


def test_distill_loss_empty_selection_is_zero_with_zero_grad():
    zs, zt = make_logits(8)
    x = zs.clone().requires_grad_()
    loss, stats = distill_loss(x, zt, torch.zeros(3, 6), mask=make_mask())
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all() and float(stats["selected_frac"]) == 0.0


def test_sampled_ids_out_of_range_on_used_positions_is_an_error():
    zs, zt = make_logits(9)
    mask = make_mask()
    y = sampled_for(zs, 9)
    y[~mask] = -100
    distill_loss(zs, zt, mask.float(), kind="pg", sampled_ids=y)  # fine: -100 only where w = 0
    y[0, 2] = 9
    with pytest.raises(ValueError, match=r"sampled_ids must lie in \[0, 9\)"):
        distill_loss(zs, zt, mask.float(), kind="pg", sampled_ids=y)


def _trl_jsd():
    pytest.importorskip("trl")
    try:
        with warnings.catch_warnings():  # "importing from trl.experimental" is expected here
            warnings.simplefilter("ignore")
            from trl.experimental.gkd.gkd_trainer import GKDTrainer
    except ImportError:  # older TRL kept the GKD trainer out of experimental
        from trl.trainer.gkd_trainer import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_matches_trl_generalized_jsd(tau):
    """reverse KL == TRL beta=1; our jsd(β) == TRL jsd(β) incl. β = 0 (forward KL) — same convention."""
    generalized_jsd_loss = _trl_jsd()
    g = torch.Generator().manual_seed(10)
    zs, zt = torch.randn(2, 7, 50, generator=g) * 3, torch.randn(2, 7, 50, generator=g) * 3
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    labels = torch.where(mask, 1, -100)
    trl_rkl = generalized_jsd_loss(zs, zt, labels=labels, beta=1.0, temperature=tau)
    ours, _ = distill_loss(zs, zt, mask.float(), temperature=tau)
    assert float(ours) == pytest.approx(float(trl_rkl), abs=1e-5)
    assert float(token_divergence(zs, zt, temperature=tau)[mask].mean()) == pytest.approx(float(trl_rkl), abs=1e-5)
    for beta in (0.0, 0.3, 0.5, 0.9):
        trl = generalized_jsd_loss(zs, zt, labels=labels, beta=beta, temperature=tau)
        ours, _ = distill_loss(zs, zt, mask.float(), kind="jsd", beta=beta, temperature=tau)
        assert float(ours) == pytest.approx(float(trl), abs=1e-5), beta
        # gradient too: TRL's loss is plain autograd
        a = zs.clone().requires_grad_()
        b = zs.clone().requires_grad_()
        (ga,) = torch.autograd.grad(generalized_jsd_loss(a, zt, labels=labels, beta=beta, temperature=tau), a)
        (gb,) = torch.autograd.grad(distill_loss(b, zt, mask.float(), kind="jsd", beta=beta, temperature=tau)[0], b)
        torch.testing.assert_close(gb, ga, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# 2. Selection: a naive per-sequence loop of §2
# ---------------------------------------------------------------------------------------------


def ceil_ratio(ratio: float, n: int) -> int:
    return math.ceil(Fraction(str(ratio)) * n)  # exact decimal semantics: 0.7 · 10 = 7


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(a @ b) / (max(float(a.norm()), 1e-8) * max(float(b.norm()), 1e-8))


def naive_select(
    H,
    D,
    h,
    mask,
    decision_ratio=0.2,
    evidence_ratio=0.2,
    mode="topk",
    h_min=None,
    scope="sequence",
    agg="max",
    direction="both",
    window=None,
    boost="normalized",
    lam=1.0,
    confident_only=False,
    similarity="cosine",
    w_dec=1.0,
    w_evi=1.0,
    w_other=0.0,
    evidence_pool="remaining",
):
    """Returns (decision set, evidence set, weights dict) with (i, t) keys."""
    B, T = mask.shape
    pos = {i: [t for t in range(T) if mask[i, t]] for i in range(B)}
    Hf = {(i, t): float(H[i, t]) for i in range(B) for t in pos[i]}
    Df = {(i, t): float(D[i, t]) for i in range(B) for t in pos[i]}
    # 1. decisions
    if mode == "threshold":
        dec = {k for k, v in Hf.items() if v >= h_min}
    elif scope == "sequence":
        dec = set()
        for i in range(B):
            ranked = sorted(pos[i], key=lambda t: (-Hf[i, t], t))
            dec |= {(i, t) for t in ranked[: ceil_ratio(decision_ratio, len(pos[i]))]}
    else:
        ranked = sorted(Hf, key=lambda k: (-Hf[k], k))
        dec = set(ranked[: ceil_ratio(decision_ratio, len(ranked))])
    # 2. evidence score
    score = {}
    for i in range(B):
        n = len(pos[i])
        if n == 0:
            continue
        median = sorted(Hf[i, t] for t in pos[i])[(n - 1) // 2]
        mean_d = sum(Df[i, t] for t in pos[i]) / n
        decs = [t for t in pos[i] if (i, t) in dec]
        raw = {}
        for t in pos[i]:
            if (i, t) in dec or (confident_only and Hf[i, t] > median):
                continue
            allowed = [
                d
                for d in decs
                if (direction != "before" or t < d)
                and (direction != "after" or t > d)
                and (window is None or abs(t - d) <= window)
            ]
            if not allowed:
                continue  # no decision to support: never evidence
            sims = [1.0 if similarity == "none" else cosine(h[i, t], h[i, d]) for d in allowed]
            raw[t] = max(sims) if agg == "max" else sum(sims) / len(sims)

        def norm(vals, constant=0.0):  # min-max over this sequence's competing candidates
            lo, hi = min(vals.values(), default=0), max(vals.values(), default=0)
            return {t: (v - lo) / (hi - lo) if hi > lo else constant for t, v in vals.items()}

        if boost == "multiplicative":
            s = {t: raw[t] * (1 + lam * (Df[i, t] / mean_d if mean_d > 0 else 0.0)) for t in raw}
        elif boost == "additive":
            ns, nd = norm(raw), norm({t: Df[i, t] for t in raw})
            s = {t: ns[t] + lam * nd[t] for t in raw}
        elif boost == "normalized":
            ns, nd = norm(raw, constant=1.0), norm({t: Df[i, t] for t in raw})
            s = {t: ns[t] * (1 + lam * nd[t]) for t in raw}
        else:
            s = raw
        score.update({(i, t): v for t, v in s.items()})

    # 3. evidence: a share of the non-decisions ("remaining") or of every response token ("all")
    def pool(keys):
        return len([k for k in keys if evidence_pool == "all" or k not in dec])

    if scope == "sequence":
        evi = set()
        for i in range(B):
            ranked = sorted([t for t in pos[i] if (i, t) in score], key=lambda t: (-score[i, t], t))
            evi |= {(i, t) for t in ranked[: ceil_ratio(evidence_ratio, pool([(i, t) for t in pos[i]]))]}
    else:
        ranked = sorted(score, key=lambda k: (-score[k], k))
        evi = set(ranked[: ceil_ratio(evidence_ratio, pool(Hf))])
    weights = {k: (w_dec if k in dec else w_evi if k in evi else w_other) for k in Hf}
    return dec, evi, weights


def make_selection_inputs(seed: int = 0, B: int = 5, T: int = 14, H_dim: int = 6, ties: bool = True):
    """Entropies on a coarse grid (exact ties) or distinct, divergences (one sequence all zero),
    hidden states; huge entropy/divergence and NaN hidden states on masked positions."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, dtype=torch.bool)
    starts, ends = [2, 5, 0, 13, 3], [14, 12, 9, 14, 14]
    for i in range(B):
        mask[i, starts[i] : ends[i]] = True  # seq 3: a single response token
    H = torch.randint(0, 6, (B, T), generator=g).float() / 4 if ties else torch.rand(B, T, generator=g) * 2
    D = torch.rand(B, T, generator=g) * 2
    D[2] = 0.0  # mean divergence 0: the boost must not divide by zero
    hidden = torch.randn(B, T, H_dim, generator=g, dtype=torch.float64)
    H[~mask], D[~mask] = 1e6, 1e6
    hidden[~mask] = float("nan")
    return H, D, hidden, mask


METHOD_KNOBS = {
    "dear": {},
    "dear_nosim": {"similarity": "none"},
    "dear_noboost": {"lam": 0.0},
    "evidence_only": {"w_dec": 0.0},
    "entropy": {"evidence_ratio": 0.0},
    "opd": {"decision_ratio": 0.0, "evidence_ratio": 0.0, "w_other": 1.0},
}

SELECTION_CASES = [
    ("dear", {}),
    ("dear", {"agg": "mean"}),
    ("dear", {"direction": "before"}),
    ("dear", {"direction": "after", "window": 3}),
    ("dear", {"window": 1}),
    ("dear", {"window": 0}),
    ("dear", {"boost": "additive", "lam": 0.5}),
    ("dear", {"boost": "none"}),
    ("dear", {"boost": "multiplicative"}),
    ("dear", {"boost": "multiplicative", "evidence_pool": "all"}),  # the score before issue 11
    ("dear", {"lam": 2.5}),
    ("dear", {"evidence_pool": "all"}),
    ("dear", {"scope": "batch", "evidence_pool": "all"}),
    ("dear", {"mode": "threshold", "h_min": 0.5, "evidence_ratio": 0.45}),
    ("dear_nosim", {"boost": "multiplicative"}),
    ("dear_noboost", {"evidence_pool": "all"}),
    ("dear", {"lam": 3.0, "confident_only": True}),
    ("dear", {"mode": "threshold", "h_min": 1.0}),
    ("dear", {"scope": "batch"}),
    ("dear", {"scope": "batch", "direction": "before", "agg": "mean", "boost": "additive"}),
    ("dear", {"decision_ratio": 0.35, "evidence_ratio": 0.5, "w_other": 0.25, "w_evi": 2.0}),
    ("dear", {"decision_ratio": 0.0}),
    ("dear", {"evidence_ratio": 1.0, "decision_ratio": 0.7}),
    ("dear_nosim", {}),
    ("dear_nosim", {"direction": "before"}),
    ("dear_noboost", {}),
    ("evidence_only", {}),
    ("entropy", {}),
    ("entropy", {"scope": "batch", "decision_ratio": 0.3}),
    ("opd", {}),
]


@pytest.mark.parametrize("method,overrides", SELECTION_CASES)
def test_select_tokens_matches_naive(method, overrides):
    for seed in range(4):
        H, D, hidden, mask = make_selection_inputs(seed, ties=seed < 2)
        sel = select(method, entropy=H, divergence=D, hidden=hidden, mask=mask, **overrides)
        assert isinstance(sel, Selection)
        dec, evi, weights = naive_select(H, D, hidden, mask, **{**METHOD_KNOBS[method], **overrides})
        got_dec = {tuple(k) for k in sel.decision.nonzero().tolist()}
        got_evi = {tuple(k) for k in sel.evidence.nonzero().tolist()}
        assert got_dec == dec
        assert got_evi == evi
        assert not (sel.decision & sel.evidence).any()
        ref_w = torch.zeros(mask.shape)
        for k, w in weights.items():
            ref_w[k] = w
        torch.testing.assert_close(sel.weights, ref_w)
        assert (sel.weights[~mask] == 0).all() and not sel.decision[~mask].any() and not sel.evidence[~mask].any()


def test_default_dear_selects_the_documented_counts():
    """The paper's counts: ⌈ρ_d·T⌉ decisions, then ⌈ρ_e·(T − ⌈ρ_d·T⌉)⌉ evidence (36% of 100 kept)."""
    H, D, hidden, mask = make_selection_inputs(1)
    sel = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask)
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        n_dec = math.ceil(0.2 * n)
        assert int(sel.decision[i].sum()) == n_dec
        assert int(sel.evidence[i].sum()) == math.ceil(0.2 * (n - n_dec))
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 100, dtype=torch.bool)
    H, D, hidden = torch.rand(3, 100, generator=g), torch.rand(3, 100, generator=g), torch.randn(3, 100, 4, generator=g)
    kept = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask).weights.sum(-1)
    assert kept.tolist() == [36.0] * 3
    old = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask, evidence_pool="all").weights.sum(-1)
    assert old.tolist() == [40.0] * 3


@pytest.mark.parametrize("pool", ["remaining", "all"])
@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_random_picks_as_many_tokens_as_dear(pool, scope):
    H, D, hidden, mask = make_selection_inputs(0, ties=False)
    knobs = dict(evidence_pool=pool, scope=scope, decision_ratio=0.3, evidence_ratio=0.4)
    dear = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask, **knobs)
    rand = select(
        "random", entropy=H, divergence=D, hidden=None, mask=mask, generator=torch.Generator().manual_seed(0), **knobs
    )
    dim = -1 if scope == "sequence" else None
    n_dear = (dear.decision | dear.evidence).sum(dim) if dim else (dear.decision | dear.evidence).sum()
    n_rand = (rand.weights > 0).sum(dim) if dim else (rand.weights > 0).sum()
    assert torch.equal(n_dear, n_rand)


def test_normalized_score_is_relevance_times_one_plus_divergence():
    """One sequence worked by hand: relevance min-max over the candidates, then â·(1 + λ·δ̂)."""
    from dear.objective import score_evidence

    sim = torch.tensor([[0.9, 0.5, 0.1, 0.3, NEG]])  # position 0 is a decision (not a candidate)
    div = torch.tensor([[5.0, 1.0, 3.0, 2.0, 9.0]])  # D at the decision and the padding must not count
    mask = torch.tensor([[True, True, True, True, False]])
    cand = torch.tensor([[False, True, True, True, False]])
    got = score_evidence(sim, div, cand, mask, boost="normalized", lam=1.0)
    # â over {0.5, 0.1, 0.3} = {1, 0, 0.5}; δ̂ over {1, 3, 2} = {0, 1, 0.5}
    torch.testing.assert_close(got, torch.tensor([[NEG, 1.0, 0.0, 0.75, NEG]]))
    const = score_evidence(torch.ones(1, 5), div, cand, mask, boost="normalized", lam=2.0)  # gap-only
    torch.testing.assert_close(const, torch.tensor([[NEG, 1.0, 3.0, 2.0, NEG]]))


def test_count_is_not_bumped_by_float_rounding():
    mask = torch.ones(1, 50, dtype=torch.bool)
    H = torch.arange(50.0)[None]
    sel = select("entropy", entropy=H, divergence=H, hidden=None, mask=mask, decision_ratio=0.14)
    assert 0.14 * 50 > 7  # 7.000000000000001 in floats
    assert int(sel.decision.sum()) == 7
    assert sel.decision[0, 43:].all()


def test_ties_go_to_the_lower_position():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 1:] = True
    mask[1, :5] = True
    H = torch.full((2, 8), 0.5)
    sel = select("entropy", entropy=H, divergence=H, hidden=None, mask=mask, decision_ratio=0.3)
    assert sel.decision[0].nonzero().flatten().tolist() == [1, 2, 3]  # ⌈0.3·7⌉ = 3, first three
    assert sel.decision[1].nonzero().flatten().tolist() == [0, 1]  # ⌈0.3·5⌉ = 2


@pytest.mark.parametrize(
    "method", ["opd", "entropy", "tip", "random", "dear", "dear_nosim", "dear_noboost", "evidence_only"]
)
@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_masked_positions_are_never_selected(method, scope):
    H, D, hidden, mask = make_selection_inputs(2)
    scoped = {} if method == "opd" else {"scope": scope}  # opd selects everything: it has no scope knob
    sel = select(
        method, entropy=H, divergence=D, hidden=hidden, mask=mask, generator=torch.Generator().manual_seed(0), **scoped
    )
    assert (sel.weights[~mask] == 0).all()
    assert not sel.decision[~mask].any() and not sel.evidence[~mask].any()
    assert torch.isfinite(sel.weights).all()
    if method != "opd" and scope == "sequence":  # something chosen in every sequence
        assert (((sel.weights > 0) | sel.decision).sum(-1) > 0).all()


def naive_tip(H, D, mask, tip_ratio=0.5, scope="sequence"):
    B, T = mask.shape
    keys = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]

    def norm(x):
        lo, hi = min(float(x[k]) for k in keys), max(float(x[k]) for k in keys)
        return {k: (float(x[k]) - lo) / (hi - lo) if hi > lo else 0.0 for k in keys}

    nh, nd = norm(H), norm(D)
    s = {k: nh[k] + nd[k] - nh[k] * nd[k] for k in keys}
    if scope == "batch":
        return set(sorted(keys, key=lambda k: (-s[k], k))[: ceil_ratio(tip_ratio, len(keys))])
    chosen = set()
    for i in range(B):
        mine = [k for k in keys if k[0] == i]
        chosen |= set(sorted(mine, key=lambda k: (-s[k], k))[: ceil_ratio(tip_ratio, len(mine))])
    return chosen


@pytest.mark.parametrize(
    "overrides", [{}, {"tip_ratio": 0.3}, {"scope": "batch"}, {"scope": "batch", "tip_ratio": 0.9}]
)
def test_tip_matches_naive(overrides):
    for seed in range(3):
        H, D, hidden, mask = make_selection_inputs(seed)
        sel = select("tip", entropy=H, divergence=D, hidden=None, mask=mask, **overrides)
        got = {tuple(k) for k in (sel.weights > 0).nonzero().tolist()}
        assert got == naive_tip(H, D, mask, **overrides)
        assert set(sel.weights.unique().tolist()) <= {0.0, 1.0}


def test_random_counts_determinism_and_uniformity():
    H, D, hidden, mask = make_selection_inputs(3)

    def pick(seed, **kw):
        return select(
            "random",
            entropy=H,
            divergence=D,
            hidden=None,
            mask=mask,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        ).weights

    a, b, c = pick(0), pick(0), pick(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        assert int((a[i] > 0).sum()) == ceil_ratio(0.2, n) + ceil_ratio(0.2, n - ceil_ratio(0.2, n))
        assert int((pick(0, evidence_pool="all")[i] > 0).sum()) == min(ceil_ratio(0.2, n) * 2, n)
    assert (a[~mask] == 0).all()
    batch = pick(0, scope="batch", decision_ratio=0.1, evidence_ratio=0.3, evidence_pool="all")
    n = int(mask.sum())
    assert int((batch > 0).sum()) == ceil_ratio(0.1, n) + ceil_ratio(0.3, n)
    batch = pick(0, scope="batch", decision_ratio=0.1, evidence_ratio=0.3)
    assert int((batch > 0).sum()) == ceil_ratio(0.1, n) + ceil_ratio(0.3, n - ceil_ratio(0.1, n))
    # uniform: each of 10 response positions is picked with probability 4/10
    many = torch.zeros(4000, 12, dtype=torch.bool)
    many[:, 1:11] = True
    w = select(
        "random",
        entropy=many.float(),
        divergence=many.float(),
        hidden=None,
        mask=many,
        generator=torch.Generator().manual_seed(5),
    ).weights
    freq = (w > 0).float().mean(0)
    assert (freq[[0, 11]] == 0).all()
    assert ((freq[1:11] - 0.4).abs() < 0.04).all()


@pytest.mark.parametrize("ties", [True, False])
def test_selection_stats_matches_naive(ties):
    H, D, hidden, mask = make_selection_inputs(4, ties=ties)
    B, T = mask.shape
    g = torch.Generator().manual_seed(4)
    s_arg = torch.randint(0, 3, (B, T), generator=g)
    t_arg = torch.randint(0, 3, (B, T), generator=g)
    rkl = torch.rand(B, T, generator=g)
    rkl[~mask] = 1e6
    gnorm = torch.rand(B, T, generator=g)
    gnorm[~mask] = 1e6  # padding must not enter the coverage's denominator
    signals = Signals(
        entropy=H, divergence=D, reverse_kl=rkl, student_argmax=s_arg, teacher_argmax=t_arg, grad_norm=gnorm
    )
    sel = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask, w_other=0.0)
    stats = selection_stats(sel, signals, mask)

    keys = [(i, t) for i in range(B) for t in range(T) if mask[i, t]]
    n = len(keys)
    dec = {k for k in keys if sel.decision[k]}
    evi = {k for k in keys if sel.evidence[k]}
    assert stats["selected_frac"] == pytest.approx(len(dec | evi) / n)
    assert stats["decision_frac"] == pytest.approx(len(dec) / n)
    assert stats["evidence_frac"] == pytest.approx(len(evi) / n)
    assert stats["reverse_kl"] == pytest.approx(sum(float(rkl[k]) for k in keys) / n, rel=1e-6)
    other = set(keys) - dec - evi
    for name, group in (("decision", dec), ("evidence", evi), ("other", other), ("selected", dec | evi)):
        assert stats[f"entropy_{name}"] == pytest.approx(sum(float(H[k]) for k in group) / len(group), rel=1e-6)
        assert stats[f"divergence_{name}"] == pytest.approx(sum(float(D[k]) for k in group) / len(group), rel=1e-6)
    cyw = set()
    for i in range(B):
        mine = [k for k in keys if k[0] == i]
        if not mine:
            continue
        median = sorted(float(H[k]) for k in mine)[(len(mine) - 1) // 2]
        cyw |= {k for k in mine if float(H[k]) <= median and s_arg[k] != t_arg[k]}
    assert cyw, "fixture must contain confident-yet-wrong positions"
    assert stats["cyw_rate"] == pytest.approx(len(cyw) / n)
    assert stats["cyw_in_evidence"] == pytest.approx(len(cyw & evi) / len(cyw))
    assert stats["cyw_in_selected"] == pytest.approx(len(cyw & (dec | evi)) / len(cyw))
    mass = sum(float(gnorm[k]) for k in keys)
    assert stats["grad_mass_coverage"] == pytest.approx(sum(float(gnorm[k]) for k in dec | evi) / mass, rel=1e-6)
    # an empty group is NaN, not a misleading 0
    opd = select("opd", entropy=H, divergence=D, hidden=None, mask=mask)
    assert math.isnan(selection_stats(opd, signals, mask)["entropy_evidence"])
    assert selection_stats(opd, signals, mask)["grad_mass_coverage"] == pytest.approx(1.0)


def test_cosine_is_against_the_sequence_own_decisions_only():
    """Two sequences whose hidden states are swapped: cross-sequence similarity would change the pick."""
    mask = torch.ones(2, 6, dtype=torch.bool)
    H = torch.tensor([[3.0, 0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0, 0]])
    D = torch.ones(2, 6)
    hidden = torch.zeros(2, 6, 2)
    hidden[0, :, 0] = 1.0  # sequence 0 all along e0 except position 4
    hidden[0, 4] = torch.tensor([0.0, 1.0])
    hidden[1, :, 1] = 1.0  # sequence 1 all along e1 except position 2
    hidden[1, 2] = torch.tensor([1.0, 0.0])
    sel = select(
        "dear", entropy=H, divergence=D, hidden=hidden, mask=mask, decision_ratio=0.1, evidence_ratio=0.8
    )  # 1 decision (position 0), ⌈0.8·5⌉ = 4 evidence of 5
    assert sel.evidence[0].nonzero().flatten().tolist() == [1, 2, 3, 5]
    assert sel.evidence[1].nonzero().flatten().tolist() == [1, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# Errors a user can cause: one line naming the knob and its allowed range
# ---------------------------------------------------------------------------------------------


BAD_KNOBS = [
    ({"decision_ratio": 1.5}, r"decision_ratio must be a number in \[0, 1\], got 1.5"),
    ({"evidence_ratio": -0.1}, r"evidence_ratio must be a number in \[0, 1\]"),
    ({"tip_ratio": 2}, r"tip_ratio must be a number in \[0, 1\]"),
    ({"lam": -1.0}, r"lam must be a finite number >= 0"),
    ({"w_dec": -1}, r"w_dec must be a finite number >= 0"),
    ({"w_evi": -0.5}, r"w_evi must be"),
    ({"w_other": float("inf")}, r"w_other must be a finite number >= 0"),
    ({"mode": "top"}, r"mode must be one of topk, threshold; got 'top'"),
    ({"mode": "threshold", "h_min": None}, r"h_min must be a number"),
    ({"scope": "global"}, r"scope must be one of sequence, batch"),
    ({"agg": "min"}, r"agg must be one of max, mean"),
    ({"direction": "left"}, r"direction must be one of both, before, after"),
    ({"boost": "exp"}, r"boost must be one of normalized, multiplicative, additive, none"),
    ({"evidence_pool": "some"}, r"evidence_pool must be one of remaining, all; got 'some'"),
    ({"window": -1}, r"window must be an integer >= 0 or None"),
    ({"window": 2.5}, r"window must be an integer >= 0 or None"),
    ({"confident_only": "yes"}, r"confident_only must be true or false"),
    ({"similarity": "dot"}, r"similarity must be one of cosine, none"),
    ({"rho": 0.2}, r"method.rho is not a knob of method=dear .*; valid keys: "),
]


@pytest.mark.parametrize("overrides,message", BAD_KNOBS)
def test_bad_knobs_raise_one_line_value_errors(overrides, message):
    H, D, hidden, mask = make_selection_inputs(0)
    method = "tip" if "tip_ratio" in overrides else "dear"  # the knob's own method
    with pytest.raises(ValueError, match=message) as err:
        select(method, entropy=H, divergence=D, hidden=hidden, mask=mask, **overrides)
    assert "\n" not in str(err.value)


def test_other_user_errors():
    H, D, hidden, mask = make_selection_inputs(0)
    with pytest.raises(
        ValueError, match=r"^hidden must be given \(\[B, T, H\] student hidden states\) for similarity='cosine'$"
    ):
        select("dear", entropy=H, divergence=D, hidden=None, mask=mask)
    zs, zt = make_logits(0)
    w = make_mask().float()
    for kwargs, message in [
        ({"kind": "kl"}, r"kind must be one of reverse_kl, forward_kl, jsd, pg"),
        ({"normalize": "mean"}, r"normalize must be one of selected, all, sequence"),
        ({"temperature": 0.0}, r"temperature must be > 0"),
        ({"beta": 1.5}, r"beta must be in \[0, 1\]"),
        ({"kind": "pg"}, r"kind='pg' needs sampled_ids"),
        ({"chunk_size": 0}, r"chunk_size must be a positive"),
    ]:
        with pytest.raises(ValueError, match=message):
            distill_loss(zs, zt, w, **kwargs)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        distill_loss(zs, zt, -w)
    with pytest.raises(ValueError, match="divergence must be one of"):
        token_signals(zs, zt, make_mask(), divergence="l2")
    with pytest.raises(ValueError, match="needs sampled_ids"):
        token_divergence(zs, zt, "logratio")


# ---------------------------------------------------------------------------------------------
# The public functions' defaults and argument errors, and the head in mixed precision
# ---------------------------------------------------------------------------------------------


def test_public_functions_default_to_the_documented_values():
    """A call that leaves the knobs out is the call with the documented defaults (and the knobs matter)."""
    from dear.objective import (
        evidence_pool,
        evidence_similarity,
        score_evidence,
        select_decisions,
        select_evidence,
        select_random,
        select_tip,
    )

    H, D, hidden, mask = make_selection_inputs(0, ties=False)
    same = torch.equal
    decision = select_decisions(H, mask)
    assert same(decision, select_decisions(H, mask, ratio=0.2, mode="topk", scope="sequence"))
    assert not same(decision, select_decisions(H, mask, ratio=0.5))
    sim = evidence_similarity(hidden, decision, mask)
    assert same(sim, evidence_similarity(hidden, decision, mask, agg="max", direction="both", similarity="cosine"))
    assert not same(sim, evidence_similarity(hidden, decision, mask, agg="mean"))
    pool = evidence_pool(mask, decision)
    assert same(pool, mask & ~decision)
    score = score_evidence(sim, D, pool, mask)
    assert same(score, score_evidence(sim, D, pool, mask, boost="normalized", lam=1.0))
    assert not same(score, score_evidence(sim, D, pool, mask, lam=2.0))
    evidence = select_evidence(score, pool)
    assert same(evidence, select_evidence(score, pool, ratio=0.2, scope="sequence"))
    assert not same(evidence, select_evidence(score, pool, ratio=0.5))
    chosen, s = select_tip(H, D, mask)
    assert same(chosen, select_tip(H, D, mask, ratio=0.5, scope="sequence")[0])
    assert not same(chosen, select_tip(H, D, mask, ratio=0.9)[0])
    assert not s[~mask].any() and s[mask].any()  # the soft-OR score is 0 where masked
    picked = select_random(mask, generator=torch.Generator().manual_seed(0))
    n = mask.sum(-1)
    k_dec = torch.ceil(0.2 * n - 1e-9)
    assert picked.sum(-1).tolist() == torch.minimum(k_dec + torch.ceil(0.2 * (n - k_dec) - 1e-9), n).tolist()
    kwargs = dict(decision_ratio=0.2, evidence_ratio=0.2, scope="sequence", evidence_pool="remaining")
    assert same(picked, select_random(mask, generator=torch.Generator().manual_seed(0), **kwargs))
    zs, zt = make_logits(0)
    assert same(token_divergence(zs, zt), token_divergence(zs, zt, "reverse_kl", 1.0, 0.5))
    assert not same(token_divergence(zs, zt), token_divergence(zs, zt, temperature=2.0))
    assert same(token_divergence(zs, zt, "jsd"), token_divergence(zs, zt, "jsd", beta=0.5))
    w = make_mask().float()
    loss, _ = distill_loss(zs, zt, w)
    explicit = dict(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5, reduction="mean")
    assert float(loss) == float(distill_loss(zs, zt, w, **explicit)[0])


def test_argument_errors_name_the_argument():
    from dear.objective import evidence_pool, score_evidence, select_random

    zs, zt = make_logits(0)
    mask = make_mask()
    for hidden, weight, shapes in [
        ((2, 3, 4), (5, 3), r"\(2, 3, 4\) and \(5, 3\)"),  # H differs
        ((3, 4), (5, 4), r"\(3, 4\) and \(5, 4\)"),  # hidden is not [B, T, H]
        ((2, 3, 4), (5, 4, 1), r"\(2, 3, 4\) and \(5, 4, 1\)"),  # weight is not [V, H]
    ]:
        with pytest.raises(ValueError, match=r"HeadLogits needs hidden \[B, T, H\] and weight \[V, H\], got " + shapes):
            HeadLogits(torch.zeros(hidden), torch.zeros(weight))
    with pytest.raises(ValueError, match=r"kind must be one of reverse_kl, forward_kl, jsd, logratio; got 'l2'"):
        token_divergence(zs, zt, "l2")
    with pytest.raises(ValueError, match=r"must share leading dims, got \(3, 6, 9\) and \(3, 5, 12\)"):
        token_divergence(zs, zt[:, :5])
    with pytest.raises(ValueError, match="chunk_size must be a positive number of positions or None, got 0"):
        token_divergence(zs, zt, chunk_size=0)
    with pytest.raises(ValueError, match="boost must be one of normalized, multiplicative, additive, none; got 'exp'"):
        score_evidence(torch.zeros(3, 6), torch.zeros(3, 6), mask, mask, boost="exp")
    for call in (lambda: evidence_pool(mask, mask, "some"), lambda: select_random(mask, evidence_pool="some")):
        with pytest.raises(ValueError, match="evidence_pool must be one of remaining, all; got 'some'"):
            call()


def test_every_named_choice_is_checked_whatever_the_inputs():
    """A misspelt knob in a direct call is refused in one line; it never falls through to another branch."""
    from dear.objective import evidence_similarity, select_decisions, select_evidence, select_random, select_tip

    H, D, hidden, mask = make_selection_inputs(0, ties=False)
    decision = select_decisions(H, mask)
    nothing = torch.zeros_like(mask)  # no decisions at all: the early return still checks its arguments
    calls = {
        "scope must be one of sequence, batch; got 'Batch'": [
            lambda: select_decisions(H, mask, scope="Batch"),
            lambda: select_evidence(D, mask, scope="Batch"),
            lambda: select_tip(H, D, mask, scope="Batch"),
            lambda: select_random(mask, scope="Batch"),
        ],
        "mode must be one of topk, threshold; got 'top-k'": [lambda: select_decisions(H, mask, mode="top-k")],
        "mode='threshold' needs h_min": [lambda: select_decisions(H, mask, mode="threshold")],
        "agg must be one of max, mean; got 'sum'": [
            lambda: evidence_similarity(hidden, decision, mask, agg="sum"),
            lambda: evidence_similarity(hidden, nothing, mask, agg="sum"),
        ],
        "direction must be one of both, before, after; got 'left'": [
            lambda: evidence_similarity(hidden, decision, mask, direction="left")
        ],
        "similarity must be one of cosine, none; got 'dot'": [
            lambda: evidence_similarity(hidden, decision, mask, similarity="dot")
        ],
    }
    for message, group in calls.items():
        for call in group:
            with pytest.raises(ValueError, match="^" + re.escape(message)):
                call()


def test_token_divergence_reads_the_shared_vocabulary():
    zs, zt = make_logits(0)
    vocab = zs.shape[-1]
    # a student head wider than the teacher's: the teacher's size is the shared vocabulary
    wide = torch.cat([zs, torch.full((3, 6, 5), 30.0)], dim=-1)
    torch.testing.assert_close(token_divergence(wide, zt[..., :vocab]), token_divergence(zs, zt[..., :vocab]))
    # an explicit vocabulary size cuts both heads
    torch.testing.assert_close(token_divergence(zs, zt, vocab_size=6), token_divergence(zs[..., :6], zt[..., :6]))


def test_head_logits_in_mixed_precision_match_the_materialised_logits():
    """Final hidden states in float64 and a float32 head: each chunk's rows are computed in the head's
    dtype, and the gradients come back in each tensor's own dtype."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, requires_grad=True)
    teacher = torch.randn(3, 6, 12, generator=g)
    weights = make_mask().float()
    got, _ = distill_loss(HeadLogits(hidden, weight), teacher, weights, chunk_size=4)
    got.backward()
    grad_h, grad_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    want, _ = distill_loss(hidden.to(weight.dtype) @ weight.T, teacher, weights, chunk_size=4)
    want.backward()
    assert grad_h.dtype == torch.float64 and grad_w.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(grad_h, hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_w, weight.grad, rtol=1e-4, atol=1e-6)


def test_evidence_score_forms_on_hand_computed_values():
    """multiplicative: sim·(1 + λ·D/mean D), the mean over the sequence's response tokens; additive and
    normalized: min-max over the candidates, a constant relevance mapping to 0 (additive) or 1 (normalized)."""
    from dear.objective import evidence_similarity, score_evidence

    inf = math.inf
    mask = torch.tensor([[True, True, True, False], [False, False, False, True]])  # a one-token sequence
    D = torch.tensor([[0.2, 0.4, 0.6, 9.0], [9.0, 9.0, 9.0, 0.5]])  # means 0.4 and 0.5
    sim = torch.tensor([[0.5, 0.5, 0.5, 7.0], [7.0, 7.0, 7.0, 0.25]])  # a constant relevance
    for boost, want in [
        ("multiplicative", [[1.0, 1.5, 2.0, -inf], [-inf, -inf, -inf, 0.75]]),
        ("additive", [[0.0, 1.0, 2.0, -inf], [-inf, -inf, -inf, 0.0]]),
        ("normalized", [[1.0, 2.0, 3.0, -inf], [-inf, -inf, -inf, 1.0]]),
    ]:
        got = score_evidence(sim, D, mask, mask, boost=boost, lam=2.0)
        torch.testing.assert_close(got, torch.tensor(want), msg=boost)
    # an empty batch has no decisions to compare with
    empty = torch.zeros(0, 4, dtype=torch.bool)
    assert evidence_similarity(torch.zeros(0, 4, 2), empty, empty).shape == (0, 4)


def test_before_and_after_exclude_the_decision_itself():
    """allowed(t, d) is t < d ("before") or t > d ("after"): a decision with no other decision on that
    side has no relevance (-inf), even though it is perfectly similar to itself."""
    from dear.objective import evidence_similarity

    inf = math.inf
    mask = torch.ones(1, 4, dtype=torch.bool)
    decision = torch.tensor([[False, True, False, True]])
    hidden = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])
    before = evidence_similarity(hidden, decision, mask, direction="before")
    after = evidence_similarity(hidden, decision, mask, direction="after")
    torch.testing.assert_close(before, torch.tensor([[1.0, 0.0, 1.0, -inf]]))  # t=3 has no later decision
    torch.testing.assert_close(after, torch.tensor([[-inf, -inf, 0.0, 0.0]]))  # t=1 has no earlier one


def test_similarity_is_computed_in_float32_for_half_hidden_states():
    from dear.objective import evidence_similarity, select_decisions

    H, _, hidden, mask = make_selection_inputs(0, ties=False)
    half = hidden.nan_to_num(0.0).to(torch.bfloat16)
    decision = select_decisions(H, mask)
    got = evidence_similarity(half, decision, mask)
    assert got.dtype == torch.float32
    assert torch.equal(got, evidence_similarity(half.float(), decision, mask))
    assert (got[~mask] == -math.inf).all()  # padding and prompt never compete


def test_multiplicative_boost_ignores_a_signed_divergence_whose_mean_is_not_positive():
    """A log-ratio D_t can be negative; where the sequence's mean D is 0 (or below) the boost is off:
    the score is the similarity itself."""
    from dear.objective import score_evidence

    mask = torch.ones(2, 3, dtype=torch.bool)
    D = torch.tensor([[-0.5, 0.0, 0.5], [-1.0, 0.2, 0.2]])  # means 0 and -0.2
    sim = torch.tensor([[0.5, 0.25, 0.75], [0.1, 0.2, 0.3]])
    got = score_evidence(sim, D, mask, mask, boost="multiplicative", lam=1.0)
    torch.testing.assert_close(got, sim)


def test_tip_keeps_its_soft_or_score_and_a_zero_evidence_ratio_keeps_no_evidence():
    from dear.objective import select_tip

    H, D, hidden, mask = make_selection_inputs(0, ties=False)
    tip = select("tip", entropy=H, divergence=D, hidden=hidden, mask=mask)
    chosen, s = select_tip(H, D, mask, ratio=method_config("tip").tip_ratio)
    assert torch.equal(tip.weights, chosen.float()) and torch.equal(tip.score, s)
    none = select("dear", entropy=H, divergence=D, hidden=hidden, mask=mask, evidence_ratio=0.0)
    assert not none.evidence.any() and torch.equal(none.weights > 0, none.decision)


def test_distill_loss_checks_the_weights_shape_and_reports_their_sum():
    zs, zt = make_logits(0)
    w = make_mask().float() * 0.5
    with pytest.raises(ValueError, match=r"expected logits \[B, T, V\] x2 and weights \[B, T\], got"):
        distill_loss(zs, zt, w[:, :5])
    _, stats = distill_loss(zs, zt, w)
    assert float(stats["weight_sum"]) == float(w.sum())


def test_the_head_gradient_accumulates_in_float32_for_a_half_head_and_in_float64_for_a_double_one():
    """Chunk by chunk, ∂W adds up one product a position (chunk_size=1 here, 384 of them): a bfloat16
    accumulator would drift by several bf16 steps; float32 stays within the rounding of the bf16 inputs.
    A float64 head keeps float64 throughout."""
    g = torch.Generator().manual_seed(0)
    B, T, H_dim, V = 4, 96, 8, 11
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    weights = torch.ones(B, T)
    for dtype, bound in ((torch.bfloat16, 0.008), (torch.float64, 1e-12)):
        hidden = torch.randn(B, T, H_dim, generator=g).to(dtype).requires_grad_()
        weight = torch.randn(V, H_dim, generator=g).to(dtype).requires_grad_()
        loss, _ = distill_loss(HeadLogits(hidden, weight), teacher.to(dtype), weights, chunk_size=1)
        loss.backward()
        h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
        want, _ = distill_loss(h64 @ w64.T, teacher, weights)
        want.backward()
        assert weight.grad.dtype == dtype
        rel = float((weight.grad.double() - w64.grad).norm() / w64.grad.norm())
        assert rel < bound, (dtype, rel)


def test_ids_outside_the_vocabulary_are_harmless_where_they_are_not_used():
    """Padding may carry any id (the student's vocabulary can be larger than the shared one): where a
    position does not count, its id is clamped before any gather."""
    zs, zt = make_logits(0)
    mask = make_mask()
    vocab = zs.shape[-1]
    ids = torch.randint(2, vocab, mask.shape, generator=torch.Generator().manual_seed(0))  # token 1 is -inf
    padded = ids.masked_fill(~mask, vocab + 3)
    for divergence in ("logratio",):
        got = token_signals(zs, zt, mask, divergence=divergence, sampled_ids=padded)
        want = token_signals(zs, zt, mask, divergence=divergence, sampled_ids=ids)
        torch.testing.assert_close(got.divergence[mask], want.divergence[mask])
    w = mask.float()
    loss, _ = distill_loss(zs, zt, w, kind="pg", sampled_ids=padded)
    assert float(loss) == float(distill_loss(zs, zt, w, kind="pg", sampled_ids=ids)[0])


def test_a_shared_vocabulary_of_one_token_is_allowed():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(3, 6, 9, generator=g), torch.randn(3, 6, 12, generator=g)
    assert torch.equal(token_divergence(zs, zt, vocab_size=1), torch.zeros(3, 6))  # one token: p = q = 1
    with pytest.raises(ValueError, match=r"vocab_size must be in \[1, 9\]"):
        token_divergence(zs, zt, vocab_size=0)


@pytest.mark.parametrize("heads", [False, True])
def test_the_loss_reads_the_signals_rows_instead_of_projecting_them_again(heads, monkeypatch):
    """``known`` (the reverse KL and both log-normalisers from `token_signals`) gives the loss and gradient of the
    plain pass, with no rows loaded in the forward; a loss other than the reverse KL refuses it."""
    import dear.objective.chunked as chunked
    from dear.objective import HeadLogits

    g = torch.Generator().manual_seed(3)
    b, t, v, h = 3, 7, 50, 8
    mask = torch.rand(b, t, generator=g) > 0.3
    weights = torch.rand(b, t, generator=g) * mask
    if heads:
        hidden = torch.randn(b, t, h, generator=g).requires_grad_()
        student = HeadLogits(hidden, torch.randn(v, h, generator=g))
        teacher = HeadLogits(torch.randn(b, t, h, generator=g), torch.randn(v, h, generator=g))
        leaf = hidden
    else:
        leaf = torch.randn(b, t, v, generator=g).requires_grad_()
        student, teacher = leaf, torch.randn(b, t, v, generator=g)
    sig = token_signals(student.detach(), teacher, mask, temperature=1.5)
    loaded = []
    real = chunked.load_rows
    monkeypatch.setattr(chunked, "load_rows", lambda *a, **k: loaded.append(1) or real(*a, **k))
    common = dict(mask=mask, temperature=1.5, normalize="all")
    plain, _ = distill_loss(student, teacher, weights, **common)
    assert loaded
    (want,) = torch.autograd.grad(plain, leaf)
    loaded.clear()
    known = (sig.reverse_kl, sig.student_lse, sig.teacher_lse)
    fast, _ = distill_loss(student, teacher, weights, known=known, **common)
    assert not loaded  # nothing projected or normalised in the forward
    (got,) = torch.autograd.grad(fast, leaf)
    torch.testing.assert_close(fast, plain)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="known rows carry the reverse KL"):
        distill_loss(student, teacher, weights, known=known, kind="forward_kl", **common)


def test_known_rows_rounded_below_the_pass_dtype_are_not_taken(monkeypatch):
    """A float32 KL lent to a float64 pass would round the loss: the engine computes its own rows instead."""
    import dear.objective.chunked as chunked

    g = torch.Generator().manual_seed(4)
    student = torch.randn(2, 5, 30, generator=g, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(2, 5, 30, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    sig = token_signals(student.detach(), teacher, mask)
    assert sig.reverse_kl.dtype == torch.float32 and sig.student_lse.dtype == torch.float64
    loaded = []
    real = chunked.load_rows
    monkeypatch.setattr(chunked, "load_rows", lambda *a, **k: loaded.append(1) or real(*a, **k))
    known = (sig.reverse_kl, sig.student_lse, sig.teacher_lse)
    got, _ = distill_loss(student, teacher, mask.float(), known=known)
    forward_loads = len(loaded)
    want, _ = distill_loss(student, teacher, mask.float())
    assert forward_loads == len(loaded) - forward_loads > 0  # it loaded its rows, as the plain call does
    torch.testing.assert_close(got, want, rtol=0, atol=0)
