"""The toy task, its tokenizer and the cached toy models."""

from __future__ import annotations

import random

import pytest
import torch

from dear.data.toy import (
    EOS,
    ToyTask,
    ToyTaskConfig,
    answer,
    build_tokenizer,
    final_answer,
    grade,
    parse_terms,
    prompt_text,
    worked_solution,
)
from dear.models.toy import CacheNotWritable, ToyModelSpec, ensure_toy_model


def replay(terms: list[int], solution: str) -> list[tuple[list[int], int]]:
    """Check every step adds the next 1 or 2 digits to the running total; return (chunk, total) pairs."""
    body = solution.removesuffix(EOS).split("#")[0]
    steps, used, total = [], 0, 0
    for k, step in enumerate(body.split(";")):
        assert step.startswith("+") == (k > 0), step
        head, written = step.removeprefix("+").split("=")
        chunk = [int(x) for x in head.split("+")]
        assert chunk == terms[used : used + len(chunk)] and 1 <= len(chunk) <= 2, (
            f"{step} does not take the next digits"
        )
        used += len(chunk)
        total += sum(chunk)
        assert int(written) == total, f"{step}: the total should be {total}"
        steps.append((chunk, total))
    assert used == len(terms)
    return steps


def test_worked_solutions_are_valid_and_branch():
    rng = random.Random(0)
    task = ToyTask(ToyTaskConfig())
    for _ in range(200):
        terms = task.sample_train(rng)
        sol = worked_solution(terms, rng)
        steps = replay(terms, sol)
        assert steps[-1][1] == sum(terms) and final_answer(sol) == answer(terms)
        assert parse_terms(prompt_text(terms)) == terms
    terms = [3, 8, 5, 1]
    firsts = {worked_solution(terms, random.Random(seed)).split(";")[0] for seed in range(50)}
    assert firsts == {"3=3", "3+8=11"}  # one digit or two: both are valid first steps
    whole = {worked_solution(terms, random.Random(seed)) for seed in range(200)}
    assert len(whole) == 5  # the compositions of 4 into parts of 1 and 2: every path is reachable
    assert {final_answer(w) for w in whole} == {"17"}


def test_held_out_split_is_fixed_and_never_trained_on():
    a, b = ToyTask(ToyTaskConfig(seed=7)), ToyTask(ToyTaskConfig(seed=7))
    assert a.held_out == b.held_out and len(a.held_out) == 500
    assert ToyTask(ToyTaskConfig(seed=8)).held_out != a.held_out
    held = {prompt_text(t) for t in a.held_out}
    rng = random.Random(1)
    assert not any(prompt_text(a.sample_train(rng)) in held for _ in range(3000))


def test_grading_is_exact_match_on_the_final_answer():
    assert grade("3+8=11;+5=16;+1=17#17", "17")
    assert not grade("3+8=11;+5=16;+1=17#18", "17")
    assert not grade("3+8=11;+5=16;+1=17", "17")  # no answer marker
    assert grade("1+2#17#17", "17")  # the last marker counts


def test_bad_task_config_is_refused():
    with pytest.raises(ValueError, match="min_terms"):
        ToyTask(ToyTaskConfig(min_terms=5, max_terms=3))
    with pytest.raises(ValueError, match="max_chunk"):
        ToyTask(ToyTaskConfig(max_chunk=0))


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "3+8+5+1?3+8=11;+5=16;+1=17#17"
    ids = tok.encode(text + EOS, add_special_tokens=False)
    assert len(ids) == len(text) + 1 and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_toy_model_is_cached_and_deterministic(tmp_path, monkeypatch):
    import dear.models.toy

    spec = ToyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, train_steps=3, batch_size=8)
    first = ensure_toy_model("t", spec, ToyTaskConfig(), tmp_path / "a", progress=False)
    with monkeypatch.context() as m:  # a cache hit trains nothing
        m.setattr(dear.models.toy, "train_toy_model", lambda *a, **k: pytest.fail("a cache hit trained a model"))
        assert ensure_toy_model("t", spec, ToyTaskConfig(), tmp_path / "a", progress=False) == first
    other = ensure_toy_model("t", spec, ToyTaskConfig(), tmp_path / "b", progress=False)
    from safetensors.torch import load_file

    wa, wb = load_file(str(first / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_unwritable_cache_raises_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec = ToyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, train_steps=1, batch_size=2)
    with pytest.raises(CacheNotWritable, match="cache_dir="):
        ensure_toy_model("t", spec, ToyTaskConfig(), blocker / "cache", progress=False)


def test_slipped_totals_are_marked_and_later_steps_add_on_to_them():
    from dear.data.toy import noisy_solution

    rng = random.Random(4)
    n_slips = 0
    for _ in range(300):
        terms = [rng.randint(1, 9) for _ in range(rng.randint(3, 6))]
        text, slips = noisy_solution(terms, rng, slip_rate=0.5)
        body = text.removesuffix(EOS).split("#")[0]
        used, total, wrong = 0, 0, 0
        for step in body.split(";"):
            head, written = step.removeprefix("+").split("=")
            chunk = [int(x) for x in head.split("+")]
            assert chunk == terms[used : used + len(chunk)]  # the digits are always the right ones
            used += len(chunk)
            if int(written) != total + sum(chunk):
                wrong += 1
                assert 1 <= abs(int(written) - total - sum(chunk)) <= 2 or int(written) == 0
            total = int(written)  # later steps add on to the total as written
        assert wrong == len(slips) and used == len(terms)
        for a, b in slips:
            assert text[a:b].isdigit() and text[a - 1] == "=" and not text[b].isdigit()
        assert final_answer(text) == str(total)
        n_slips += len(slips)
    assert n_slips > 300


def slipped_spans(solution: str) -> list[tuple[int, int]]:
    """Character spans of the totals that do not add up, found by redoing the sums."""
    spans, pos, total = [], 0, 0
    for step in solution.split("#")[0].split(";"):
        head, written = step.removeprefix("+").split("=")
        start = pos + len(step) - len(written)
        if int(written) != total + sum(int(x) for x in head.split("+")):
            spans.append((start, start + len(written)))
        total = int(written)
        pos += len(step) + 1
    return spans


def test_sft_batch_masks_prompts_padding_and_slips(tmp_path):
    from dear.models.toy import sft_batch

    tok = build_tokenizer(tmp_path)
    ids, attention, labels = sft_batch(ToyTask(ToyTaskConfig()), tok, random.Random(0), 16, slip_rate=0.5)
    q = tok.convert_tokens_to_ids("?")
    n_slips = 0
    for row, att, lab in zip(ids.tolist(), attention.tolist(), labels.tolist()):
        end, length = row.index(q), sum(att)
        assert all(x == -100 for x in lab[: end + 1])  # never learn the prompt
        assert all(x == -100 for x, a in zip(lab, att) if a == 0)  # nor padding
        assert lab[length - 1] == tok.eos_token_id
        # in the solution, exactly the slipped totals are masked; every other token is learned
        solution = "".join(tok.convert_ids_to_tokens(row[end + 1 : length - 1]))
        slipped = {end + 1 + i for a, b in slipped_spans(solution) for i in range(a, b)}
        for i in range(end + 1, length):
            assert lab[i] == (-100 if i in slipped else row[i]), (solution, i - end - 1)
        n_slips += len(slipped_spans(solution))
    assert n_slips >= 8  # slip_rate=0.5 over 16 solutions: the masking above was exercised


def test_building_a_model_leaves_the_global_random_stream_alone(tmp_path):
    spec = ToyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, train_steps=2, batch_size=4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ensure_toy_model("t", spec, ToyTaskConfig(), tmp_path, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_an_unknown_build_schedule_is_refused_before_training():
    with pytest.raises(ValueError, match="schedule must be one of cosine, constant; got 'linear'"):
        ToyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, train_steps=1, schedule="linear")


def test_the_shared_schedule_warms_up_then_holds_or_decays():
    """Toy models and distillation share one schedule: a constant one only warms up, cosine ends at 0."""
    from dear.models.schedule import lr_factor

    constant, cosine = lr_factor(10, 100, "constant"), lr_factor(10, 100, "cosine")
    assert [constant(s) for s in (0, 9, 50, 99)] == [0.1, 1.0, 1.0, 1.0]
    assert cosine(9) == 1.0 and 0.0 <= cosine(100) < 1e-12 and cosine(50) < cosine(20)


@pytest.mark.parametrize(
    "name",
    [
        "toy-student",
        "toy-student-s",
        "toy-student-l",
        "toy-teacher",
        "toy-teacher-s",
        "toy-teacher-l",
        "qwen-7b",
        "smollm2-135m",
    ],
)
def test_a_teacher_preset_is_the_model_preset(name):
    """teacher=X composes conf/model/X.yaml itself, so dear-eval model=X scores the same cached model."""
    from conftest import compose

    cfg = compose([f"model={name}", f"teacher={name}"])
    assert cfg.teacher == cfg.model and cfg.teacher.name == name
