"""Graders: whether a model's response solves a :class:`~dear.data.benchmarks.Problem`.

:func:`grade` calls the grader that the problem's kind names in its record (`dear.data.kinds`),
importing it on first use; the graders of the kinds dear ships live here:

* ``math``: the final answer (``\\boxed{}`` or the last number) checked with math-verify
  (:mod:`dear.eval.math`);
* ``code``: the response's code (:func:`extract_code`) run against the problem's tests in the
  sandbox (:func:`dear.eval.code.check_solution`);
* ``code-io``: the code run on each input/output case in the sandbox
  (:func:`dear.eval.code.check_io`);
* ``rg``: reasoning-gym's own scorer, with a numeric fallback;
* ``toy``: exact match of the toy task's final answer.

A kind names its grader as ``"module:attribute"`` so that ``dear.data`` never imports ``dear.eval``:
this module imports ``dear.data``, never the reverse.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from dear.data import kinds
from dear.data.benchmarks import Problem
from dear.data.toy import grade as toy_grade
from dear.eval.code import check_io, check_solution
from dear.registry import resolve

__all__ = ["extract_code", "grade", "grader"]

Grader = Callable[[Problem, str], bool]


def grader(kind: str) -> Grader:
    """The grader of problems of ``kind``: its record's function, imported now if named by its module."""
    return resolve(kinds.get(kind).grader)


def grade(problem: Problem, response: str) -> bool:
    """Whether ``response`` solves ``problem``, by the grader its kind names (a ValueError for an unknown kind)."""
    return grader(problem.kind)(problem, response)


def _after_thinking(response: str) -> str:
    """The part after a reasoning model's ``</think>``, where its final answer lives."""
    return response.rsplit("</think>", 1)[-1]


_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(response: str) -> str:
    """The code in a response: its last ```python block, else its last fenced block, else all of it.

    An unclosed last fence (a truncated response) counts up to the end. Leading indentation
    is kept: a bare function body must stay indented to follow the prompt.
    """
    text = _after_thinking(response)
    blocks = [(lang.lower(), body) for lang, body in _FENCE_RE.findall(text)]
    python = [body for lang, body in blocks if lang in ("python", "py", "python3")]
    chosen = python or [body for _, body in blocks]
    code = chosen[-1] if chosen else text
    return code.rstrip() + "\n"


def grade_math(problem: Problem, response: str) -> bool:
    from dear.eval.math import grade as math_grade  # sympy: imported on first use

    return math_grade(response, problem.reference)


def grade_code(problem: Problem, response: str) -> bool:
    result = check_solution(
        problem.code_prompt or "", extract_code(response), problem.reference, problem.entry_point or ""
    )
    return bool(result.passed)


def grade_code_io(problem: Problem, response: str) -> bool:
    return bool(check_io(extract_code(response), json.loads(problem.reference), problem.entry_point).passed)


@functools.cache
def _rg_scorer(task: str) -> Callable[[str | None, dict[str, Any]], float]:
    from reasoning_gym.factory import get_score_answer_fn

    return get_score_answer_fn(task)


_NUMBER_RE = re.compile(r"^-?\d+(\.\d+)?$")


def grade_rg(problem: Problem, response: str) -> bool:
    """Reasoning-gym's own scorer on the final answer (1.0 = right).

    Numeric references also accept a mathematically equal answer ("28,080" for 28080), which
    the exact-match scorers of tasks like gsm_symbolic would miss.
    """
    from dear.eval.math import extract_answer
    from dear.eval.math import grade as math_grade

    answer = extract_answer(_after_thinking(response))
    if answer is None:
        return False
    if _rg_scorer(problem.meta["task"])(answer, problem.meta["entry"]) >= 1.0:
        return True
    return bool(_NUMBER_RE.match(problem.reference.strip())) and math_grade(response, problem.reference)


def grade_toy(problem: Problem, response: str) -> bool:
    """Exact match of the final answer (after the last ``#``) with the reference."""
    return toy_grade(response, problem.reference)
