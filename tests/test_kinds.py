"""Problem kinds as one registered record (dear/data/kinds.py), and what a benchmark's registration says before
its problems are loaded (dear/data/benchmarks.py): whether grading it runs code, and whether training prompts
leak into it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dear.data import kinds
from dear.data.benchmarks import (
    BENCHMARKS,
    Problem,
    benchmark_runs_code,
    format_prompt,
    leaks,
    load_benchmark,
    register,
)
from dear.eval import grading

CONF = Path(__file__).resolve().parents[1] / "dear" / "conf"
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

# kind -> (instruction, grader in dear.eval.grading, runs code, graded in worker processes)
RECORDS = {
    "math": (BOXED, "grade_math", False, True),
    "rg": (BOXED, "grade_rg", False, False),
    "code": (
        "Complete the following Python function. Reply with the complete function, including its signature, "
        "in a single ```python code block.",
        "grade_code",
        True,
        False,
    ),
    "code-io": (
        "Reply with your complete Python solution in a single ```python code block.",
        "grade_code_io",
        True,
        False,
    ),
    "toy": ("", "grade_toy", False, False),
}
CODE_BENCHMARKS = {"humaneval", "humaneval-plus", "mbpp", "mbpp-plus", "livecodebench", "apps"}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_kind_is_one_record(name):
    instruction, grader, runs_code, in_processes = RECORDS[name]
    kind = kinds.get(name)
    assert (kind.name, kind.instruction, kind.runs_code, kind.grade_in_processes) == (
        name,
        instruction,
        runs_code,
        in_processes,
    )
    assert grading.grader(name) is getattr(grading, grader)
    assert kinds.runs_code(name) is runs_code


def test_the_kinds_dear_ships_are_these():
    assert set(kinds.KINDS) == set(RECORDS)


def test_grading_and_prompts_read_the_record():
    toy = Problem(id="t", question="1+2?", reference="3", kind="toy")
    assert grading.grade(toy, "1+2=3#3") and not grading.grade(toy, "1+2=3#4")
    math = Problem(id="m", question="What is 1+2?", reference="3", kind="math")
    assert grading.grade(math, "so \\boxed{3}") and not grading.grade(math, "\\boxed{4}")
    assert format_prompt(math, None, chat_template=False) == f"What is 1+2?\n{BOXED}\n"
    assert format_prompt(toy, None, chat_template=False) == "1+2?"  # the toy question carries its own format
    code = Problem(id="c", question="Add.", reference="", kind="code", code_prompt="def add(a, b):")
    assert format_prompt(code, None, chat_template=False).startswith("Add.\n\n```python\ndef add(a, b):\n```\n")
    for unknown in (lambda: grading.grade(Problem("x", "q", "r", kind="essay"), "r"), lambda: kinds.get("essay")):
        with pytest.raises(
            ValueError, match="unknown problem kind 'essay'; known problem kinds: code, code-io, math, rg, toy"
        ):
            unknown()


def test_runs_code_of_problems_is_any_of_theirs():
    toy, program = (Problem(id=k, question="q", reference="r", kind=k) for k in ("toy", "code-io"))
    assert not kinds.runs_code([]) and not kinds.runs_code([toy]) and kinds.runs_code([toy, program])
    assert kinds.runs_code(p for p in [program])  # any iterable


def test_a_new_kind_is_one_registration(monkeypatch):
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))  # restored after the test
    monkeypatch.setitem(BENCHMARKS, "sums", None)

    def lenient(problem: Problem, response: str) -> bool:
        return response.rsplit("#", 1)[-1].strip() == problem.reference

    kinds.register(kinds.Kind("sum", "End with #<total>.", lenient))
    with pytest.raises(ValueError, match="a problem kind named sum is already registered"):
        kinds.register(kinds.Kind("sum", "", lenient))

    @register("sums", kind="sum")
    def sums(*, seed: int, limit: int | None) -> list[Problem]:
        return [Problem(id=f"s/{i}", question=f"{i}+1?", reference=str(i + 1), kind="sum") for i in range(3)]

    (first, *_) = load_benchmark("sums")
    assert format_prompt(first, None, chat_template=False) == "0+1?\nEnd with #<total>.\n"
    assert grading.grade(first, "0+1=1 # 1") and not benchmark_runs_code("sums")
    with pytest.raises(ValueError, match="unknown problem kind 'essay'"):
        register("essays", kind="essay")  # refused when registered, not at the first grading


def test_a_benchmark_makes_the_kind_it_is_registered_as(monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "liar", None)

    @register("liar", kind="math")
    def liar(*, seed: int, limit: int | None) -> list[Problem]:
        return [Problem(id="l/0", question="q", reference="def check(c): pass", kind="code")]

    with pytest.raises(ValueError, match="benchmark 'liar' is registered as kind math but made code problems"):
        load_benchmark("liar")


def test_benchmark_runs_code_names_the_code_benchmarks_before_loading():
    assert {name for name in BENCHMARKS if benchmark_runs_code(name)} == CODE_BENCHMARKS
    assert not any(benchmark_runs_code(n) for n in ("rg-chain_sum", "toy", "math500", "no-such-benchmark"))
    # the registration agrees with the problems the offline sets make
    for name in ("humaneval", "math500", "rg-chain_sum", "toy"):
        assert benchmark_runs_code(name) == kinds.runs_code(load_benchmark(name, limit=2))


# dear.preflight.settings.check_no_leak refuses these (tests/test_config.py: "trains on the problems")
LEAKS = [
    ("math500", None, None, "math500-full", None, None, True),  # one problem set under two names
    ("math500", None, None, "math500", None, None, True),  # data=math500 with the default benchmark
    ("math500-full", None, None, "math500", None, None, True),
    ("humaneval-plus", None, None, "humaneval", None, None, True),
    ("mbpp", None, None, "mbpp-plus", None, None, True),
    ("gsm8k", None, None, "gsm8k", None, None, True),
    ("not-registered", None, None, "not-registered", None, None, True),  # a name nobody registered is its own set
    ("toy", None, None, "toy", None, None, False),  # the toy stream is drawn outside the held-out split
    ("math-train", None, None, "math500", None, None, False),
    ("mbpp", None, None, "humaneval", None, None, False),
    ("math500", None, None, "aime24", None, None, False),
    # reasoning-gym: disjoint generator-seed ranges [offset, offset + limit) share no problem
    ("rg-chain_sum", 2000, {"seed_offset": 500000}, "rg-chain_sum", 100, {}, False),
    ("rg-chain_sum", 2000, {"seed_offset": 100}, "rg-chain_sum", 100, None, False),  # touching, not overlapping
    ("rg-chain_sum", 2000, {"seed_offset": 99}, "rg-chain_sum", 100, None, True),
    ("rg-chain_sum", 10, None, "rg-chain_sum", 100, {"seed_offset": 10}, False),
    ("rg-chain_sum", 11, None, "rg-chain_sum", 100, {"seed_offset": 10}, True),
    ("rg-chain_sum", None, {"seed_offset": 500000}, "rg-chain_sum", 100, None, True),  # no limit: no range
    ("rg-chain_sum", 2000, {"seed_offset": 500000}, "rg-chain_sum", None, None, True),
    ("rg-gsm_symbolic", 2000, None, "rg-gsm_symbolic", 100, None, True),  # both at offset 0
    ("rg-chain_sum", 2000, None, "rg-basic_arithmetic", 100, None, False),
]


@pytest.mark.parametrize("data, dl, do, bench, bl, bo, expected", LEAKS, ids=[f"{c[0]}->{c[3]}" for c in LEAKS])
def test_leaks(data, dl, do, bench, bl, bo, expected):
    assert leaks(data, dl, do, bench, bl, bo) is expected


def test_the_shipped_presets_that_leak():
    """Every conf/data preset against every conf/benchmark preset: these pairs are refused, and only these."""
    data = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "data").glob("*.yaml")}
    benchmarks = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "benchmark").glob("*.yaml")}
    refused = {
        (d, b)
        for d, dc in data.items()
        for b, bc in benchmarks.items()
        if leaks(dc["name"], dc.get("limit"), dc.get("options"), bc["name"], bc.get("limit"), bc.get("options"))
    }
    assert refused == {
        ("gsm8k", "gsm8k"),
        ("math500", "math500"),
        ("math500", "math500-full"),
        ("rg-basic_arithmetic", "rg-basic_arithmetic"),
        ("rg-gsm_symbolic", "rg-gsm_symbolic"),
    }  # rg-chain_sum's prompts sit at seed_offset 500000, past its benchmark's 100


def test_the_registries_import_no_torch_no_config_and_no_eval():
    """The schema and the preflight import these: they must stay light and never import back."""
    probe = (
        "import sys, dear.data.kinds, dear.data.benchmarks\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('dear.config', 'dear.eval'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
