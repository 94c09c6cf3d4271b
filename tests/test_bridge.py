"""A teacher with the student's token ids but another chat template reads prompts in its own format."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import pytest
import torch

from dear import objective
from dear.config.schema import LossConfig, StepConfig
from dear.data.toy import build_tokenizer
from dear.distill.rollout import generate
from dear.distill.step import distill_step, forward_pair, rollout_reverse_kl
from dear.distill.teacher_view import TeacherPrompts, align_to_student, teacher_view, templates_differ
from dear.models.load import TokenizerMismatch, check_compatible

from conftest import method_config
from tiny import tiny_qwen2

PROMPTS = ["1+2+3?", "4+5?", "6+7+8+9+1?"]
# The teacher's "own format": a different prefix per prompt, so its prompt widths differ from the student's.
TEACHER_PROMPTS = ["9+9+9+9+1+2+3?", "4+5?", "0+6+7+8+9+1?"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("toy-tok"))


@pytest.fixture(scope="module")
def pair(tok):
    return tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)


@pytest.fixture(scope="module")
def rollout(pair, tok):
    torch.manual_seed(0)
    return generate(pair[0], tok, PROMPTS, n=2, temperature=1.0, max_new_tokens=12)


def loaded(name, tokenizer, chat_template: bool):
    return SimpleNamespace(
        name=name,
        tokenizer=tokenizer,
        chat_template=chat_template,
        model=SimpleNamespace(get_output_embeddings=lambda: SimpleNamespace(weight=torch.zeros(len(tokenizer), 1))),
    )


def test_the_teacher_reads_the_response_after_its_own_prompt(pair, tok, rollout):
    """Teacher logits on the response equal the teacher run alone on (its prompt + the same response ids)."""
    student, teacher = pair
    texts = [t for t in TEACHER_PROMPTS for _ in range(2)]
    seen = teacher_view(rollout, texts, tok)
    assert seen.prompt_width != rollout.prompt_width
    fwd = forward_pair(student, teacher, rollout, teacher_rollout=seen)
    mask = rollout.target_mask
    for row in range(rollout.input_ids.shape[0]):
        response = rollout.input_ids[row, rollout.prompt_width :][rollout.response_mask[row, rollout.prompt_width :]]
        ids = tok(texts[row], add_special_tokens=False, return_tensors="pt").input_ids[0]
        alone = teacher(input_ids=torch.cat([ids, response])[None]).logits[0]  # unpadded, on its own
        want = alone[len(ids) - 1 : len(ids) - 1 + len(response)]  # the columns that predict the response
        got = fwd.teacher_logits[row][mask[row]]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # the response ids, their mask and padding are the student's own
    assert torch.equal(seen.input_ids[:, seen.prompt_width :], rollout.input_ids[:, rollout.prompt_width :])
    assert torch.equal(seen.target_mask.sum(1), rollout.target_mask.sum(1))


def test_the_same_prompt_format_changes_nothing(pair, tok, rollout):
    student, teacher = pair
    plain = forward_pair(student, teacher, rollout)
    seen = teacher_view(rollout, [p for p in PROMPTS for _ in range(2)], tok)
    bridged = forward_pair(student, teacher, rollout, teacher_rollout=seen)
    mask = rollout.target_mask
    torch.testing.assert_close(bridged.teacher_logits[mask], plain.teacher_logits[mask], atol=1e-5, rtol=1e-5)


def test_a_shifted_alignment_is_caught(pair, tok, rollout):
    """Off by one column, the bridged teacher no longer matches the teacher run alone (the test above can fail)."""
    student, teacher = pair
    seen = teacher_view(rollout, [p for p in PROMPTS for _ in range(2)], tok)
    logits = teacher(
        input_ids=seen.input_ids, attention_mask=seen.attention_mask, position_ids=seen.position_ids
    ).logits[:, :-1]
    good = align_to_student(logits, rollout, seen)
    shifted = align_to_student(torch.roll(logits, 1, dims=1), rollout, seen)
    mask = rollout.target_mask
    assert not torch.allclose(good[mask], shifted[mask])


def test_teacher_prompts_follow_the_grouping_of_samples(pair, tok, rollout):
    prompts = TeacherPrompts(dict(zip(PROMPTS, TEACHER_PROMPTS, strict=True)), tok)
    seen = prompts.view(rollout, PROMPTS, 2)
    want = teacher_view(rollout, [t for t in TEACHER_PROMPTS for _ in range(2)], tok)
    assert torch.equal(seen.input_ids, want.input_ids)
    with pytest.raises(ValueError, match="no teacher format"):
        prompts.view(rollout, ["5+5?", *PROMPTS[1:]], 2)


def test_held_out_kl_uses_the_teachers_view(pair, tok, rollout):
    student, teacher = pair
    seen = teacher_view(rollout, [t for t in TEACHER_PROMPTS for _ in range(2)], tok)
    plain, n = rollout_reverse_kl(student, teacher, rollout, None)
    bridged, m = rollout_reverse_kl(student, teacher, rollout, None, teacher_rollout=seen)
    assert n == m == int(rollout.target_mask.sum()) and bridged != pytest.approx(plain)
    fwd = forward_pair(student, teacher, rollout, teacher_rollout=seen, grad=False)
    kl = objective.token_signals(fwd.student_logits, fwd.teacher_logits, rollout.target_mask).reverse_kl
    assert bridged == pytest.approx(float(kl.sum()), rel=1e-5)


def test_only_the_template_may_differ(tmp_path, caplog):
    """Two toy tokenizers that differ only in their chat templates: allowed, logged; other ids: refused."""
    a, b = build_tokenizer(tmp_path / "a"), build_tokenizer(tmp_path / "b")
    a.chat_template = "{% for m in messages %}{{ m['content'] }}={% endfor %}"
    b.chat_template = "{% for m in messages %}{{ m['content'] }}#{% endfor %}"
    student, teacher = loaded("s", a, True), loaded("t", b, True)
    assert templates_differ(student, teacher)
    with caplog.at_level(logging.INFO, logger="dear.models.load"):
        assert check_compatible(student, teacher) == len(a)
    assert "format prompts differently" in caplog.text
    assert not templates_differ(student, loaded("t", a, True))
    assert templates_differ(student, loaded("t", a, False))  # one plain, one chat-formatted
    # ids that read as other tokens are still refused
    swapped = build_tokenizer(tmp_path / "c")
    vocab = swapped.get_vocab()
    x, y = "1", "2"
    swapped.backend_tokenizer.model = type(swapped.backend_tokenizer.model)(
        vocab={**vocab, x: vocab[y], y: vocab[x]}, unk_token=swapped.unk_token or "<pad>"
    )
    with pytest.raises(TokenizerMismatch, match="map to different tokens"):
        check_compatible(student, loaded("t", swapped, True))


def test_the_step_reads_the_teachers_view_in_micro_batches_and_chunks(pair, tok, rollout):
    """With step.logits=chunked the teacher's final hidden states are moved to the student's columns, and
    each micro-batch takes its own rows of the teacher's view."""
    student, teacher = pair
    seen = teacher_view(rollout, [t for t in TEACHER_PROMPTS for _ in range(2)], tok)
    mask = rollout.target_mask
    full = forward_pair(student, teacher, rollout, teacher_rollout=seen, grad=False)
    head = forward_pair(student, teacher, rollout, teacher_rollout=seen, grad=False, logits="chunked").teacher_logits
    torch.testing.assert_close((head.hidden @ head.weight.T)[mask], full.teacher_logits[mask], atol=1e-4, rtol=1e-4)
    want, _ = objective.distill_loss(full.student_logits, full.teacher_logits, mask.float(), mask=mask)
    opd, loss = method_config("opd"), LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)
    micro = StepConfig(micro_batch_size=4, logits="chunked", gradient_checkpointing=False)  # 4 + 2 rollouts
    got, _ = distill_step(
        copy.deepcopy(student), teacher, rollout, opd, loss, vocab_size=None, teacher_rollout=seen, step=micro
    )
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    plain, _ = distill_step(copy.deepcopy(student), teacher, rollout, opd, loss, vocab_size=None, step=micro)
    assert float(plain) != pytest.approx(float(want), rel=1e-3)  # the view matters
