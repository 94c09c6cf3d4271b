"""The command line as a user meets it: help, composed configs, sweeps and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY_MODELS, TINY_RUN, compose

BIN = Path(sys.executable).parent


def cli(tool: str, *args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    full_env = {**os.environ, "DEAR_OUTPUTS": str(cwd / "outputs"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc, *needles: str):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def no_metrics(cwd: Path):
    return not list((cwd / "outputs").rglob("metrics.json"))


def test_help_lists_the_config_groups(tmp_path):
    proc = cli("dear-train", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("model", "teacher", "method", "data", "benchmark", "trainer", "logger", "experiment"):
        assert f"{group}:" in proc.stdout
    assert "qwen-1.5b" in proc.stdout and "toy-student" in proc.stdout


@pytest.mark.parametrize(
    "name,student,teacher",
    [
        ("toy-s", "toy-student-s", "toy-teacher-s"),
        ("toy-l", "toy-student-l", "toy-teacher-l"),
        ("qwen-1.5b-7b", "qwen-1.5b", "qwen-7b"),
    ],
)
def test_an_experiment_swaps_in_its_pair(name, student, teacher):
    """The README's form, experiment=<name> (no '+': the defaults list already has the slot)."""
    cfg = compose([f"experiment={name}"])
    assert (cfg.model.name, cfg.teacher.name) == (student, teacher)


def test_real_preset_composes(tmp_path):
    proc = cli("dear-train", "model=qwen-1.5b", "teacher=qwen-7b", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Qwen/Qwen2.5-1.5B-Instruct" in proc.stdout and "Qwen/Qwen2.5-7B-Instruct" in proc.stdout


@pytest.mark.parametrize(
    "args, needles",
    [
        (["model=no-such-model"], ["unknown model preset 'no-such-model'", "toy-student"]),
        (["method=nope"], ["unknown method preset 'nope'"]),
        (["method.decision_ratio=1.5"], ["decision_ratio", "[0, 1]"]),
        (["method=dear", "method.lam=-1"], ["lam"]),
        (["rollout.temperature=0"], ["rollout.temperature", "> 0"]),
        (["loss.temperature=-2"], ["loss.temperature"]),
        (["steps=-1"], ["steps", ">= 0"]),
        (["loss.kind=k3"], ["loss.kind"]),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, args, needles, toy_cache):
    proc = cli("dear-train", *args, f"cache_dir={toy_cache}", cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert no_metrics(tmp_path)


def test_unreachable_real_model_says_how_to_point_at_local_weights(tmp_path, toy_cache):
    env = {"HF_HOME": str(tmp_path / "empty-hf-home")}
    proc = cli("dear-train", "model=qwen-1.5b", "teacher=qwen-7b", f"cache_dir={toy_cache}", cwd=tmp_path, env=env)
    assert_one_line_error(proc, "qwen-1.5b", "model.path=")
    assert no_metrics(tmp_path)


def test_unreachable_teacher_names_the_teacher_group(tmp_path, toy_cache):
    env = {"HF_HOME": str(tmp_path / "empty-hf-home")}
    student = tmp_path / "student"  # a real student on disk (a toy one is refused with a real teacher)
    student.mkdir()
    (student / "config.json").write_text("{}")
    args = ["model=qwen-1.5b", f"model.path={student}", "teacher=qwen-7b", f"cache_dir={toy_cache}"]
    proc = cli("dear-train", *args, cwd=tmp_path, env=env)
    assert_one_line_error(proc, "qwen-7b", "teacher.path=")
    assert no_metrics(tmp_path)


def test_missing_local_path_is_refused(tmp_path, toy_cache):
    proc = cli(
        "dear-train", "model=qwen-1.5b", f"model.path={tmp_path / 'nothing'}", f"cache_dir={toy_cache}", cwd=tmp_path
    )
    assert_one_line_error(proc, "qwen-1.5b", "config.json")


def test_unwritable_cache_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = cli("dear-train", f"cache_dir={blocker / 'cache'}", cwd=tmp_path)
    assert_one_line_error(proc, "cache_dir", "not writable")
    assert no_metrics(tmp_path)


def test_tokenizer_mismatch_is_refused(tmp_path, toy_cache):
    # A teacher whose tokenizer maps two characters to each other's ids.
    from dear.data.toy import ToyTaskConfig
    from dear.models.load import resolve_weights

    from conftest import compose

    cfg = compose(TINY_MODELS + [f"cache_dir={toy_cache}"])
    teacher_dir, _ = resolve_weights(cfg.teacher, toy_cache, ToyTaskConfig(**cfg.toy_task))
    swapped = tmp_path / "swapped-teacher"
    shutil.copytree(teacher_dir, swapped)
    tok = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["3"], vocab["7"] = vocab["7"], vocab["3"]
    (swapped / "tokenizer.json").write_text(json.dumps(tok))
    proc = cli("dear-train", *TINY_MODELS, f"teacher.path={swapped}", f"cache_dir={toy_cache}", cwd=tmp_path)
    assert_one_line_error(proc, "different tokenizers", "toy-student", "toy-teacher")
    assert no_metrics(tmp_path)


def test_installed_package_finds_its_configs_from_anywhere(tmp_path):
    """A non-editable install (the wheel) carries the config tree; run it from an unrelated folder."""
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheel_dir.glob("dear-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys, dear; assert dear.__file__.startswith(sys.argv[1]), dear.__file__; "
        "from dear.cli import train; sys.argv = ['dear-train', 'model=qwen-1.5b', '--cfg', 'job']; train()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(target)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Qwen/Qwen2.5-1.5B-Instruct" in proc.stdout


def test_dear_eval_writes_per_problem_records_and_a_summary(tmp_path, toy_cache):
    tiny_teacher = [a.replace("teacher.", "model.", 1) for a in TINY_MODELS if a.startswith("teacher.")]
    proc = cli(
        "dear-eval",
        "model=toy-teacher",
        *tiny_teacher,
        "benchmark=toy",
        "benchmark.limit=12",
        f"cache_dir={toy_cache}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary_path,) = (tmp_path / "outputs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    lines = (summary_path.parent / "problems.jsonl").read_text().splitlines()
    assert len(lines) == 12 == summary["n_problems"]
    records = [json.loads(line) for line in lines]
    assert summary["metrics"]["accuracy"] == sum(r["correct"][0] for r in records) / 12
    assert all(r["prompt"].endswith("?") and r["reference"].isdigit() for r in records)


def test_dear_eval_unknown_benchmark_fails_in_one_line(tmp_path, toy_cache):
    proc = cli("dear-eval", "benchmark=nope", f"cache_dir={toy_cache}", cwd=tmp_path)
    assert_one_line_error(proc, "unknown benchmark preset 'nope'")


def test_multirun_writes_separate_runs_and_dear_table_collates_them(tmp_path, toy_cache):
    proc = cli(
        "dear-train", "-m", "seed=0,1", *TINY_RUN, "steps=1", f"cache_dir={toy_cache}", cwd=tmp_path, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "outputs").rglob("metrics.json"))
    assert len(runs) == 2 and runs[0].parent != runs[1].parent  # one directory per job
    assert sorted(json.loads(p.read_text())["seed"] for p in runs) == [0, 1]
    table = cli("dear-table", str(tmp_path / "outputs"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    rows = [line for line in table.stdout.splitlines() if line.startswith("| method=")]
    assert len(rows) == 1 and rows[0].startswith("| method=dear | 2/2 |"), table.stdout
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("dear-table", str(tmp_path / "empty"), cwd=tmp_path), "no finished runs")
    assert_one_line_error(cli("dear-table", str(tmp_path / "nothing-here"), cwd=tmp_path), "no folder")


def test_dear_table_runs_a_grid_file_then_collates_it(tmp_path, toy_cache):
    grid = tmp_path / "tiny.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "output": str(tmp_path / "tables"),
                "overrides": [*TINY_RUN, "steps=1", f"cache_dir={toy_cache}"],
                "tables": {"sweep": {"sweep": {"method": ["opd", "dear"]}}},  # a one-off sweep is a table
            }
        )
    )
    proc = cli("dear-table", "--run", str(grid), "--out", str(tmp_path / "table.md"), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in (tmp_path / "table.md").read_text().splitlines() if line.startswith("| method=")]
    assert [row.split(" | ")[:2] for row in rows] == [["| method=opd", "1/1"], ["| method=dear", "1/1"]]
    assert len(list((tmp_path / "tables" / "tiny").rglob("metrics.json"))) == 2
