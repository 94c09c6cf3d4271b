"""The step's alignment: student and teacher logits line up token for token over the rollout."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from dear import objective
from dear.config.schema import LossConfig
from dear.data.toy import build_tokenizer
from dear.distill.rollout import generate
from dear.distill.step import (
    Forward,
    distill_step,
    forward_pair,
    lm_head,
    rollout_reverse_kl,
    select_step,
    step_signals,
)
from dear.preflight.settings import train_config

from conftest import TINY_MODELS, compose, method_config
from tiny import PaddedHead, tiny_qwen2

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


def test_held_out_kl_is_over_the_shared_vocabulary_at_the_given_temperature(student, rollout):
    """Both heads padded past the tokenizer (by different amounts): the padding rows never count, and
    the temperature reaches the KL."""
    vocab, mask = len(student.tokenizer), rollout.target_mask
    teacher = tiny_qwen2(student.tokenizer, seed=1)
    fwd = forward_pair(student.model, teacher, rollout, grad=False)

    def kl_sum(temperature):
        return float(
            objective.token_signals(
                fwd.student_logits, fwd.teacher_logits, mask, temperature=temperature
            ).reverse_kl.sum()
        )

    padded_student, padded_teacher = PaddedHead(student.model, 2, 5.0), PaddedHead(teacher, 5, -5.0)
    kl, n = rollout_reverse_kl(padded_student, padded_teacher, rollout, vocab, temperature=2.0)
    assert n == int(mask.sum())
    assert kl == pytest.approx(kl_sum(2.0), rel=1e-5)
    assert kl_sum(2.0) != pytest.approx(kl_sum(1.0), rel=1e-3)  # the temperature matters here
    unsliced, _ = rollout_reverse_kl(padded_student, padded_teacher, rollout, None, temperature=2.0)
    assert unsliced != pytest.approx(kl, rel=1e-3)  # the padding rows would matter


def test_chunked_logits_need_a_bias_free_linear_head():
    def model(head):
        return SimpleNamespace(get_output_embeddings=lambda: head)

    linear = torch.nn.Linear(4, 7, bias=False)
    assert lm_head(model(linear)) is linear.weight
    bare = SimpleNamespace(weight=torch.zeros(7, 4))  # a head with no bias attribute at all
    assert lm_head(model(bare)) is bare.weight
    with pytest.raises(ValueError, match=r"bias-free linear LM head; SimpleNamespace has Linear; use step.logits=full"):
        lm_head(model(torch.nn.Linear(4, 7)))
    with pytest.raises(ValueError, match=r"SimpleNamespace has NoneType"):
        lm_head(model(None))


def test_step_signals_read_the_method_the_loss_and_only_the_shared_vocabulary(student, rollout):
    """D_t as the method asks (logratio needs the sampled tokens; jsd reads β), τ as the loss says;
    heads padded past the tokenizer are cut to the vocabulary."""
    vocab, mask = len(student.tokenizer), rollout.target_mask
    fwd = forward_pair(student.model, tiny_qwen2(student.tokenizer, seed=1), rollout, grad=False)
    pad = lambda x, extra, value: torch.cat([x, torch.full((*x.shape[:-1], extra), value)], dim=-1)  # noqa: E731
    padded = Forward(pad(fwd.student_logits, 2, 5.0), pad(fwd.teacher_logits, 5, -5.0), None)
    for divergence, beta in (("logratio", 0.5), ("jsd", 0.2)):
        loss = LossConfig(kind="reverse_kl", normalize="selected", temperature=2.0, beta=beta)
        got = step_signals(padded, rollout, method_config("dear", divergence=divergence), loss, vocab)
        want = objective.token_signals(
            fwd.student_logits,
            fwd.teacher_logits,
            mask,
            sampled_ids=rollout.input_ids[:, 1:],
            divergence=divergence,
            temperature=2.0,
            beta=beta,
        )
        for name in ("entropy", "divergence", "reverse_kl", "student_argmax", "teacher_argmax"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), msg=f"{divergence}: {name}")
        # the check can fail: D_t is not the KL, and β = 0.5 gives another jsd
        assert not torch.allclose(want.divergence, want.reverse_kl)
    half = objective.token_signals(fwd.student_logits, fwd.teacher_logits, mask, divergence="jsd", temperature=2.0)
    assert not torch.allclose(half.divergence, want.divergence)


def test_the_plain_path_is_the_default(student, rollout):
    """Without a step config the models' own logits are read (the LM head runs); grad=False is no grad."""
    model, teacher = copy.deepcopy(student.model), tiny_qwen2(student.tokenizer, seed=1)
    calls = []
    for m in (model, teacher):
        m.lm_head.register_forward_hook(lambda *args: calls.append(1))
    opd, loss = method_config("opd"), LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)
    distill_step(model, teacher, rollout, opd, loss, vocab_size=None)
    assert len(calls) == 2
    fwd, _, _ = select_step(model, teacher, rollout, opd, loss, vocab_size=None)
    assert isinstance(fwd.student_logits, torch.Tensor) and fwd.student_logits.requires_grad and len(calls) == 4
    assert not forward_pair(model, teacher, rollout, grad=False).student_logits.requires_grad
    assert not select_step(model, teacher, rollout, opd, loss, vocab_size=None, grad=False)[
        0
    ].student_logits.requires_grad


def test_each_row_reads_as_itself_alone_to_a_model_with_absolute_positions(student, rollout):
    """RoPE (Qwen2) cannot see a shift of every position of a row; learned absolute positions (GPT-2) can:
    with the rollout's position ids, a left-padded row's logits are those of the row run alone, unpadded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(student.tokenizer), n_positions=64, n_embd=16, n_layer=2, n_head=2)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    fwd = forward_pair(model, model, rollout, grad=False)
    padded = (rollout.attention_mask[:, 0] == 0).nonzero().flatten().tolist()
    assert padded  # the check can fail: some rows are left-padded
    for row in padded:
        first = int(rollout.attention_mask[row].argmax())
        cols = rollout.target_mask[row].nonzero().flatten()
        with torch.no_grad():
            alone = model(input_ids=rollout.input_ids[row, first:][None]).logits[0]
        torch.testing.assert_close(fwd.student_logits[row, cols], alone[cols - first], atol=1e-4, rtol=1e-4)


class Recorder(torch.nn.Module):
    """Stands in for a model: records what a forward is handed, returns logits of zeros."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.seen = vocab, []
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, **kw):
        self.seen.append(kw)
        batch, length = kw["input_ids"].shape
        hidden = (torch.zeros(batch, length, 2),) if kw["output_hidden_states"] else None
        return SimpleNamespace(logits=torch.zeros(batch, length, self.vocab) + self.weight, hidden_states=hidden)


def test_the_forward_gets_the_rollouts_layout_and_keeps_no_cache(rollout):
    """Input ids, attention mask and position ids as the rollout lays them out (the mask is not left to a
    model's guess from the position ids), no KV cache, and no hidden states asked of the teacher."""
    student, teacher = Recorder(9), Recorder(9)
    forward_pair(student, teacher, rollout, hidden_layer=-1)
    (s,), (t,) = student.seen, teacher.seen
    for kw in (s, t):
        assert kw.keys() == {"input_ids", "attention_mask", "position_ids", "use_cache", "output_hidden_states"}
        assert kw["input_ids"] is rollout.input_ids and kw["attention_mask"] is rollout.attention_mask
        assert kw["position_ids"] is rollout.position_ids and kw["use_cache"] is False
    assert s["output_hidden_states"] is True and not t["output_hidden_states"]


@pytest.mark.parametrize("logits", ["full", "chunked"])
def test_the_heads_run_on_the_responses_positions_only_and_the_step_is_unchanged(student, rollout, logits):
    """The prompt's columns are never targets, so the step projects only columns P-1 … L-2: the LM heads see
    L-P positions a row, and the loss and gradient are those computed over every column."""
    from dear.config.schema import StepConfig

    model, teacher = copy.deepcopy(student.model), tiny_qwen2(student.tokenizer, seed=1)
    rows = []
    model.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    teacher.lm_head.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    opd, loss = method_config("opd"), LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)
    step = StepConfig(micro_batch_size=None, logits=logits, gradient_checkpointing=False)
    got, _ = distill_step(model, teacher, rollout, opd, loss, vocab_size=None, step=step)
    width, prompt = rollout.input_ids.shape[1], rollout.prompt_width
    if logits == "full":
        assert rows == [width - prompt + 1, width - prompt + 1]  # logits_to_keep: P-1 … L-1, the last dropped
    fwd = forward_pair(model, teacher, rollout, logits=logits, start=prompt - 1)
    assert fwd.student_logits.shape[1] == width - prompt == fwd.teacher_logits.shape[1]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    whole = forward_pair(model, teacher, rollout, logits=logits)  # every column
    want, _ = objective.distill_loss(
        whole.student_logits,
        whole.teacher_logits,
        rollout.target_mask.float(),
        kind="reverse_kl",
        sampled_ids=rollout.input_ids[:, 1:],
        mask=rollout.target_mask,
        normalize="selected",
    )
    want.backward()
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="start must lie in"):
        forward_pair(model, teacher, rollout, start=prompt)


@pytest.mark.parametrize("logits", ["full", "chunked"])
def test_the_steps_loss_reuses_the_signals_rows_for_the_reverse_kl(student, rollout, logits, monkeypatch):
    """With the reverse KL the loss's forward takes ℓ and the log-normalisers from the token signals (rows are
    loaded only by the backward); the gradient is the one the loss computes by itself."""
    import dear.distill.step as step_module
    import dear.objective.chunked as chunked
    from dear.config.schema import StepConfig

    teacher = tiny_qwen2(student.tokenizer, seed=1)
    opd, loss = method_config("opd"), LossConfig(kind="reverse_kl", normalize="selected", temperature=1.3, beta=0.5)
    step = StepConfig(micro_batch_size=None, logits=logits, gradient_checkpointing=False)
    loaded = []
    real = chunked.load_rows
    monkeypatch.setattr(chunked, "load_rows", lambda *a, **k: loaded.append(1) or real(*a, **k))
    grads = []
    for reuse in (True, False):
        if not reuse:
            monkeypatch.setattr(step_module, "_known_rows", lambda *a: None)
        model = copy.deepcopy(student.model)
        loaded.clear()
        value, _ = distill_step(model, teacher, rollout, opd, loss, vocab_size=None, step=step)
        grads.append((value, [p.grad.clone() for p in model.parameters() if p.grad is not None], len(loaded)))
    (fast, fast_grads, fast_loads), (plain, plain_grads, plain_loads) = grads
    assert fast_loads > 0 and plain_loads == 2 * fast_loads  # the backward's loads only, against forward + backward
    torch.testing.assert_close(fast, plain)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("logits, reused", [("full", True), ("chunked", False)])
def test_under_autocast_only_materialised_logits_lend_the_loss_their_rows(
    student, rollout, logits, reused, monkeypatch
):
    """bf16 rows of an LM head may round differently in the backward's chunks than in the signals' pass, so under
    autocast the chunked loss normalises its own rows; full logits are the same tensor in both passes."""
    import dear.objective.chunked as chunked
    from dear.config.schema import StepConfig

    teacher = tiny_qwen2(student.tokenizer, seed=1)
    opd, loss = method_config("opd"), LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)
    step = StepConfig(micro_batch_size=None, logits=logits, gradient_checkpointing=False)
    forward_loads = []
    real = chunked._ChunkedTokenLoss.forward

    def forward(ctx, *args):
        forward_loads.append(args[-1] is not None)  # known rows given
        return real(ctx, *args)

    monkeypatch.setattr(chunked._ChunkedTokenLoss, "forward", staticmethod(forward))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distill_step(copy.deepcopy(student.model), teacher, rollout, opd, loss, vocab_size=None, step=step)
    assert forward_loads == [reused]
