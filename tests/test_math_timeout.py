"""The math grader's time bound: a comparison that never ends grades as wrong, and soon."""

from __future__ import annotations

import threading
import time

import math_verify.grader

import dear.eval.math as math_grader


def never_ends(*args, **kwargs):
    time.sleep(60)
    return True


def test_a_comparison_past_the_timeout_grades_wrong_instead_of_hanging(monkeypatch):
    assert threading.current_thread() is threading.main_thread()  # where the signal timeout is on
    assert math_grader.grade("The answer is \\boxed{3/4}", "0.75")  # a sound comparison first
    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", never_ends)
    monkeypatch.setattr(math_grader, "VERIFY_TIMEOUT_S", 1)
    start = time.monotonic()
    assert math_grader.grade("The answer is \\boxed{3/4}", "0.75") is False
    # generous: the alarm fires after 1 s; without it the comparison would run for 60 s
    assert time.monotonic() - start < 30
