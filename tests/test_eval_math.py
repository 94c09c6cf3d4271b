"""Tests for dear.eval.math: answer extraction and math_verify-based equivalence grading."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dear.eval.math import extract_answer, grade

# (response, reference, expected grade). Every equivalence class is checked both ways:
# an equivalent answer graded right AND a near-miss graded wrong.
GRADE_CASES: list[tuple[str, str, bool]] = [
    # fractions vs decimals, \frac vs /, \dfrac
    (r"So $\boxed{\frac{1}{2}}$.", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\frac{1}{3}}", "0.5", False),
    (r"\boxed{3/4}", r"\frac{3}{4}", True),
    (r"\boxed{\dfrac{3}{4}}", "0.75", True),
    (r"\boxed{\dfrac{4}{3}}", "3/4", False),
    # intervals: spacing is irrelevant, open vs closed ends are not
    (r"\boxed{[1,2)}", "[1, 2)", True),
    (r"\boxed{[1,2]}", "[1, 2)", False),
    (r"\boxed{(1,2)}", "[1,2]", False),
    # units text and degrees
    (r"\boxed{5\text{ cm}}", "5", True),
    (r"\boxed{6\text{ cm}}", "5", False),
    (r"\boxed{30^\circ}", "30", True),
    (r"\boxed{30^{\circ}}", r"30^\circ", True),
    (r"\boxed{60^\circ}", "30", False),
    # nesting, reference boxed too, \fbox, \boxed without braces
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{1}{2}\sqrt{3}", True),
    (r"\boxed{\frac{1}{2}}", r"The answer is $\boxed{\frac{1}{2}}$", True),
    (r"\fbox{7}", r"\boxed{7}", True),
    (r"hence $\boxed 5$", "5", True),
    # the last boxed wins
    (r"First \boxed{1}, but correcting: \boxed{2}", "2", True),
    (r"First \boxed{2}, but correcting: \boxed{1}", "2", False),
    # multiple-choice letters
    (r"\boxed{B}", "B", True),
    (r"\boxed{(B)}", "B", True),
    (r"\boxed{\text{(B)}}", "(B)", True),
    (r"The answer is (B) 42", "B", True),
    (r"\boxed{C}", "B", False),
    # negative numbers
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    # sets (order-free) and tuples (ordered)
    (r"\boxed{\{3,2,1\}}", r"\{1,2,3\}", True),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", False),
    (r"\boxed{(1,2)}", "(1,2)", True),
    (r"\boxed{(2,1)}", "(1,2)", False),
    # square roots and pi
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{8}", False),
    (r"\boxed{2\pi}", r"\pi \cdot 2", True),
    (r"\boxed{3.14}", r"\pi", False),
    # final-answer phrases when nothing is boxed
    (r"Thus the final answer is $\frac{3}{4}$.", "0.75", True),
    ("Answer: 12", "12", True),
    ("The answer is 12.", "13", False),
    ("She has 72 clips.\n#### 72", "72", True),
    ("Work...\n#### 72", "Natalia sold 48/2 = 24 clips.\n#### 72", True),
    # no answer at all, truncated box, junk
    ("I am not sure how to solve this.", "5", False),
    ("", "5", False),
    (r"so \boxed{\frac{1}{2", "0.5", False),
    (r"\boxed{}", "5", False),
]


@pytest.mark.parametrize(("response", "reference", "expected"), GRADE_CASES)
def test_grade(response: str, reference: str, expected: bool) -> None:
    assert grade(response, reference) is expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\left\{1, \{2\}\right\}}", r"\left\{1, \{2\}\right\}"),
        (r"a \boxed{1} b \boxed{ 2 } c", "2"),
        (r"\fbox{x+1}", "x+1"),
        (r"$\boxed 5$", "5"),
        (r"\boxed{1} then \boxed{2", "1"),  # truncated last box falls back to the previous one
        ("The final answer is $42$.", "42"),
        ("**Final Answer:** **17**", "17"),
        ("answer: 3/4", "3/4"),
        ("blah\n#### 1,000", "1,000"),
        ("no answer here", None),
        ("", None),
    ],
)
def test_extract_answer(response: str, expected: str | None) -> None:
    assert extract_answer(response) == expected


def test_grade_never_raises_on_garbage() -> None:
    garbage = [r"\boxed{\frac{}{}}", r"\boxed{)(}", r"\boxed{\sqrt}", "\\boxed{" * 50, "}" * 50]
    for response in garbage:
        assert grade(response, "1") is False
    assert grade(r"\boxed{1}", r"\frac{") is False
    assert grade(None, "1") is False  # type: ignore[arg-type]


def test_grade_off_the_main_thread() -> None:
    # math_verify's SIGALRM timeouts only work on the main thread; off it, grading must still
    # give the same answers rather than silently failing every parse.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: grade(case[0], case[1]), GRADE_CASES))
    assert results == [expected for _, _, expected in GRADE_CASES]


def test_evaluator_grades_math_in_worker_processes(monkeypatch) -> None:
    """The evaluator's math grading runs in spawned processes (timeouts on) and agrees with threads."""
    from dear.data.benchmarks import Problem
    from dear.eval import runner

    pairs = [
        (Problem(id=f"m{i}", question="q", reference=reference, kind="math"), response)
        for i, (response, reference, _) in enumerate(GRADE_CASES)
    ]
    pairs.append((Problem(id="t", question="1+2?", reference="3", kind="toy"), "1+2=3#3"))
    expected = [ok for _, _, ok in GRADE_CASES] + [True]

    pools = []

    class Recording(runner.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs.get("mp_context").get_start_method())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Recording)
    ev = runner.Evaluator.__new__(runner.Evaluator)  # grading needs no tokenizer or prompts
    ev.grade_workers, ev.grade_in_processes = 2, True
    assert ev.grade_all(pairs) == expected and pools == ["spawn"]
    ev.grade_in_processes = False
    assert ev.grade_all(pairs) == expected and pools == ["spawn"]  # threads only: no new pool


def test_a_script_without_a_main_guard_still_grades_with_a_warning(tmp_path) -> None:
    """Spawned workers re-run an unguarded script and die; grading falls back to threads, right and loud."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from dear.data.benchmarks import Problem\n"
        "from dear.eval import runner\n"
        "ev = runner.Evaluator.__new__(runner.Evaluator)\n"
        "ev.grade_workers, ev.grade_in_processes = 2, True\n"
        "pairs = [(Problem(id='a', question='q', reference='1/2', kind='math'), r'\\boxed{0.5}'),\n"
        "         (Problem(id='b', question='q', reference='3', kind='math'), r'\\boxed{4}')]\n"
        "print('RESULT', ev.grade_all(pairs))\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT [True, False]" in proc.stdout
    assert "on threads instead of worker processes" in proc.stderr
