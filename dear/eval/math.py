"""Math answer grading: pull the final answer out of a response and check it with math_verify.

Two public functions:

* :func:`extract_answer` finds the final answer in a model response: the content of the last
  ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled, ``\\boxed 5`` accepted), else the
  last final-answer phrase ("The final answer is X", "Answer: X", "#### X"), else ``None``.
* :func:`grade` extracts the answer and checks it against a reference (bare, or itself
  containing ``\\boxed{}`` / ``#### X``) for mathematical equivalence with ``math_verify``.
  It never raises: anything unparseable grades as wrong.

Threads and timeouts
--------------------
``math_verify.parse(parsing_timeout=...)`` and ``math_verify.verify(timeout_seconds=...)``
bound their sympy work with ``signal.alarm``, which Python only allows on the main thread.
Off the main thread, math_verify 0.7 swallows the resulting ``ValueError`` and silently
returns "no parse" / "not equal", so every answer would grade wrong. Therefore:

* on the main thread (including the main thread of a worker *process*, e.g. a
  ``ProcessPoolExecutor``), the signal timeouts stay on, which bounds pathological inputs;
* on any other thread the timeouts are disabled: with math_verify >= 0.8 by passing ``None``
  (which it supports), with 0.7 by calling its undecorated internals directly. Such calls have
  no time bound, so to grade untrusted output with a hard bound, grade in worker processes.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

import math_verify
from math_verify.errors import TimeoutException

__all__ = ["extract_answer", "grade"]

logger = logging.getLogger(__name__)

# Seconds; only effective on the main thread (see the module docstring).
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# "#### X" (GSM8K) and "(final) answer is / answer: X"; X runs to the end of the line.
_PHRASE_RE = re.compile(
    r"(?:####\s*|\b(?:final\s+)?answer\s*(?:is\b|:|=)\s*:?\s*)(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
# Multiple-choice answers: "B", "(B)", "B)", "B." (strict) and "(B) 42", "B. 42" (labelled).
_CHOICE_STRICT_RE = re.compile(r"^\(?\s*([A-J])\s*\)?\.?$")
_CHOICE_LABELLED_RE = re.compile(r"^\(?\s*([A-J])\s*[.:)]\s")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


# --------------------------------------------------------------------------- extraction


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the ``{...}`` group opening at ``text[start]``; ``None`` if it never closes."""
    depth = 0
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            # An escaped brace (``\{``) is literal text, not group structure.
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _box_content(text: str, end_of_command: int) -> str | None:
    """The argument of a ``\\boxed``/``\\fbox`` whose name ends at ``end_of_command``."""
    rest = text[end_of_command:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        return _balanced_group(text, end_of_command + len(rest) - len(stripped))
    if rest[:1].isspace():
        # ``\boxed 5$`` (no braces): the argument runs to the closing ``$`` or line end.
        token = re.split(r"[$\n]", stripped, maxsplit=1)[0].strip()
        return token or None
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed``/``\\fbox`` in ``text``."""
    # Walk backwards so a truncated last box (unclosed brace) falls back to the one before.
    for match in reversed(list(_BOX_RE.finditer(text))):
        content = _box_content(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def _clean_phrase_answer(answer: str) -> str:
    """Strip markdown/math delimiters and sentence punctuation around a phrase answer."""
    answer = answer.strip()
    for _ in range(3):  # delimiters can nest, e.g. ``**$5$**.``
        before = answer
        answer = answer.strip().rstrip(".").strip()
        answer = answer.strip("*").strip()
        for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right) and len(answer) > 1:
                answer = answer[len(left) : len(answer) - len(right)].strip()
        if answer == before:
            break
    return answer


def _last_phrase(text: str) -> str | None:
    """Answer after the last "final answer is" / "answer:" / "####" phrase."""
    matches = list(_PHRASE_RE.finditer(text))
    for match in reversed(matches):
        answer = _clean_phrase_answer(match.group("ans"))
        if answer:
            return answer
    return None


def extract_answer(response: str) -> str | None:
    """The final answer in ``response``: last ``\\boxed{}`` content, else last answer phrase.

    Returns ``None`` when the response states no final answer.
    """
    if not isinstance(response, str) or not response:
        return None
    boxed = _last_boxed(response)
    if boxed is not None:
        return boxed
    return _last_phrase(response)


def _reference_answer(reference: str) -> str:
    """The answer in a reference: its last ``\\boxed{}``, its ``#### X`` line, or all of it."""
    boxed = _last_boxed(reference)
    if boxed is not None:
        return boxed
    if "####" in reference:
        phrase = _last_phrase(reference)
        if phrase:
            return phrase
    return _clean_phrase_answer(reference)


# --------------------------------------------------------------------------- math_verify


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=1)
def _timeouts_can_be_disabled() -> bool:
    """Whether this math_verify accepts ``None`` timeouts (>= 0.8 returns the function as is)."""
    try:
        from math_verify.utils import timeout

        def probe() -> None:
            return None

        return timeout(None)(probe) is probe  # type: ignore[arg-type]
    except Exception:  # an unknown layout: assume the old behaviour
        return False


def _parse_unbounded(text: str) -> list[Any]:
    """``math_verify.parse`` without its signal timeout (safe off the main thread)."""
    if _timeouts_can_be_disabled():
        return math_verify.parse(text, parsing_timeout=None)  # type: ignore[arg-type]
    # math_verify 0.7: call the function its timeout decorator wraps, with parse()'s defaults.
    from math_verify.parser import (
        ExprExtractionConfig,
        LatexExtractionConfig,
        extract_target_from_pred,
        get_extraction_regexes,
    )

    regexes = get_extraction_regexes([LatexExtractionConfig(), ExprExtractionConfig()])
    return extract_target_from_pred(text, regexes, fallback_mode="first_match", extraction_mode="any_match")


def _verify_unbounded(gold: list[Any], target: list[Any]) -> bool:
    """``math_verify.verify`` without its signal timeout (safe off the main thread)."""
    if _timeouts_can_be_disabled():
        return math_verify.verify(gold, target, timeout_seconds=None)  # type: ignore[arg-type]
    # math_verify 0.7: the same pairwise comparison verify() runs, minus the decorator.
    from math_verify.grader import sympy_expr_eq
    from sympy import Basic, MatrixBase

    def equal(g: Any, t: Any) -> bool:
        try:
            if isinstance(g, (Basic, MatrixBase)) and isinstance(t, (Basic, MatrixBase)):
                return bool(sympy_expr_eq(g, t, 6, 15, True))
            if isinstance(g, str) and isinstance(t, str):
                return bool(g.strip()) and g.strip() == t.strip()
        except Exception:
            logger.debug("math_verify comparison failed", exc_info=True)
        return False

    return any(equal(g, t) for g in gold for t in target)


def _parse(answer: str) -> list[Any]:
    """Parse a bare answer; wrapping it in ``$...$`` makes plain strings like ``3/4`` parse."""
    text = f"${answer}$"
    if _on_main_thread():
        parsed = math_verify.parse(text, parsing_timeout=PARSE_TIMEOUT_S)
        if not parsed:  # e.g. plain-text answers that are not valid LaTeX
            parsed = math_verify.parse(answer, parsing_timeout=PARSE_TIMEOUT_S)
        return parsed
    return _parse_unbounded(text) or _parse_unbounded(answer)


def _verify(gold: list[Any], target: list[Any]) -> bool:
    if _on_main_thread():
        return bool(math_verify.verify(gold, target, timeout_seconds=VERIFY_TIMEOUT_S))
    return _verify_unbounded(gold, target)


def _choice_letter(answer: str, *, strict: bool) -> str | None:
    """The option letter of a multiple-choice answer such as ``(B)``, else ``None``.

    ``strict`` accepts only a lone letter (for references, where "E = mc^2" is no choice);
    otherwise a labelled option such as "(B) 42" or "B. 42" counts too.
    """
    unwrapped = _TEXT_WRAPPER_RE.sub(r"\1", answer).strip()
    match = _CHOICE_STRICT_RE.match(unwrapped)
    if match is None and not strict:
        match = _CHOICE_LABELLED_RE.match(unwrapped)
    return match.group(1) if match else None


def _equivalent(predicted: str, gold: str) -> bool:
    gold_letter = _choice_letter(gold, strict=True)
    if gold_letter is not None:
        # Letters are option labels, not variables: "(B)" must match "B" and nothing else.
        return _choice_letter(predicted, strict=False) == gold_letter
    gold_parsed = _parse(gold)
    predicted_parsed = _parse(predicted)
    if not gold_parsed or not predicted_parsed:
        return False
    return _verify(gold_parsed, predicted_parsed)


def grade(response: str, reference: str) -> bool:
    """Whether the final answer in ``response`` is mathematically equivalent to ``reference``.

    Never raises; a response without a final answer, or one that cannot be parsed, is wrong.
    """
    if not isinstance(response, str) or not isinstance(reference, str):
        return False
    try:
        predicted = extract_answer(response)
        gold = _reference_answer(reference)
        if predicted is None or not gold:
            return False
        return _equivalent(predicted, gold)
    except (Exception, TimeoutException):
        # TimeoutException derives from BaseException; a slow sympy case is just "wrong".
        logger.debug("grading failed; counting the answer as wrong", exc_info=True)
        return False
