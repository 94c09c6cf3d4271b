"""The rollout layout every later stage reads: masks, padding, position ids, grouping, greedy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dear.data.toy import build_tokenizer
from dear.distill import rollout as rollout_module
from dear.distill.rollout import encode_prompts, from_texts, generate

from tiny import tiny_qwen2

PROMPTS = ["1+2?", "3+4+5?"]  # 4 and 6 characters: the first is left-padded by 2


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("toy-tok"))


class Scripted(torch.nn.Module):
    """Stands in for a model: ``generate`` appends the given responses to the prompts it is given."""

    def __init__(self, responses: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.responses = responses
        self.seen: dict = {}

    def generate(self, input_ids, attention_mask, **kw):
        self.seen = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "training": self.training,
            "grad": torch.is_grad_enabled(),
            **kw,
        }
        return torch.cat([input_ids, self.responses[: input_ids.shape[0]]], dim=1)


def ids(tok, text: str) -> list[int]:
    return tok.convert_tokens_to_ids(list(text))


def scripted_rollout(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    responses = torch.tensor(
        [
            [*ids(tok, "12"), eos, pad, pad],  # ends after two tokens
            ids(tok, "34567"),  # never ends: cut at max_new_tokens
            [eos, pad, pad, pad, pad],  # ends at once
            [*ids(tok, "8"), eos, *ids(tok, "9"), eos, *ids(tok, "1")],  # junk after the first end-of-text
        ]
    )
    model = Scripted(responses)
    return model, generate(model, tok, PROMPTS * 2, max_new_tokens=5)


def test_response_mask_covers_sampled_tokens_through_the_first_end_of_text(tok):
    _, r = scripted_rollout(tok)
    P = 6
    assert r.prompt_width == P and r.input_ids.shape == (4, P + 5)
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert not r.response_mask[:, :P].any(), "the prompt is never in the response mask"
    assert torch.equal(r.response_mask[:, P:], expected)
    # the end-of-text token itself is learned: it sits inside the mask
    eos_cols = [P + 2, None, P + 0, P + 1]
    for row, col in enumerate(eos_cols):
        if col is not None:
            assert r.input_ids[row, col] == tok.eos_token_id and r.response_mask[row, col]
    assert torch.equal(r.target_mask, r.response_mask[:, 1:])
    assert r.texts == ["12", "34567", "", "8"]


def test_padding_is_outside_the_masks_and_replaces_junk_after_end_of_text(tok):
    _, r = scripted_rollout(tok)
    P, pad = r.prompt_width, tok.pad_token_id
    # after the first end-of-text every token becomes padding, out of both masks
    assert r.input_ids[3, P + 2 :].tolist() == [pad, pad, pad]
    response = r.input_ids[:, P:]
    assert not r.response_mask[:, P:][response == pad].any()
    assert not r.attention_mask[:, P:][response == pad].any()
    # left padding of the shorter prompt: out of the attention mask, never a response token
    assert r.input_ids[0, :2].tolist() == [pad, pad] and r.attention_mask[0, :2].tolist() == [0, 0]
    assert r.attention_mask[0, 2:P].tolist() == [1] * 4 and r.attention_mask[1, :P].tolist() == [1] * 6
    # past the prompt, what is attended to is exactly what is learned
    assert torch.equal(r.attention_mask[:, P:].bool(), r.response_mask[:, P:])


def test_position_ids_count_real_tokens_only(tok):
    _, r = scripted_rollout(tok)
    assert r.position_ids.tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 6, 6],  # 2 left pads, 4 prompt tokens, "12</s>", padding
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10],  # 6 prompt tokens, 5 response tokens
        [0, 0, 0, 1, 2, 3, 4, 4, 4, 4, 4],  # "</s>" at once
        [0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7],  # "8</s>", then padding
    ]


def test_n_samples_of_a_prompt_are_consecutive_rows(tok):
    responses = torch.tensor([ids(tok, f"{i}") + [tok.eos_token_id] for i in range(6)])
    model = Scripted(responses)
    r = generate(model, tok, PROMPTS, n=3, max_new_tokens=2)
    sent = model.seen["input_ids"]
    first = tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
    second = tok(PROMPTS[1], add_special_tokens=False)["input_ids"]
    for row in range(6):  # rows i*n … i*n+n-1 belong to prompt i
        real = sent[row][model.seen["attention_mask"][row].bool()].tolist()
        assert real == (first if row < 3 else second), row
    assert r.texts == ["0", "1", "2", "3", "4", "5"]
    assert model.seen["max_new_tokens"] == 2 and model.seen["eos_token_id"] == tok.eos_token_id


@pytest.fixture(scope="module")
def toy_student(tok):
    return SimpleNamespace(model=tiny_qwen2(tok), tokenizer=tok)


def test_greedy_is_deterministic_and_sampling_is_asked_for(toy_student):
    m, tok = toy_student.model, toy_student.tokenizer
    prompts = ["1+2+3?", "4+5?", "6+7+8+9?"]
    torch.manual_seed(0)
    a = generate(m, tok, prompts, n=2, greedy=True, max_new_tokens=12)
    torch.manual_seed(1)
    b = generate(m, tok, prompts, n=2, greedy=True, max_new_tokens=12)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.response_mask, b.response_mask)
    assert a.texts[0::2] == a.texts[1::2], "greedy samples of one prompt are identical"
    model = Scripted(torch.tensor([[tok.eos_token_id]] * 2))
    generate(model, tok, prompts[:2], temperature=0.7, max_new_tokens=1)
    assert model.seen["do_sample"] is True and model.seen["temperature"] == 0.7
    # on-policy samples come from the whole distribution: no top-k / top-p from a generation config
    assert "top_k" in model.seen and model.seen["top_k"] is None
    assert "top_p" in model.seen and model.seen["top_p"] is None
    generate(model, tok, prompts[:2], greedy=True, max_new_tokens=1)
    assert model.seen["do_sample"] is False and model.seen["temperature"] is None


def test_a_forward_pass_on_the_rollout_reproduces_the_greedy_tokens(toy_student):
    """The layout (masks, position ids) is the one generate used: logits at t predict token t+1."""
    m, tok = toy_student.model, toy_student.tokenizer
    r = generate(m, tok, ["1+2+3?", "4+5?", "6+7+8+9+1?"], greedy=True, max_new_tokens=16)
    assert not r.response_mask[:, : r.prompt_width].any()
    with torch.no_grad():
        logits = m(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=r.position_ids).logits
    predicted = logits[:, :-1].argmax(-1)
    mask = r.target_mask
    assert mask.sum() >= 3
    assert torch.equal(predicted[mask], r.input_ids[:, 1:][mask])


def test_moving_a_rollout_keeps_every_field(tok):
    _, r = scripted_rollout(tok)
    moved = r.to(torch.device("cpu"))
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert torch.equal(getattr(moved, name), getattr(r, name)), name
    assert moved.prompt_width == r.prompt_width and moved.texts == r.texts


def test_generation_runs_in_eval_mode_without_grad_and_restores_the_mode(tok):
    model = Scripted(torch.tensor([[tok.eos_token_id]] * 2)).train()
    generate(model, tok, PROMPTS, max_new_tokens=1)
    assert model.seen["training"] is False and model.seen["grad"] is False
    assert model.training, "the model is back in training mode"
    assert model.seen["pad_token_id"] == tok.pad_token_id
    generate(model.eval(), tok, PROMPTS, max_new_tokens=1)
    assert not model.training


def test_prompts_are_encoded_as_written_even_by_a_tokenizer_that_adds_special_tokens(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer(tmp_path)
    tok._tokenizer.post_processor = TemplateProcessing(single="</s> $A", special_tokens=[("</s>", tok.eos_token_id)])
    assert tok("1+2?")["input_ids"][0] == tok.eos_token_id  # this tokenizer would add a token by default
    model = Scripted(torch.tensor([[tok.eos_token_id]]))
    generate(model, tok, ["1+2?"], max_new_tokens=1)
    assert model.seen["input_ids"][0].tolist() == ids(tok, "1+2?")


def test_a_static_cache_samples_what_the_dynamic_one_does(tok):
    """rollout.cache=static (what torch.compile needs on a GPU) changes how generation keeps its keys and
    values, not what it samples: same seed, same tokens, greedy or sampled."""
    model = tiny_qwen2(tok)
    for greedy in (True, False):
        torch.manual_seed(0)
        dynamic = generate(model, tok, PROMPTS, n=2, max_new_tokens=10, greedy=greedy, cache="dynamic")
        torch.manual_seed(0)
        static = generate(model, tok, PROMPTS, n=2, max_new_tokens=10, greedy=greedy, cache="static")
        assert torch.equal(dynamic.input_ids, static.input_ids)
        assert torch.equal(dynamic.response_mask, static.response_mask)


def test_the_cache_setting_reaches_generate(tok):
    """auto is the dynamic cache on the CPU; static asks for a static cache and compiles only when told."""
    model = Scripted(torch.full((2, 3), tok.eos_token_id))
    generate(model, tok, PROMPTS, n=1, cache="auto", compile=True)
    assert "cache_implementation" not in model.seen  # CPU: auto is dynamic
    generate(model, tok, PROMPTS, n=1, cache="static", compile=False)
    assert model.seen["cache_implementation"] == "static" and model.seen["disable_compile"] is True
    generate(model, tok, PROMPTS, n=1, cache="static", compile=True)
    assert model.seen["disable_compile"] is False


def test_given_responses_are_laid_out_as_generate_lays_out_samples(tok):
    """from_texts (sft's references, offline KD's teacher samples) gives generate's layout: the scripted
    rollout again, from its texts (a response is cut to max_new_tokens, its end-of-text kept)."""
    _, sampled = scripted_rollout(tok)
    eos = tok.eos_token
    given = from_texts(tok, PROMPTS * 2, ["12" + eos, "345678", eos, "8" + eos], max_new_tokens=5, device="cpu")
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        want = getattr(sampled, name)
        got = getattr(given, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    assert given.prompt_width == sampled.prompt_width == 6 and given.texts == ["12", "34567", "", "8"]
    # nothing to learn from: one padding column, out of both masks
    empty = from_texts(tok, ["1+2?"], [""], max_new_tokens=5, device="cpu")
    assert empty.input_ids.tolist() == [[*ids(tok, "1+2?"), tok.pad_token_id]] and empty.texts == [""]
    assert empty.attention_mask.tolist() == [[1, 1, 1, 1, 0]] and not empty.response_mask.any()


def test_given_responses_are_encoded_as_written_even_by_a_tokenizer_that_adds_special_tokens(tmp_path):
    from tokenizers.processors import TemplateProcessing

    tok = build_tokenizer(tmp_path)
    tok._tokenizer.post_processor = TemplateProcessing(single="</s> $A", special_tokens=[("</s>", tok.eos_token_id)])
    r = from_texts(tok, ["1+2?"], ["3" + tok.eos_token], max_new_tokens=4, device="cpu")
    assert r.input_ids.tolist() == [[*ids(tok, "1+2?3"), tok.eos_token_id]]
    assert r.response_mask.tolist() == [[False] * 4 + [True, True]] and r.prompt_width == 4


def test_generation_defaults(tok):
    """One sample a prompt, sampled at temperature 1, up to 64 tokens, a dynamic cache, never compiled unasked."""
    model = Scripted(torch.tensor([[tok.eos_token_id]] * 2))
    r = generate(model, tok, PROMPTS)
    assert model.seen["max_new_tokens"] == 64 and model.seen["do_sample"] is True and model.seen["temperature"] == 1.0
    assert "cache_implementation" not in model.seen
    assert r.response_mask.dtype == torch.bool and r.attention_mask.dtype == torch.long
    generate(model, tok, PROMPTS, cache="static")
    assert model.seen["cache_implementation"] == "static" and model.seen["disable_compile"] is True


def test_auto_is_a_static_cache_on_a_gpu(tok, monkeypatch):
    """A model that says it lives on a GPU (there is none here): auto asks for the static cache, and the
    prompts are encoded for the model's device."""
    devices, encode = [], rollout_module.encode_prompts
    monkeypatch.setattr(
        rollout_module, "encode_prompts", lambda t, prompts, device: devices.append(device) or encode(t, prompts, "cpu")
    )
    model = Scripted(torch.full((2, 3), tok.eos_token_id))
    monkeypatch.setattr(model, "parameters", lambda: iter([SimpleNamespace(device=torch.device("cuda"))]))
    generate(model, tok, PROMPTS, cache="auto")
    assert devices == [torch.device("cuda")]
    assert model.seen["cache_implementation"] == "static" and model.seen["disable_compile"] is True


def test_rollouts_and_prompts_move_to_the_device_asked_for(tok):
    """Every tensor goes to the device (the meta device here: no GPU needed to see that they moved)."""
    _, r = scripted_rollout(tok)
    moved = r.to(torch.device("meta"))
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert getattr(moved, name).device.type == "meta", name
    enc = encode_prompts(tok, PROMPTS, torch.device("meta"))
    assert enc.keys() == {"input_ids", "attention_mask"}
    assert all(v.device.type == "meta" for v in enc.values())


def test_given_responses_land_on_the_device_asked_for(tok):
    forced = from_texts(tok, PROMPTS[:2], ["12", "3"], max_new_tokens=4, device=torch.device("meta"))
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert getattr(forced, name).device.type == "meta", name
    assert forced.texts == ["12", "3"]


def test_an_unknown_cache_is_refused_in_one_line(tok):
    model = Scripted(torch.full((2, 3), tok.eos_token_id))
    for cache in ("Static", "paged"):
        with pytest.raises(ValueError, match=f"cache must be one of auto, dynamic, static; got '{cache}'"):
            generate(model, tok, PROMPTS, cache=cache)


def test_a_micro_batch_is_its_rows_at_the_batchs_full_width(tok):
    _, r = scripted_rollout(tok)
    part = r.rows(slice(1, 3))
    for name in ("input_ids", "attention_mask", "position_ids", "response_mask"):
        assert torch.equal(getattr(part, name), getattr(r, name)[1:3]), name
    assert part.prompt_width == r.prompt_width and part.texts == r.texts[1:3] == ["34567", ""]


def test_a_shared_prefix_runs_once_and_answers_as_the_whole_prompts_do(toy_student):
    """share_prefix (evaluation): the prompts' common first tokens run once for every row, then each row's own tokens
    after its padding; the greedy answers and a forward pass over the rollout agree with the plain layout."""
    m, tok = toy_student.model, toy_student.tokenizer
    prompts = ["1+2+3+4?", "1+2+5?", "1+2+3+4+5+6?"]  # "1+2+" is common
    plain = generate(m, tok, prompts, n=2, greedy=True, max_new_tokens=12)
    calls = []
    hook = m.register_forward_pre_hook(lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        shared = generate(m, tok, prompts, n=2, greedy=True, max_new_tokens=12, share_prefix=True)
    finally:
        hook.remove()
    assert shared.texts == plain.texts and torch.equal(shared.response_mask.sum(1), plain.response_mask.sum(1))
    assert calls[0] == (1, 4), "the prefix is run once, for one row"
    assert calls[1] == (6, len("1+2+3+4+5+6?") - 4), "then each row's own tokens only"
    width = shared.prompt_width
    assert shared.input_ids[2, :width].tolist()[:4] == ids(tok, "1+2+")  # the prefix first, then padding
    assert shared.attention_mask[2, 4:width].tolist() == [0] * (width - 4 - 2) + [1, 1]  # "1+2+5?": its own 2
    assert not shared.response_mask[:, :width].any()
    with torch.no_grad():
        logits = m(input_ids=shared.input_ids, attention_mask=shared.attention_mask, position_ids=shared.position_ids)
    mask = shared.target_mask
    assert torch.equal(logits.logits[:, :-1].argmax(-1)[mask], shared.input_ids[:, 1:][mask])
