"""The step's alignment: student and teacher logits line up token for token over the rollout."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from dear import objective
from dear.config import train_config
from dear.data.toy import build_tokenizer
from dear.rollout import generate
from dear.step import distill_step, forward_pair

from conftest import TINY_MODELS, compose
from tiny import tiny_qwen2

PROMPTS = ["1+2+3?", "4+5?", "6+7+8+9+1?"]  # different lengths: rows are left-padded


@pytest.fixture(scope="module")
def settings():
    return train_config(compose(TINY_MODELS + ["method=dear"]))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("toy-tok"))
    return SimpleNamespace(model=tiny_qwen2(tok).train(), tokenizer=tok)


@pytest.fixture(scope="module")
def rollout(student):
    torch.manual_seed(0)
    r = generate(student.model, student.tokenizer, PROMPTS, n=2, temperature=1.0, max_new_tokens=16)
    assert r.target_mask.sum() > 10 and (r.attention_mask[:, : r.prompt_width] == 0).any()
    return r


class PerturbedAt(torch.nn.Module):
    """A copy of ``model`` whose logits differ from the model's at one column of one row only."""

    def __init__(self, model, row: int, col: int):
        super().__init__()
        self.inner, self.row, self.col = copy.deepcopy(model), row, col

    def forward(self, **kw):
        out = self.inner(**kw)
        logits = out.logits.clone()
        logits[self.row, self.col, :] = torch.linspace(-3.0, 3.0, logits.shape[-1])
        out.logits = logits
        return out


def reverse_kl(fwd, rollout, vocab_size):
    return objective.token_signals(
        fwd.student_logits.detach(), fwd.teacher_logits, rollout.target_mask, vocab_size=vocab_size
    ).reverse_kl


def test_a_copy_of_the_student_as_teacher_gives_zero_divergence_everywhere(student, rollout):
    teacher = copy.deepcopy(student.model).eval()
    fwd = forward_pair(student.model, teacher, rollout, hidden_layer=-1)
    B, L = rollout.input_ids.shape
    assert fwd.student_logits.shape[:2] == fwd.teacher_logits.shape[:2] == fwd.hidden.shape[:2] == (B, L - 1)
    assert fwd.student_logits.requires_grad and not fwd.teacher_logits.requires_grad
    torch.testing.assert_close(fwd.student_logits.detach(), fwd.teacher_logits)
    kl = reverse_kl(fwd, rollout, len(student.tokenizer))
    assert kl[rollout.target_mask].abs().max() < 1e-5


def test_a_teacher_that_differs_at_one_position_shows_it_exactly_there(student, rollout):
    mask = rollout.target_mask
    rows, cols = mask.nonzero(as_tuple=True)
    row, col = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])  # a response position mid-batch
    teacher = PerturbedAt(student.model, row, col).eval()
    fwd = forward_pair(student.model, teacher, rollout)
    kl = reverse_kl(fwd, rollout, len(student.tokenizer))
    differs = (kl.abs() > 1e-5) & mask
    assert differs.nonzero().tolist() == [[row, col]]
    # column ``col`` of the [B, L-1] tensors is the prediction of token input_ids[:, col + 1]
    assert rollout.response_mask[row, col + 1]


def test_column_t_predicts_token_t_plus_one(student, rollout):
    m = student.model
    r = generate(m, student.tokenizer, PROMPTS, greedy=True, max_new_tokens=16)
    fwd = forward_pair(m, copy.deepcopy(m), r, hidden_layer=-1)
    mask = r.target_mask
    assert torch.equal(fwd.student_logits.argmax(-1)[mask], r.input_ids[:, 1:][mask])
    assert torch.equal(fwd.teacher_logits.argmax(-1)[mask], r.input_ids[:, 1:][mask])
    # the hidden states are the ones the head read at the same column
    with torch.no_grad():
        torch.testing.assert_close(m.lm_head(fwd.hidden)[mask], fwd.student_logits.detach()[mask], rtol=1e-4, atol=1e-4)


def test_the_step_loss_is_zero_against_a_copy_and_the_kl_against_a_perturbed_teacher(student, rollout):
    opd = train_config(compose(TINY_MODELS + ["method=opd"]))
    vocab = len(student.tokenizer)
    same, stats = distill_step(
        student.model, copy.deepcopy(student.model), rollout, opd.method, opd.loss, vocab_size=vocab
    )
    assert abs(float(same.detach())) < 1e-5 and abs(stats["train/reverse_kl"]) < 1e-5
    rows, cols = rollout.target_mask.nonzero(as_tuple=True)
    other = PerturbedAt(student.model, int(rows[0]), int(cols[0]))
    student.model.zero_grad(set_to_none=True)
    differ, stats = distill_step(student.model, other, rollout, opd.method, opd.loss, vocab_size=vocab)
    grads = [p.grad for p in student.model.parameters() if p.grad is not None]
    student.model.zero_grad(set_to_none=True)
    # opd weighs every response token 1: the loss is the mean reverse KL, all of it at the one position
    kl = reverse_kl(forward_pair(student.model, other, rollout), rollout, vocab)
    expected = float(kl[int(rows[0]), int(cols[0])]) / int(rollout.target_mask.sum())
    assert expected > 1e-3 and grads and any(bool(g.abs().sum() > 0) for g in grads)  # the step ran backward
    assert float(differ.detach()) == pytest.approx(expected, rel=1e-4)
    assert stats["train/reverse_kl"] == pytest.approx(expected, rel=1e-4)
