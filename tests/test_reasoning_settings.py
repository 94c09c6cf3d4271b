"""Settings for reasoning models: chat-template arguments (Qwen3's ``enable_thinking``) reach the student, the
teacher and the bridge; generation lengths come from the model's preset and are refused when a prompt plus
them outgrows the context; offline subsets of a benchmark say so in metrics, logs and tables."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from dear.data.benchmarks import Problem, format_prompt, load_benchmark, subset_note
from dear.data.toy import build_tokenizer
from dear.distill.teacher_view import TeacherPrompts, templates_differ
from dear.eval.runner import Evaluator
from dear.models.load import NoRoom, check_room
from dear.tables.collate import table
from dear.tables.reproduce import markdown
from dear.train import train

from conftest import TINY_RUN, compose

# A chat template that, like Qwen3's, opens the answer with an empty think block when thinking is off.
THINKING = (
    "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<assistant>"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}"
)
PROBLEM = Problem(id="p/1", question="1 2 3", reference="6", kind="toy")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"))
    tokenizer.chat_template = THINKING
    return tokenizer


def loaded(name, tokenizer, kwargs=None, chat_template=True):
    return SimpleNamespace(name=name, tokenizer=tokenizer, chat_template=chat_template, template_kwargs=kwargs)


def test_template_arguments_reach_the_prompt(tok):
    on = format_prompt(PROBLEM, tok, chat_template=True)
    off = format_prompt(PROBLEM, tok, chat_template=True, template_kwargs={"enable_thinking": False})
    assert "<think></think>" not in on and off.endswith("<assistant><think></think>")


def test_a_teacher_that_thinks_differently_is_bridged_in_its_own_format(tok):
    student, teacher = loaded("s", tok), loaded("t", tok, {"enable_thinking": False})
    assert templates_differ(student, teacher) and not templates_differ(student, loaded("t", tok))
    bridge = TeacherPrompts.for_problems([PROBLEM], student, teacher)
    ((student_text, teacher_text),) = bridge.by_student_prompt.items()
    assert "<think></think>" not in student_text and teacher_text.endswith("<think></think>")


def test_the_evaluator_formats_with_the_students_template_arguments(tok):
    ev = Evaluator("b", [PROBLEM], tok, chat_template=True, template_kwargs={"enable_thinking": False})
    assert ev.prompts[0].endswith("<think></think>")


@pytest.mark.parametrize(
    ("experiment", "length", "teacher_thinks"),
    [("qwen-1.5b-qwen3-4b", 2048, False), ("qwen3-1.7b-4b", 8192, True), ("r1-1.5b-7b", 8192, None)],
)
def test_paper_pairs_generate_as_long_as_their_student_needs(experiment, length, teacher_thinks):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.model.max_new_tokens == length
    assert cfg.rollout.max_new_tokens == length and cfg.benchmark.max_new_tokens == length
    kwargs = cfg.teacher.get("chat_template_kwargs") or {}
    assert kwargs.get("enable_thinking") == teacher_thinks


def test_qwen3_presets_say_how_they_think():
    for name in ("qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"):
        assert compose([f"model={name}", "setup=real-math"]).model.chat_template_kwargs == {"enable_thinking": True}


def test_a_prompt_plus_new_tokens_past_the_context_is_refused_in_one_line(tok):
    model = loaded("toy", tok, chat_template=False)
    longest = max(len(tok(format_prompt(p, tok, chat_template=False)).input_ids) for p in [PROBLEM])
    check_room(model, [PROBLEM], 100 - longest, 100, "b")  # exactly full: allowed
    with pytest.raises(NoRoom, match=rf"longest b prompt is {longest} tokens.*exceed its context of 100"):
        check_room(model, [PROBLEM], 101 - longest, 100, "b")


def test_a_run_whose_benchmark_outgrows_the_context_stops_before_the_teacher_loads(tmp_path, toy_cache, monkeypatch):
    import dear.train

    loads = []
    real = dear.train.load_model
    monkeypatch.setattr(
        dear.train, "load_model", lambda *a, **k: loads.append(k.get("group")) or real(*a, **k)
    )  # teacher: group="teacher"
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", "benchmark.max_new_tokens=250"])  # the toy context: 256
    with pytest.raises(NoRoom, match=r"toy-student: the longest toy \(benchmark.max_new_tokens\) prompt"):
        train(cfg, tmp_path)
    assert loads == [None] and not (tmp_path / "metrics.json").exists()


def test_offline_subsets_say_so():
    assert len(load_benchmark("math500")) == 311 and len(load_benchmark("aime25")) == 15
    assert subset_note("math500").startswith("311 of 500 problems") and subset_note("aime24") is None


def fake_run(benchmark: str) -> dict:
    config = {
        "model": {"name": "s"},
        "teacher": {"name": "t"},
        "method": {"name": "dear"},
        "loss": {"normalize": "all"},
    }
    bench = {"accuracy_before": 0.1, "accuracy_after": 0.2, "gain": 0.1, "subset": subset_note(benchmark)}
    kl = {"after": 0.5}
    return {"config": config, "benchmarks": {benchmark: bench}, "accuracy_auc": 0.15, "heldout_reverse_kl": kl}


def test_tables_mark_an_offline_subset():
    t, rows, _ = table([(Path("a"), fake_run("math500")), (Path("b"), fake_run("aime24"))])
    text = markdown("runs", [(t, rows)])
    assert "Benchmark is an offline subset: math500: 311 of 500 problems" in text
    assert "| method=dear, benchmark=math500 | 1/1 |" in text and "| method=dear, benchmark=aime24 | 1/1 |" in text


def test_a_training_run_records_its_benchmark_subset(tmp_path, toy_cache):
    metrics = train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=1"]), tmp_path)
    assert metrics["benchmarks"]["toy"]["subset"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["benchmarks"]["toy"]["subset"] is None


def test_loading_an_offline_subset_says_so_in_the_log(caplog):
    from dear.training.benchmark import eval_problems

    with caplog.at_level("WARNING", logger="dear.training.benchmark"):
        eval_problems(load_config_for("math500"))
        eval_problems(load_config_for("aime24"))
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"benchmark math500 is an offline subset: {subset_note('math500')}"]


def load_config_for(benchmark: str):
    from dear.preflight.settings import train_config

    return train_config(compose([f"benchmark={benchmark}"]), machine=False)
