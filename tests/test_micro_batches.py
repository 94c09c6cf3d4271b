"""A step in micro-batches, or with logits that never exist whole, has the one-shot step's gradient.

`dear.distill.step.distill_step` runs ``step.micro_batch_size`` rollouts at a time (forward, selection,
backward) and divides the summed gradient by the whole step's denominator; ``step.logits=chunked``
computes every logit row from the final hidden states and the LM head, a chunk at a time. Neither
may change what the step computes: every method, every normalisation, against the plain step.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from dear import objective
from dear.config.schema import ConfigError, StepConfig
from dear.data.toy import build_tokenizer
from dear.distill.rollout import Rollout, generate
from dear.distill.step import DataParallel, distill_step, forward_pair, select_step
from dear.models.load import set_gradient_checkpointing
from dear.preflight.settings import train_config

from conftest import ROOT, TINY_MODELS, compose
from tiny import PaddedHead, tiny_qwen2

# tip min-max normalises over the whole batch, so it is refused with micro-batches (tested below)
METHODS = sorted(p.stem for p in (ROOT / "dear" / "conf" / "method").glob("*.yaml") if p.stem != "tip")
NORMALIZATIONS = ["selected", "all", "sequence"]
PROMPTS = ["1+2+3?", "4+5?", "6+7+8+9+1?", "2+2?", "9+9+9?"]  # 5 prompts x 2 samples: 10 rollouts


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("toy-tok"))
    # float64, so that the comparison sees the algorithm, not float32 summation order
    student = tiny_qwen2(tok, seed=0).double().train()
    teacher = tiny_qwen2(tok, seed=1, hidden_size=24).double()
    torch.manual_seed(0)
    rollout = generate(student, tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=16)
    for i in range(rollout.input_ids.shape[0]):  # responses of 4..13 tokens, right-padded as if they had ended
        cut = rollout.prompt_width + 4 + i
        rollout.response_mask[i, cut:] = False
        rollout.attention_mask[i, cut:] = 0
        rollout.input_ids[i, cut:] = tok.pad_token_id
    lengths = rollout.target_mask.sum(-1)
    assert lengths.min() > 0 and lengths.max() > lengths.min()  # unequal lengths: the denominators differ
    return SimpleNamespace(student=student, teacher=teacher, rollout=rollout, vocab=len(tok))


def run_step(pair, settings, step: StepConfig, **kwargs):
    """One step on a fresh copy of the student: (loss, stats, {name: grad})."""
    student = copy.deepcopy(pair.student)
    loss, stats = distill_step(
        student,
        pair.teacher,
        pair.rollout,
        settings.method,
        settings.loss,
        vocab_size=pair.vocab,
        generator=torch.Generator().manual_seed(0),
        step=step,
        **kwargs,
    )
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return loss, stats, grads


def assert_same_step(a, b):
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = a, b
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert any(bool(g.abs().sum() > 0) for g in grads_a.values())
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-6, msg=name)
    assert float(loss_b) == pytest.approx(float(loss_a), abs=1e-6)
    assert stats_b.keys() == stats_a.keys()
    for key in stats_a:
        assert stats_b[key] == pytest.approx(stats_a[key], abs=1e-6), key


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("method", METHODS)
def test_micro_batches_give_the_one_shot_gradient(pair, method, normalize):
    settings = train_config(compose(TINY_MODELS + [f"method={method}", f"loss.normalize={normalize}"]))
    whole = run_step(pair, settings, StepConfig(micro_batch_size=None, logits="full", gradient_checkpointing=False))
    # 4 + 4 + 2: uneven micro-batches
    parts = run_step(pair, settings, StepConfig(micro_batch_size=4, logits="full", gradient_checkpointing=False))
    assert_same_step(whole, parts)


@pytest.mark.parametrize("method", ["opd", "dear", "sft", "random"])
def test_chunked_logits_give_the_full_logits_gradient(pair, method):
    settings = train_config(compose(TINY_MODELS + [f"method={method}"]))
    full = run_step(pair, settings, StepConfig(micro_batch_size=None, logits="full", gradient_checkpointing=False))
    chunked = run_step(pair, settings, StepConfig(micro_batch_size=3, logits="chunked", gradient_checkpointing=False))
    assert_same_step(full, chunked)


def test_chunked_logits_never_run_the_lm_head(pair):
    """The ``[B, L, V]`` logits are what ``lm_head`` returns: with step.logits=chunked it is never called."""
    settings = train_config(compose(TINY_MODELS + ["method=dear"]))
    calls = []
    hooks = [m.lm_head.register_forward_hook(lambda *a: calls.append(1)) for m in (pair.student, pair.teacher)]
    try:
        run_step(pair, settings, StepConfig(micro_batch_size=None, logits="chunked", gradient_checkpointing=False))
        assert calls == []
        run_step(pair, settings, StepConfig(micro_batch_size=None, logits="full", gradient_checkpointing=False))
        assert len(calls) == 2  # the check can fail: the full path does call both heads
    finally:
        for h in hooks:
            h.remove()


def test_gradient_checkpointing_keeps_the_gradient(pair):
    settings = train_config(compose(TINY_MODELS + ["method=dear"]))
    plain = run_step(pair, settings, StepConfig(micro_batch_size=None, logits="full", gradient_checkpointing=False))
    student = pair.student
    try:
        set_gradient_checkpointing(student, True)  # as dear-train turns it on
        assert student.is_gradient_checkpointing
        checkpointed = run_step(
            pair, settings, StepConfig(micro_batch_size=5, logits="chunked", gradient_checkpointing=True)
        )
    finally:
        set_gradient_checkpointing(student, False)
    assert not student.is_gradient_checkpointing
    assert_same_step(plain, checkpointed)


def test_batch_scope_with_micro_batches_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"method.scope=batch .* step.micro_batch_size=4 splits them"):
        train_config(compose(TINY_MODELS + ["method=dear", "method.scope=batch", "step.micro_batch_size=4"]))
    with pytest.raises(ConfigError, match=r"method=tip \(min-max over the batch\) ranks tokens across all 64"):
        train_config(compose(TINY_MODELS + ["method=tip", "step.micro_batch_size=4"]))
    # one micro-batch holding the whole step is the plain step: allowed
    train_config(compose(TINY_MODELS + ["method=dear", "method.scope=batch", "step.micro_batch_size=64"]))


def responses_only_in(pair, rows: list[int]):
    """``pair`` with a rollout whose response tokens are those of ``rows`` only."""
    r = pair.rollout
    keep = torch.zeros(r.response_mask.shape[0], 1, dtype=torch.bool)
    keep[rows] = True
    rollout = Rollout(r.input_ids, r.attention_mask, r.position_ids, r.response_mask & keep, r.prompt_width, r.texts)
    return SimpleNamespace(**{**vars(pair), "rollout": rollout})


def test_the_step_is_the_objective_over_the_shared_vocabulary(pair):
    """The step in micro-batches, on heads padded past the tokenizer, is the objective's functions run over
    the whole batch: the loss (its kind, τ and β as configured; mask-normalised: dear's w_other = 0, so the
    mask is not the selection), its gradient, the selection stats and the mean response length."""
    tempered_jsd = ["loss.kind=jsd", "loss.beta=0.3", "loss.temperature=2.0"]
    settings = train_config(compose(TINY_MODELS + ["method=dear", "loss.normalize=all", *tempered_jsd]))
    method, loss, r = settings.method, settings.loss, pair.rollout
    student = copy.deepcopy(pair.student)
    _, sig, sel = select_step(student, pair.teacher, r, method, loss, vocab_size=pair.vocab, grad=False)
    fwd = forward_pair(student, pair.teacher, r)  # every column: the step leaving out the prompt's changes nothing
    value, _ = objective.distill_loss(
        fwd.student_logits,
        fwd.teacher_logits,
        sel.weights,
        kind=loss.kind,
        sampled_ids=r.input_ids[:, 1:],
        mask=r.target_mask,
        normalize="all",
        temperature=loss.temperature,
        beta=loss.beta,
        vocab_size=pair.vocab,
    )
    value.backward()
    want = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    want_stats = {f"train/{k}": v for k, v in objective.selection_stats(sel, sig, r.target_mask).items()}
    want_stats = {k: v for k, v in want_stats.items() if not math.isnan(v)}
    want_stats["train/loss"] = float(value.detach())
    want_stats["train/response_tokens"] = float(r.target_mask.sum()) / 10
    assert (sel.weights > 0).sum() < r.target_mask.sum()

    padded = PaddedHead(copy.deepcopy(pair.student), 2, 5.0)
    micro = StepConfig(micro_batch_size=4, logits="full", gradient_checkpointing=False)
    got, stats = distill_step(
        padded, PaddedHead(pair.teacher, 5, -5.0), r, method, loss, vocab_size=pair.vocab, step=micro
    )
    grads = {n.removeprefix("inner."): p.grad for n, p in padded.named_parameters() if p.grad is not None}
    assert grads.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(grads[name], want[name], rtol=1e-7, atol=1e-7, msg=name)
    assert float(got) == pytest.approx(float(value.detach()), abs=1e-9)
    assert stats.keys() == want_stats.keys()
    for key in want_stats:
        assert stats[key] == pytest.approx(want_stats[key], abs=1e-9), key


def test_micro_batches_with_one_sequence_or_none_to_learn_from(pair):
    """A step denominator of 1 (one sequence, normalize=sequence) is divided by, one of 0 gives a zero step."""
    settings = train_config(compose(TINY_MODELS + ["method=opd", "loss.normalize=sequence"]))
    micro = StepConfig(micro_batch_size=4, logits="full", gradient_checkpointing=False)
    whole = StepConfig(micro_batch_size=None, logits="full", gradient_checkpointing=False)
    one = responses_only_in(pair, [5])
    assert_same_step(run_step(one, settings, whole), run_step(one, settings, micro))
    for step in (whole, micro):
        loss, _, grads = run_step(responses_only_in(pair, []), settings, step)
        assert float(loss) == 0.0 and grads and not any(bool(g.any()) for g in grads.values())


@pytest.mark.parametrize("micro_batch_size", [None, 4])
def test_data_parallel_ranks_divide_by_the_denominator_of_all_ranks(pair, micro_batch_size):
    """Under data parallelism (gradients averaged over the ranks) each rank scales its gradient so the
    average is Σ numerators' gradient / Σ of the ranks' denominators; the loss stays the rank's own."""
    step = StepConfig(micro_batch_size=micro_batch_size, logits="full", gradient_checkpointing=False)
    # Σ w = Σ mask with another rank that selected 7 tokens; one sequence here and none on the other rank
    cases = [
        (pair, "selected", float(pair.rollout.target_mask.sum()), 7.0),
        (responses_only_in(pair, [5]), "sequence", 1.0, 0.0),
    ]
    for here, normalize, local, other in cases:
        settings = train_config(compose(TINY_MODELS + ["method=opd", f"loss.normalize={normalize}"]))
        alone_loss, _, alone = run_step(here, settings, step)
        loss, _, grads = run_step(here, settings, step, ranks=DataParallel(2, lambda den, other=other: den + other))
        scale = 2 * local / (local + other)
        assert grads.keys() == alone.keys()
        for name in alone:
            torch.testing.assert_close(grads[name], alone[name] * scale, rtol=1e-7, atol=1e-7, msg=name)
        assert float(loss) == pytest.approx(float(alone_loss), abs=1e-9)
    # no rank selected anything: a zero step, not a division by zero
    loss, _, grads = run_step(responses_only_in(pair, []), settings, step, ranks=DataParallel(2, lambda den: den * 0))
    assert float(loss) == 0.0 and not any(bool(g.any()) for g in grads.values())


def test_each_micro_batch_runs_its_own_forward_and_backward(pair):
    """4 + 4 + 2 rollouts: three forwards and three backward passes (one graph alive at a time); one
    micro-batch backpropagates the loss itself."""
    settings = train_config(compose(TINY_MODELS + ["method=opd"]))
    student, rows, passed = copy.deepcopy(pair.student), [], []
    student.register_forward_hook(lambda m, a, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)

    def backward(tensor):
        passed.append(float(tensor.detach()))
        tensor.backward()

    for size, want in [(4, [4, 4, 2]), (None, [10])]:
        rows.clear()
        passed.clear()
        step = StepConfig(micro_batch_size=size, logits="full", gradient_checkpointing=False)
        loss, _ = distill_step(
            student,
            pair.teacher,
            pair.rollout,
            settings.method,
            settings.loss,
            vocab_size=pair.vocab,
            step=step,
            backward=backward,
        )
        assert rows == want and len(passed) == len(want)
    assert passed == [float(loss)]
