"""The problem-kind registry: what a `Problem`'s ``kind`` means, as one record per kind.

A kind says how a problem is asked and how an answer to it is judged: the answer-format instruction
appended to its question (`dear.data.benchmarks.format_prompt`), its grader (`dear.eval.grading.grade`),
whether grading runs model-written code (then it runs in the sandbox of `dear.eval.code`, which the preflight
probes and metrics.json records), and whether it is graded in worker processes (`dear.eval.runner`). No
other module names a kind's properties; a benchmark's registration names its kind, so what a benchmark
needs is known before its problems are loaded.

A grader is named as ``"module:attribute"`` and imported on first use by `dear.eval.grading` (a test may
register the function object itself): ``dear.data`` never imports ``dear.eval``, and this module imports
no torch. Adding a kind is one grader and one registration::

    register(Kind("proof", instruction="Write a proof in Lean 4.", grader="mypkg.grading:grade_proof"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dear.registry import add, lookup

GRADING = "dear.eval.grading"


@dataclass(frozen=True)
class Kind:
    """One problem kind, declared.

    name: what ``Problem.kind`` says. instruction: the answer format appended to the question ("" when
    the question carries its own). grader: ``"module:attribute"`` or the function, called as
    ``grader(problem, response) -> bool``. runs_code: grading runs model-written code (in the sandbox).
    grade_in_processes: graded in worker processes, where math-verify's signal timeouts bound a
    pathological answer (they are off on threads); code runs in its own sandbox processes already.
    """

    name: str
    instruction: str
    grader: str | Callable[[Any, str], bool]
    runs_code: bool = False
    grade_in_processes: bool = False


KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind under its name (a name is registered once)."""
    return add(KINDS, kind.name, kind, "problem kind")


def get(name: str) -> Kind:
    """The record of kind ``name``; a ValueError naming the registered kinds otherwise."""
    return lookup(KINDS, name, "problem kind", "dear.data.kinds")


def runs_code(kind_or_problems: str | Iterable[Any]) -> bool:
    """Whether grading runs model-written code: for a kind's name, or for any of some problems (their ``kind``)."""
    if isinstance(kind_or_problems, str):
        return get(kind_or_problems).runs_code
    return any(get(p.kind).runs_code for p in kind_or_problems)


# ---------------------------------------------------------------------------------------------
# The kinds dear ships; graders in dear/eval/grading.py
# ---------------------------------------------------------------------------------------------

BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

register(Kind("math", BOXED, f"{GRADING}:grade_math", grade_in_processes=True))
register(Kind("rg", BOXED, f"{GRADING}:grade_rg"))
register(
    Kind(
        "code",
        "Complete the following Python function. Reply with the complete function, "
        "including its signature, in a single ```python code block.",
        f"{GRADING}:grade_code",
        runs_code=True,
    )
)
register(
    Kind(
        "code-io",
        "Reply with your complete Python solution in a single ```python code block.",
        f"{GRADING}:grade_code_io",
        runs_code=True,
    )
)
register(Kind("toy", "", f"{GRADING}:grade_toy"))  # the toy task's question carries its own answer format
