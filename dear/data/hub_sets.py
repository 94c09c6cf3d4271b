"""Problem sets that live only on the Hugging Face Hub: the paper's benchmarks and real training sets.

Registered beside the sets of :mod:`dear.data.benchmarks` and loaded the same way: from the hub
when it is reachable, from the local ``datasets`` cache, or from ``path=<save_to_disk dir or a
json/jsonl/parquet/csv file>``; offline and uncached, they stop at once with one line that says
how to get them. ``repo=`` and ``split=`` point a loader at a mirror.

Benchmarks (the paper's, beside ``math500``, ``aime24``, ``aime25``, ``humaneval``, ``mbpp-plus``):
``minerva`` (Minerva math), ``amc23``, ``olympiadbench`` (the English, text-only, open-ended math
part) and ``apps`` (stdin/stdout and ``class Solution`` problems, graded on their tests in the
sandbox). Training sets: ``math-train`` (the MATH train split), ``deepscaler`` and
``openr1-math``. Field names vary between mirrors, so each row is read by the first field present:
question from ``problem``/``question``/``prompt``, answer from ``answer``/``final_answer`` or the
last ``\\boxed{}`` of ``solution``.
"""

from __future__ import annotations

import json
from typing import Any

from dear.data.benchmarks import Problem, _hub_rows, register

# name -> (default repo, config, split); every one a math set (kind math)
MATH_SETS: dict[str, tuple[str, str | None, str]] = {
    "minerva": ("math-ai/minervamath", None, "test"),
    "amc23": ("math-ai/amc23", None, "test"),
    "olympiadbench": ("math-ai/olympiadbench", None, "test"),
    "math-train": ("DigitalLearningGmbH/MATH-lighteval", None, "train"),
    "deepscaler": ("agentica-org/DeepScaleR-Preview-Dataset", None, "train"),
    "openr1-math": ("open-r1/OpenR1-Math-220k", "default", "train"),
}
APPS = ("codeparrot/apps", None, "test")


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` in ``text`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[i:j].strip()
            depth -= 1
    return None


def _first(row: dict[str, Any], *keys: str) -> Any:
    return next((row[k] for k in keys if row.get(k) not in (None, "", [])), None)


def math_problem(name: str, i: int, row: dict[str, Any]) -> Problem | None:
    """A math row as a `Problem`; None when it has no question or no final answer to grade."""
    question = _first(row, "problem", "question", "prompt")
    answer = _first(row, "answer", "final_answer")
    if isinstance(answer, list):
        answer = answer[0] if answer else None
    if answer is None and isinstance(row.get("solution"), str):
        answer = last_boxed(row["solution"])
    if not question or answer is None:
        return None
    return Problem(
        id=f"{name}/{row.get('id', row.get('unique_id', i))}",
        question=str(question),
        reference=str(answer).strip().strip("$").strip(),
        kind="math",
        meta={k: row[k] for k in ("level", "type", "subject", "source") if k in row},
    )


def _register_math(name: str, repo: str, config: str | None, split: str) -> None:
    def load(
        *,
        seed: int,
        limit: int | None,
        path: str | None = None,
        repo: str = repo,
        split: str = split,
        revision: str | None = None,
    ) -> list[Problem]:
        rows = _hub_rows(name, repo, config=config, split=split, path=path, revision=revision)
        problems = (math_problem(name, i, row) for i, row in enumerate(rows))
        return [p for p in problems if p is not None]

    load.__doc__ = f"{name}: {repo} ({split}), math-verify grading."
    register(name, kind="math")(load)


for _name, (_repo, _config, _split) in MATH_SETS.items():
    _register_math(_name, _repo, _config, _split)


def apps_problem(i: int, row: dict[str, Any]) -> Problem | None:
    """An APPS row as a ``code-io`` problem: stdin/stdout cases, or calls of ``Solution().<fn_name>``.

    Plain-function problems (an ``fn_name`` without a ``class Solution`` starter) are left out: the
    sandbox's function-call driver calls ``Solution().<fn_name>``.
    """
    try:
        io = json.loads(row.get("input_output") or "{}")
    except json.JSONDecodeError:
        return None
    inputs, outputs = io.get("inputs") or [], io.get("outputs") or []
    starter = (row.get("starter_code") or "").strip()
    fn_name = io.get("fn_name")
    if not inputs or len(inputs) != len(outputs) or (fn_name and "class Solution" not in starter):
        return None

    def text(x: Any) -> str:
        return "\n".join(map(str, x)) if isinstance(x, list) else str(x)

    if fn_name:
        cases = [
            {"input": "\n".join(json.dumps(a) for a in args), "output": json.dumps(out)}
            for args, out in zip(inputs, outputs, strict=True)
        ]
    else:
        cases = [{"input": text(a), "output": text(b)} for a, b in zip(inputs, outputs, strict=True)]
    return Problem(
        id=f"apps/{row.get('problem_id', i)}",
        question=str(row.get("question", "")),
        reference=json.dumps(cases),
        kind="code-io",
        entry_point=fn_name or None,
        code_prompt=starter or None,
        meta={"difficulty": row.get("difficulty")},
    )


@register("apps", kind="code-io")
def _load_apps(
    *,
    seed: int,
    limit: int | None,
    path: str | None = None,
    repo: str = APPS[0],
    split: str = APPS[2],
    revision: str | None = None,
) -> list[Problem]:
    """APPS (codeparrot/apps, test): graded on its input/output tests in the code sandbox."""
    rows = _hub_rows("apps", repo, config=APPS[1], split=split, path=path, revision=revision)
    problems = (apps_problem(i, row) for i, row in enumerate(rows))
    return [p for p in problems if p is not None]
