"""Every summary a table or metrics.json reports, against values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from dear.data.benchmarks import Problem
from dear.data.toy import build_tokenizer
from dear.eval.runner import EvalResult, Evaluator
from dear.tables.collate import main as table_main
from dear.training.metrics import accuracy_auc

from conftest import TINY_RUN, compose

# --- area under the accuracy curve --------------------------------------------------------


def test_accuracy_auc_is_the_trapezoid_mean_over_the_steps_covered():
    # steps 0, 2, 6 with accuracy 0.2, 0.6, 0.4: area 2·0.4 + 4·0.5 = 2.8 over 6 steps
    history = [{"step": 6, "accuracy": 0.4}, {"step": 0, "accuracy": 0.2}, {"step": 2, "accuracy": 0.6}]
    assert accuracy_auc(history) == pytest.approx(2.8 / 6)
    # rows without the key are left out, another key can be asked for
    assert accuracy_auc(history + [{"step": 4}]) == pytest.approx(2.8 / 6)
    assert accuracy_auc([{"step": 0, "kl": 1.0}, {"step": 4, "kl": 0.0}], key="kl") == pytest.approx(0.5)


def test_accuracy_auc_of_a_single_point_is_that_point():
    assert accuracy_auc([{"step": 3, "accuracy": 0.7}]) == 0.7
    assert accuracy_auc([{"step": 3, "accuracy": 0.1}, {"step": 3, "accuracy": 0.7}]) == 0.7
    assert math.isnan(accuracy_auc([]))


# --- what a run writes to metrics.json ----------------------------------------------------


def test_metrics_json_reports_gain_kl_and_auc_from_the_evaluations(tmp_path, toy_cache, monkeypatch):
    """Scripted evaluations at steps 0, 1, 2; a held-out KL of exactly 0.0 must survive as 0.0."""
    scripted = iter(
        [
            {"accuracy": 0.25, "heldout_reverse_kl": 0.5},
            {"accuracy": 0.5, "heldout_reverse_kl": 0.125},
            {"accuracy": 0.75, "heldout_reverse_kl": 0.0},
        ]
    )
    monkeypatch.setattr(
        Evaluator, "evaluate", lambda self, model, teacher=None, reuse=None: EvalResult(dict(next(scripted)))
    )
    from dear.train import train

    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", "steps=2", "eval.every=1", "method=opd"])
    train(cfg, tmp_path)
    m = json.loads((tmp_path / "metrics.json").read_text())
    bench = m["benchmarks"][cfg.benchmark.name]
    assert bench == {"accuracy_before": 0.25, "accuracy_after": 0.75, "gain": 0.5, "subset": None}  # toy: all of it
    assert m["heldout_reverse_kl"] == {"before": 0.5, "after": 0.0}
    assert m["accuracy_auc"] == pytest.approx((0.375 + 0.625) / 2)
    assert [(r["step"], r["accuracy"]) for r in m["curve"]] == [(0, 0.25), (1, 0.5), (2, 0.75)]


# --- the table ----------------------------------------------------------------------------


def record(
    method: str, seed: int, before: float, after: float, auc: float, kl_after: float, status: str = "complete"
) -> dict:
    return {
        "status": status,
        "seed": seed,
        "config": {
            "model": {"name": "toy-student"},
            "teacher": {"name": "toy-teacher"},
            "method": {"name": method},
            "loss": {"normalize": "selected"},
        },
        "benchmarks": {"toy": {"accuracy_before": before, "accuracy_after": after, "gain": after - before}},
        "accuracy_auc": auc,
        "heldout_reverse_kl": {"before": 0.7, "after": kl_after},
    }


def test_the_table_groups_seeds_and_reports_each_column(tmp_path, capsys):
    runs = [
        record("dear", 0, 0.2, 0.5, 0.4, 0.25),
        record("dear", 1, 0.2, 0.7, 0.5, 0.75),
        record("opd", 0, 0.2, 0.4, 0.3, 0.0),
        record("opd", 1, 0.9, 0.9, 0.9, 9.0, status="running"),
    ]  # unfinished: left out
    for i, r in enumerate(runs):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "metrics.json").write_text(json.dumps(r))
    out = tmp_path / "table.md"
    table_main([str(tmp_path), "--out", str(out)])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[4] == "## model=toy-student, teacher=toy-teacher, benchmark=toy (2 seeds)"
    assert lines[6] == (
        "| row | seeds | accuracy before | accuracy after | gain | accuracy AUC | held-out KL | grad-mass coverage "
        "| kept share |"
    )
    # dear: after 0.5, 0.7 (mean 0.6, std 0.1414); gain 0.3, 0.5; auc 0.4, 0.5 (std 0.0707); kl 0.25, 0.75
    assert lines[8] == (
        "| method=dear | 2/2 | 0.200 ± 0.000 | 0.600 ± 0.141 | 0.400 ± 0.141 | 0.450 ± 0.071 | 0.500 ± 0.354 | - | - |"
    )
    assert lines[9] == "| method=opd | 1/2 | 0.200 | 0.400 | 0.200 | 0.300 | 0.000 | - | - |"
    assert len(lines) == 10
    assert out.read_text() == printed


# --- pass@1 and pass@k --------------------------------------------------------------------


def test_pass_at_k_with_several_samples(tmp_path, monkeypatch):
    tok = build_tokenizer(tmp_path)
    problems = [Problem(id=f"p{i}", question=f"{i}+1?", reference=str(i + 1), kind="toy") for i in range(4)]
    right, wrong = (lambda i: f"{i}+1={i + 1}#{i + 1}"), (lambda i: f"{i}+1=0#0")
    texts = [
        right(0),
        wrong(0),
        wrong(0),  # problem 0: 1 of 3
        wrong(1),
        wrong(1),
        wrong(1),  # problem 1: 0 of 3
        right(2),
        right(2),
        right(2),  # problem 2: 3 of 3
        wrong(3),
        right(3),
        wrong(3),
    ]  # problem 3: 1 of 3
    monkeypatch.setattr(Evaluator, "_generate", lambda self, model: list(texts))
    ev = Evaluator(name="toy", problems=problems, tokenizer=tok, samples=3, temperature=1.0, grade_workers=2)
    result = ev.evaluate(model=None)
    assert result.summary == {"accuracy": 5 / 12, "pass@3": 3 / 4}
    assert [r["correct"] for r in result.records] == [
        [True, False, False],
        [False] * 3,
        [True] * 3,
        [False, True, False],
    ]
    assert result.records[3]["responses"] == texts[9:12]


def test_greedy_evaluation_refuses_several_samples(tmp_path):
    tok = build_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="samples=1"):
        Evaluator(name="toy", problems=[], tokenizer=tok, samples=2, temperature=0.0)
