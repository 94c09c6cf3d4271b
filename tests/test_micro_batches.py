"""A step in micro-batches, or with logits that never exist whole, has the one-shot step's gradient.

`dear.step.distill_step` runs ``step.micro_batch_size`` rollouts at a time (forward, selection,
backward) and divides the summed gradient by the whole step's denominator; ``step.logits=chunked``
computes every logit row from the final hidden states and the LM head, a chunk at a time. Neither
may change what the step computes: every method, every normalisation, against the plain step.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from dear.config import train_config
from dear.data.toy import build_tokenizer
from dear.rollout import generate
from dear.schema import ConfigError, StepConfig
from dear.step import distill_step

from conftest import ROOT, TINY_MODELS, compose
from tiny import tiny_qwen2

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


def run_step(pair, settings, step: StepConfig):
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
        student.gradient_checkpointing_enable()
        checkpointed = run_step(
            pair, settings, StepConfig(micro_batch_size=5, logits="chunked", gradient_checkpointing=True)
        )
    finally:
        student.gradient_checkpointing_disable()
    assert_same_step(plain, checkpointed)


def test_batch_scope_with_micro_batches_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"method.scope=batch .* step.micro_batch_size=4 splits them"):
        train_config(compose(TINY_MODELS + ["method=dear", "method.scope=batch", "step.micro_batch_size=4"]))
    with pytest.raises(ConfigError, match=r"method=tip \(min-max over the batch\) ranks tokens across all 64"):
        train_config(compose(TINY_MODELS + ["method=tip", "step.micro_batch_size=4"]))
    # one micro-batch holding the whole step is the plain step: allowed
    train_config(compose(TINY_MODELS + ["method=dear", "method.scope=batch", "step.micro_batch_size=64"]))
