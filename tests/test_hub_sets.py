"""The hub-only sets: offline they stop in one line; from a local copy they load and grade."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dear.data.benchmarks import BenchmarkUnavailable, load_benchmark
from dear.data.hub_sets import MATH_SETS, last_boxed
from dear.eval.grading import grade

BIN = Path(sys.executable).parent
HUB_SETS = [*MATH_SETS, "apps"]


@pytest.mark.parametrize("name", HUB_SETS)
def test_offline_and_uncached_is_one_clear_error(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BenchmarkUnavailable, match=f"benchmark '{name}' needs .* offline mode is set") as err:
        load_benchmark(name)
    assert "\n" not in str(err.value) and "path=" in str(err.value)


def test_dear_eval_on_a_missing_set_fails_before_loading_a_model(tmp_path):
    env = {
        **os.environ,
        "DEAR_OUTPUTS": str(tmp_path / "out"),
        "DEAR_CACHE": str(tmp_path / "cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),
    }
    proc = subprocess.run(
        [str(BIN / "dear-eval"), "benchmark=minerva"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "benchmark 'minerva' needs math-ai/minervamath" in errors[0], proc.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "no model may be built"


def test_math_sets_read_each_mirrors_fields_from_a_local_copy(tmp_path):
    rows = [
        {"problem": "1+1?", "answer": "2"},
        {"question": "What is $x$ if $x+1=3$?", "final_answer": ["$2$"]},
        {"problem": "Half of 8?", "solution": "Half is \\boxed{\\frac{8}{2}} = \\boxed{4}."},
        {"problem": "No answer here", "solution": "none"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    problems = load_benchmark("math-train", path=str(path))
    assert [(p.question, p.reference) for p in problems] == [
        ("1+1?", "2"),
        ("What is $x$ if $x+1=3$?", "2"),
        ("Half of 8?", "4"),
    ]
    assert grade(problems[2], "so the answer is \\boxed{4}") and not grade(problems[2], "\\boxed{5}")


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


def test_apps_rows_become_io_problems(tmp_path):
    rows = [
        {
            "problem_id": 1,
            "question": "Read n, print 2n.",
            "starter_code": "",
            "input_output": json.dumps({"inputs": ["3\n", "5\n"], "outputs": ["6\n", "10\n"]}),
        },
        {
            "problem_id": 2,
            "question": "Add.",
            "starter_code": "class Solution:\n    def add(self, a, b):",
            "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2]], "outputs": [3]}),
        },
        {
            "problem_id": 3,
            "question": "Plain function.",
            "starter_code": "def f(x):",
            "input_output": json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [1]}),
        },
    ]
    path = tmp_path / "apps.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    stdin_problem, class_problem = load_benchmark("apps", path=str(path))
    assert json.loads(stdin_problem.reference) == [
        {"input": "3\n", "output": "6\n"},
        {"input": "5\n", "output": "10\n"},
    ]
    assert class_problem.entry_point == "add" and json.loads(class_problem.reference) == [
        {"input": "1\n2", "output": "3"}
    ]
    assert grade(stdin_problem, "```python\nprint(2 * int(input()))\n```")
    assert not grade(stdin_problem, "```python\nprint(int(input()))\n```")


def test_runs_record_how_code_was_sandboxed(monkeypatch):
    from dear.data.benchmarks import Problem
    from dear.eval import code
    from dear.training.records import sandbox_record

    toy = Problem(id="t", question="1+2?", reference="3", kind="toy")
    assert sandbox_record([toy]) is None
    monkeypatch.setattr(code, "isolation", lambda: "namespaces")
    monkeypatch.setenv("DEAR_SANDBOX", "weak")
    program = Problem(id="c", question="f", reference="def check(c): pass", kind="code")
    assert sandbox_record([toy, program]) == {"isolation": "namespaces", "DEAR_SANDBOX": "weak"}
