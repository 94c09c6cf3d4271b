"""The preflight's command-line side (dear/preflight/command.py): Hydra's own parser says which words are overrides and
whether a run happens at all, and each run a command asks for is composed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dear import cli
from dear.preflight import command as preflight_argv
from dear.preflight import settings as preflight
from dear.preflight.command import check_group_overrides, choose_setup, user_overrides, with_setup

# --- which words are overrides ----------------------------------------------------------------------------------

RUNS = [
    (["seed=1"], ["seed=1"]),
    (["--config-dir", "{tmp}", "seed=1"], ["seed=1"]),
    (["-cd", "{tmp}/conf=mine", "seed=1"], ["seed=1"]),  # a flag's value, though it reads like an override
    (["-cn", "train", "seed=1"], ["seed=1"]),
    (["-m", "seed=0,1", "method=opd,dear"], ["seed=0,1", "method=opd,dear"]),
    (["--run", "seed=1", "hydra/job_logging=none", "hydra.job.chdir=false"], ["seed=1"]),  # Hydra's own: not ours
    (["-p", "model", "seed=1"], ["seed=1"]),  # --package shapes what --cfg prints; alone, the task runs
]
NOTHING_RUNS = [
    ["--cfg", "job"],
    ["-c", "all", "seed=1"],
    ["--cfg", "job", "--resolve", "seed=1"],
    ["--cfg", "job", "-p", "model"],
    ["--resolve", "seed=1"],  # refused without --cfg
    ["--info"],
    ["-i", "defaults", "seed=1"],
    ["--help"],
    ["-h", "seed=1"],
    ["--hydra-help"],
    ["--version"],
    ["--shell-completion", "install=bash"],
    ["-sc", "query=seed"],
    ["--run", "--multirun", "seed=1"],  # refused: one command at a time
    ["--no-such-flag", "seed=1"],
    ["--cfg", "nope"],
]


def with_tmp(argv: list[str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp) for a in argv]


@pytest.mark.parametrize("argv, overrides", RUNS, ids=[" ".join(a) for a, _ in RUNS])
def test_hydra_s_parser_says_which_words_are_overrides(argv, overrides, tmp_path):
    assert user_overrides(with_tmp(argv, tmp_path)) == overrides


@pytest.mark.parametrize("argv", NOTHING_RUNS, ids=" ".join)
def test_nothing_is_checked_where_hydra_runs_nothing(argv, capsys):
    assert user_overrides(argv) is None
    assert capsys.readouterr().out == ""  # --version prints once, when Hydra's app reads it


def test_each_run_is_composed_with_the_searchpath_and_without_hydra_s_other_settings():
    """``hydra.searchpath`` says where config groups are (dear-table's generated ``grid_run``, dear/tables/grid.py),
    so a run composes only with it; Hydra's other settings (its folders, its launcher) are no part of the config."""
    argv = ["-m", "hydra.searchpath=[file:///x]", "+grid_run=a,b", "hydra.run.dir=/x", "hydra/launcher=joblib"]
    command = preflight_argv.read_command(argv)
    assert command.overrides == ["hydra.searchpath=[file:///x]", "+grid_run=a,b"]
    assert command.hydra == ["hydra.run.dir=/x", "hydra/launcher=joblib"]
    assert user_overrides(argv) == command.overrides


def test_a_rerun_runs_a_pickled_config_which_no_override_changes():
    assert user_overrides(["--experimental-rerun", "outputs/x/.hydra/config.pickle", "seed=1"]) is None


HYDRA_RUNS = """
import json, sys
import hydra
import dear.cli  # the run-id resolver of conf/hydra/default.yaml
ran = []

@hydra.main(version_base="1.3", config_path="pkg://dear.conf", config_name="train")
def app(cfg):
    ran.append(True)

argvs, out, results = json.loads(sys.argv[1]), sys.argv[2], []
for argv in argvs:
    ran.clear()
    sys.argv = ["probe", *argv]
    try:
        app()
    except BaseException:
        pass
    results.append(bool(ran))
open(out, "w").write(json.dumps(results))
"""


def test_the_parser_agrees_with_what_hydra_runs(tmp_path):
    """Hydra itself, given each command line (in a child process: it configures logging), runs the task exactly
    where the preflight checks one."""
    (tmp_path / "conf=mine").mkdir()
    argvs = [with_tmp(a, tmp_path) for a, _ in RUNS] + NOTHING_RUNS
    out = tmp_path / "ran.json"
    proc = subprocess.run(
        [sys.executable, "-c", HYDRA_RUNS, json.dumps(argvs), str(out)],
        cwd=tmp_path,
        env={**os.environ, "DEAR_OUTPUTS": str(tmp_path / "outputs"), "DEAR_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), proc.stderr[-3000:]
    ran = json.loads(out.read_text())
    checked = [user_overrides(a) is not None for a in argvs]
    assert ran == checked, [a for a, r, c in zip(argvs, ran, checked) if r != c]
    assert ran == [True] * len(RUNS) + [False] * len(NOTHING_RUNS)


@pytest.mark.parametrize(
    "argv",
    [
        ["model=qwen-1.5b", "teacher=qwen-7b"],
        ["-m", "model=qwen-1.5b,qwen-3b", "teacher=qwen-7b"],
        ["--cfg", "job", "model=qwen-1.5b", "teacher=qwen-7b"],
        ["-cd", "{tmp}", "model=qwen-1.5b", "teacher=qwen-7b", "-m"],
    ],
    ids=" ".join,
)
def test_the_setup_a_real_student_gets_joins_its_overrides(argv, tmp_path):
    """Hydra's parse takes the overrides as one run of words: ``setup=`` goes among them, not before a flag."""
    from hydra._internal.utils import get_args_parser

    argv = with_tmp(argv, tmp_path)
    added, note = with_setup("dear-train", argv)
    assert note and sorted(added) == sorted([*argv, "setup=real-math"])
    args = get_args_parser().parse_args(added)  # as Hydra's app reads it: exits 2 on a stray override
    assert args.overrides == ["setup=real-math", *(a for a in argv if a.startswith(("model=", "teacher=")))]


# --- unknown presets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, preset",
    [
        (["model=nope"], "model preset 'nope'"),
        (["-m", "method=opd,nope"], "method preset 'nope'"),
        (["benchmark=nope", "--cfg", "job"], "benchmark preset 'nope'"),  # Hydra's own message would span a page
        (["-cd", "/x", "+teacher=nope"], "teacher preset 'nope'"),
    ],
)
def test_an_unknown_preset_is_one_line(argv, preset, capsys):
    with pytest.raises(SystemExit) as stop:
        check_group_overrides("dear-train", argv)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dear-train: error: unknown {preset}; choose from: "), line


def test_a_flag_s_value_is_no_preset():
    check_group_overrides("dear-train", ["-cd", "model=nope", "seed=1"])  # a folder named model=nope: no refusal


# --- one composition per run ----------------------------------------------------------------------------------


class DearTrain:
    """``dear-train`` in this process, its Hydra app stubbed; ``composed`` lists the overrides of every config
    composed on the way (Hydra's compose API, whoever calls it)."""

    def __init__(self, monkeypatch, tmp_path: Path):
        import hydra

        self.monkeypatch, self.composed, self.started = monkeypatch, [], []
        monkeypatch.setenv("DEAR_OUTPUTS", str(tmp_path / "outputs"))
        monkeypatch.setenv("DEAR_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        monkeypatch.setattr(preflight_argv, "LOCAL_CONFIG", tmp_path / "no-local.yaml")  # a developer's own: Hydra
        monkeypatch.setattr(cli, "_train_app", lambda: self.started.append("dear-train"))
        compose = hydra.compose

        def counted(*args, **kwargs):
            self.composed.append(list(kwargs.get("overrides") or []))
            return compose(*args, **kwargs)

        monkeypatch.setattr(hydra, "compose", counted)

    def __call__(self, *args: str) -> None:
        self.monkeypatch.setattr(sys, "argv", ["dear-train", *args])
        cli.train()


@pytest.fixture
def dear_train(monkeypatch, tmp_path) -> DearTrain:
    return DearTrain(monkeypatch, tmp_path)


def test_each_sweep_point_is_composed_once(dear_train):
    dear_train("-m", "seed=0,1")
    assert dear_train.composed == [["seed=0"], ["seed=1"]] and dear_train.started == ["dear-train"]


def test_a_real_student_is_composed_once_with_the_setup_it_gets(dear_train, monkeypatch, capsys):
    monkeypatch.setattr(preflight, "cached_config", lambda hub_id, revision: Path("config.json"))  # both cached
    dear_train("model=qwen-1.5b", "teacher=qwen-7b")
    assert dear_train.composed == [["setup=real-math", "model=qwen-1.5b", "teacher=qwen-7b"]]
    assert dear_train.started == ["dear-train"] and "so setup=real-math" in capsys.readouterr().err


def test_a_refused_point_is_composed_once_too(dear_train):
    with pytest.raises(SystemExit):
        dear_train("-m", "seed=0,1", "steps=-1")
    assert dear_train.composed == [["seed=0", "steps=-1"]] and not dear_train.started


def test_nothing_is_composed_when_hydra_prints_the_config(dear_train):
    dear_train("steps=-1", "--cfg", "job")  # a bad value, but Hydra only prints the config
    assert dear_train.composed == [] and dear_train.started == ["dear-train"]


def test_the_student_s_source_is_read_from_its_preset_and_overrides(dear_train):
    assert choose_setup(["model=qwen-1.5b", "model.source=toy"]) is None  # an override wins over the preset
    assert choose_setup(["model.source=hub"]) == "real-math"  # the default student, made a hub one
    assert choose_setup(["model=smollm2-135m"]) == "real-math"  # not a toy
    assert dear_train.composed == []


# --- --dry-run: every run checked and listed, none started ----------------------------------------------------


def test_a_dry_run_lists_every_point_of_a_sweep_and_writes_nothing(tmp_path, tmp_path_factory):
    """The real console script: Hydra's parser never sees --dry-run (it would refuse it), nothing starts."""
    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "DEAR_CACHE": str(cache)}
    for name in ("DEAR_OUTPUTS", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    argv = ["-m", "method=opd,dear", "seed=0,1", "--dry-run"]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dear-train"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *points, count = done.stdout.splitlines()
    jobs = ["method=opd seed=0", "method=opd seed=1", "method=dear seed=0", "method=dear seed=1"]  # Hydra's order
    assert points == [f"{i:>3}  {job}  ->  outputs/multirun/<time>_<id>/{i}" for i, job in enumerate(jobs)]
    assert count == "dear-train --dry-run: 4 runs checked; none started, nothing written"
    assert list(tmp_path.iterdir()) == [] and list(cache.iterdir()) == []


def test_a_dry_run_composes_each_run_once_and_starts_none(dear_train, capsys):
    dear_train("-m", "seed=0,1", "method=opd,dear", "--dry-run")
    assert dear_train.composed == [
        ["seed=0", "method=opd"],
        ["seed=0", "method=dear"],
        ["seed=1", "method=opd"],
        ["seed=1", "method=dear"],
    ]  # every combination, in Hydra's job order
    assert not dear_train.started and len(capsys.readouterr().out.splitlines()) == 5


def test_a_dry_run_shows_a_folder_hydra_is_told(dear_train, tmp_path, capsys):
    dear_train(f"hydra.run.dir={tmp_path}/mine/${{model.name}}", "seed=3", "--dry-run")
    assert capsys.readouterr().out.splitlines()[0] == f"  0  seed=3  ->  {tmp_path}/mine/toy-student"


@pytest.mark.parametrize(
    "argv, line",
    [
        (["-m", "steps=1,-1"], "dear-train: error: steps must be an integer >= 0, got -1"),
        (["-m", "seed=0,1", "nope=1"], "dear-train: error: nope is not a setting of the config; valid keys: "),
        (["-m", "model=nope"], "dear-train: error: unknown model preset 'nope'; choose from: "),
        (["--cfg", "job"], "dear-train: error: --dry-run lists the runs a command starts, and with --cfg, --info or"),
    ],
    ids=["a bad value", "no such key", "no such preset", "nothing runs"],
)
def test_a_dry_run_s_mistake_is_one_line(dear_train, tmp_path, capsys, argv, line):
    with pytest.raises(SystemExit) as stop:
        dear_train(*argv, "--dry-run")
    assert stop.value.code == 2 and not dear_train.started
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith(line), err
    assert not (tmp_path / "outputs").exists()


def test_a_dry_run_with_a_flag_hydra_refuses_says_so_as_hydra_does(dear_train, capsys):
    with pytest.raises(SystemExit) as stop:
        dear_train("--no-such-flag", "--dry-run")
    assert stop.value.code == 2 and not dear_train.started
    assert "dear-train: error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_dear_eval_s_dry_run_names_its_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DEAR_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setattr(cli, "_eval_app", lambda: pytest.fail("a dry run started dear-eval"))
    monkeypatch.setattr(sys, "argv", ["dear-eval", "model=toy-student", "--dry-run"])
    cli.evaluate()
    point, count = capsys.readouterr().out.splitlines()
    assert point == f"  0  model=toy-student  ->  {tmp_path}/outputs/eval/<time>_toy-student_toy_<id>"
    assert count == "dear-eval --dry-run: 1 run checked; none started, nothing written"
