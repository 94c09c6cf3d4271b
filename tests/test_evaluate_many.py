"""Train once, evaluate many: a run follows `benchmark` along its curve and evaluates every preset `eval.benchmarks`
names before and after training (dear/config/presets.py, dear/training/curve.py), one metrics.json entry and one
responses/ file each."""

from __future__ import annotations

import json

import pytest
from test_preflight import run as cli  # noqa: F401  (the fixture: dear-train in this process, Hydra's app stubbed)

from dear.config.presets import benchmarks
from dear.config.schema import ConfigError
from dear.data.benchmarks import load_benchmark, subset_note
from dear.data.toy import ToyTask, parse_terms, prompt_text
from dear.plan import workload
from dear.preflight.settings import train_config
from dear.train import train

from conftest import TINY_RUN, compose


def test_a_run_is_evaluated_on_every_benchmark_it_names(tmp_path, toy_cache):
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", "eval.benchmarks=[toy-long,toy]"])
    metrics = train(cfg, tmp_path)

    assert list(metrics["benchmarks"]) == ["toy", "toy-long"]  # the curve's first; `toy` is not evaluated twice
    assert [row["step"] for row in metrics["curve"]] == [0, 1, 2]  # the curve is the curve benchmark's alone
    toy = metrics["benchmarks"]["toy"]
    assert (toy["accuracy_before"], toy["accuracy_after"]) == (
        metrics["curve"][0]["accuracy"],
        metrics["curve"][-1]["accuracy"],
    )
    for name, entry in metrics["benchmarks"].items():
        rows = [json.loads(line) for line in (tmp_path / "responses" / f"{name}.jsonl").read_text().splitlines()]
        assert metrics["responses"][name] == f"responses/{name}.jsonl"
        assert all(row["id"].startswith(f"{name}/") for row in rows)
        # the file holds the final evaluation the score was computed from
        assert entry["accuracy_after"] == pytest.approx(sum(r["correct"][0] for r in rows) / len(rows))
        assert entry["gain"] == pytest.approx(entry["accuracy_after"] - entry["accuracy_before"])
    assert len((tmp_path / "responses" / "toy-long.jsonl").read_text().splitlines()) == 200  # its preset's limit
    assert len((tmp_path / "responses" / "toy.jsonl").read_text().splitlines()) == 8  # benchmark.limit=8
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["eval"]["benchmarks"] == ["toy-long", "toy"]


def test_the_presets_resolve_against_the_run_and_the_plan_sizes_the_heaviest():
    s = train_config(compose(TINY_RUN + ["eval.benchmarks=[toy-long]"]), machine=False)
    first, long = benchmarks(s)
    assert (first.name, first.max_new_tokens, long.name, long.max_new_tokens, long.limit) == (
        "toy",
        24,  # TINY_RUN's benchmark.max_new_tokens=24
        "toy-long",
        64,
        200,
    )
    assert workload(s, prompt_tokens=8, gpu=False).eval_new_tokens == 64
    assert workload(train_config(compose(TINY_RUN), machine=False), 8, gpu=False).eval_new_tokens == 24


def test_toy_long_rows_are_longer_than_any_the_toy_task_trains_on():
    problems = load_benchmark("toy-long", limit=300)
    assert len({p.question for p in problems}) == 300
    assert all(len(parse_terms(p.question)) in (7, 8) for p in problems)
    assert all(p.reference == str(sum(parse_terms(p.question))) for p in problems)
    toy = ToyTask()
    assert not {prompt_text(t) for t in toy.held_out} & {p.question for p in problems}
    assert subset_note("toy-long") is None
    with pytest.raises(ValueError, match="longer than the toy task's max_terms=6"):
        load_benchmark("toy-long", limit=3, terms=[5, 6])


@pytest.mark.parametrize(
    "value, says",
    [
        ("[nope]", "eval.benchmarks names 'nope', which is no benchmark preset; choose from: aime24"),
        ("[toy-long,toy-long]", "eval.benchmarks names a benchmark twice"),
        ("[1]", "eval.benchmarks must list benchmark preset names"),
        ("toy-long", "eval.benchmarks must be"),
    ],
)
def test_a_bad_benchmark_list_is_one_line_before_anything_runs(cli, value, says):  # noqa: F811
    assert says in cli.refused("dear-train", f"eval.benchmarks={value}")


def test_a_benchmark_too_long_for_the_student_is_refused():
    with pytest.raises(ConfigError, match="toy-long's max_new_tokens=64 is more than model.context_length=60"):
        train_config(
            compose(TINY_RUN + ["eval.benchmarks=[toy-long]", "model.context_length=60", "model.max_new_tokens=24"]),
            machine=False,
        )
