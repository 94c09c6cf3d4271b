"""What the SmolLM2 table (dear/conf/table/smollm2.yaml) stands on: a benchmark every run scores alike, whose
problems the teacher never tuned on (``benchmark.seed``, ``benchmark.unseen_by``); the untouched student's answers
evaluated once and read back by every later run (``eval.reuse_before``); finished runs that drop their optimizer
state (``checkpoint.keep=false``); and a grid that runs seed by seed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_preflight import run as cli  # noqa: F401  (the fixture: dear-train in this process, Hydra's app stubbed)

from dear.config.schema import ConfigError, tune_recipe
from dear.models.load import load_model
from dear.models.tuned import training_problems
from dear.preflight.settings import train_config
from dear.tables.grid import Grid, Table
from dear.train import train
from dear.training.benchmark import build_evaluator, eval_problems

from conftest import TINY_RUN, compose

PAIR = ["experiment=smollm2-chain_sum", "benchmark=rg-chain_sum-unseen"]  # composes without loading a model


def problems(*overrides: str) -> list:
    return eval_problems(train_config(compose([*PAIR, *overrides]), machine=False))


def test_the_table_benchmark_is_300_distinct_problems_the_teacher_never_saw_and_the_same_for_every_seed():
    pytest.importorskip("reasoning_gym")
    first, other = problems("seed=0"), problems("seed=3")
    assert [p.id for p in first] == [p.id for p in other]  # benchmark.seed=0: every run the same problems
    questions = [p.question for p in first]
    assert len(questions) == len(set(questions)) == 300
    seen = {p.question for p in training_problems(tune_recipe("smollm2-135m-chain_sum", "test"))}
    assert not seen & set(questions)
    # without unseen_by, the same draws repeat and meet the teacher's training set (why the preset exists)
    drawn = problems("benchmark.unseen_by=null")
    assert len({p.question for p in drawn}) < 300 and seen & {p.question for p in drawn}


def test_a_benchmark_seed_fixes_the_problems_and_null_follows_the_run_seed():
    pytest.importorskip("reasoning_gym")
    follows = ["benchmark.seed=null", "benchmark.unseen_by=null", "benchmark.limit=20"]
    assert [p.id for p in problems("seed=0", *follows)] != [p.id for p in problems("seed=1", *follows)]
    fixed = ["benchmark.seed=7", "benchmark.unseen_by=null", "benchmark.limit=20"]
    assert [p.id for p in problems("seed=0", *fixed)] == [p.id for p in problems("seed=1", *fixed)]
    assert problems("seed=0", *fixed)[0].id == "rg-chain_sum/7/0"


@pytest.mark.parametrize(
    "override, says",
    [
        ("benchmark.unseen_by=no-such-model", "benchmark.unseen_by=no-such-model names no model preset"),
        ("benchmark.unseen_by=smollm2-135m", "smollm2-135m: that model is not fine-tuned here"),
    ],
)
def test_unseen_by_a_model_that_is_not_a_tuned_preset_is_refused_in_one_line(cli, override, says):  # noqa: F811
    line = cli.refused("dear-train", *PAIR, override)
    assert says in line, line


def test_asking_for_more_unseen_problems_than_exist_says_so():
    pytest.importorskip("reasoning_gym")
    small = ["benchmark.options.max_terms=2", "benchmark.limit=250"]  # 2 one-digit terms: 200 sums at most
    with pytest.raises(ConfigError, match=r"has only \d+ distinct problems .* lower benchmark.limit=250"):
        problems(*small)


# --- the untouched student's answers, evaluated once -----------------------------------------------------------


def toy_evaluator(toy_cache):
    s = train_config(compose(TINY_RUN + [f"cache_dir={toy_cache}"]), machine=False)
    loaded = load_model(s.model, s.cache_dir, s.toy_task, trainable=False, progress=False)
    return build_evaluator(s, loaded, eval_problems(s)), loaded.model


def test_kept_answers_are_read_back_for_the_same_weights_and_never_for_others(tmp_path, toy_cache, monkeypatch):
    evaluator, model = toy_evaluator(toy_cache)
    first = evaluator.evaluate(model, reuse=tmp_path)
    assert len(list(tmp_path.glob("toy-*.json"))) == 1

    def no_generation(_model):
        raise AssertionError("generated again")

    monkeypatch.setattr(evaluator, "_generate", no_generation)
    again = evaluator.evaluate(model, reuse=tmp_path)
    assert again.summary == first.summary and again.records == first.records

    with torch.no_grad():  # other weights (one entry moved): their own answers, generated
        next(model.parameters()).view(-1)[0] += 1.0
    with pytest.raises(AssertionError, match="generated again"):
        evaluator.evaluate(model, reuse=tmp_path)
    with pytest.raises(AssertionError, match="generated again"):  # and nothing is kept without a folder
        evaluator.evaluate(model)


def test_sampled_answers_are_never_kept(tmp_path, toy_cache):
    evaluator, model = toy_evaluator(toy_cache)
    sampled = dataclasses.replace(evaluator, temperature=1.0)
    sampled.evaluate(model, reuse=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_second_run_reads_the_untouched_students_answers_and_scores_them_alike(tmp_path, toy_cache, caplog):
    runs = [compose(TINY_RUN + [f"cache_dir={toy_cache}", f"seed={s}", "eval.reuse_before=true"]) for s in (0, 1)]
    before = train(runs[0], tmp_path / "a")["curve"][0]["accuracy"]
    kept = list((toy_cache / "evals").glob("toy-*.json"))
    assert kept, "the untouched student's answers were not kept"
    with caplog.at_level("INFO", logger="dear.eval.runner"):
        metrics = train(runs[1], tmp_path / "b")
    assert "not generated again" in caplog.text
    assert metrics["curve"][0]["accuracy"] == before
    assert metrics["curve"][0]["heldout_reverse_kl"] != pytest.approx(0)  # the held-out KL is still measured
    responses = [json.loads(x) for x in (tmp_path / "b" / "responses" / "toy.jsonl").read_text().splitlines()]
    assert len(responses) == 8  # responses/ holds the final evaluation, the trained student's own


def test_reuse_before_false_keeps_nothing(tmp_path):
    cache = tmp_path / "cache"
    assert "eval.reuse_before=false" in TINY_RUN
    train(compose(TINY_RUN + [f"cache_dir={cache}"]), tmp_path / "run")
    assert not (cache / "evals").exists()


# --- a finished run without its optimizer state; a grid seed by seed ------------------------------------------


def test_keep_false_removes_the_checkpoint_of_a_finished_run_only(tmp_path, toy_cache):
    train(compose(TINY_RUN + [f"cache_dir={toy_cache}", "checkpoint.keep=false"]), tmp_path / "dropped")
    assert (tmp_path / "dropped" / "metrics.json").is_file() and (tmp_path / "dropped" / "student").is_dir()
    assert not (tmp_path / "dropped" / "checkpoints" / "last.ckpt").exists()
    train(compose(TINY_RUN + [f"cache_dir={toy_cache}"]), tmp_path / "kept")
    assert (tmp_path / "kept" / "checkpoints" / "last.ckpt").is_file()


def test_a_grid_runs_seed_by_seed_so_a_stopped_grid_leaves_pairs(tmp_path):
    table = Table("t", {"opd": ("method=opd",), "dear": ("method=dear",)}, (0, 1, 2), {"dear": "opd"}, None)
    grid = Grid("g", tmp_path, [], [], [table])
    assert [(r.row, r.seed) for r in grid.runs()] == [
        ("opd", 0),
        ("dear", 0),
        ("opd", 1),
        ("dear", 1),
        ("opd", 2),
        ("dear", 2),
    ]
