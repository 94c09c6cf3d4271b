"""The config schema: every bad value, unknown key and missing path is refused in one line, at once.

Compose-time tests: nothing here builds or loads a model.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dear.config.schema import ConfigError, MethodConfig, ToyTaskConfig, load
from dear.preflight.command import choices, choose_setup, sweep_points, user_overrides
from dear.preflight.settings import train_config
from dear.training.records import config_record

from conftest import ROOT, compose

BIN = Path(sys.executable).parent


def dear(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEAR_OUTPUTS": str(cwd / "outputs"), "DEAR_CACHE": str(cwd / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# One case per mistake a user has made: the arguments, then words the one line must hold.
BAD_RUNS = [
    (["model.toy.train_steps=-5"], ["model.toy.train_steps must be an integer >= 1, got -5"]),
    (["model.toy.lr=fast"], ["model.toy.lr must be a finite number > 0, got 'fast'"]),
    (["teacher.toy.hidden_size=50"], ["teacher.toy.hidden_size (50) must be a multiple of num_heads"]),
    (["ckpt_path=/no/such/last.ckpt"], ["ckpt_path=/no/such/last.ckpt does not exist"]),
    (["model=qwen-1.5b", "model.path=/no/such/dir"], ["model.path=/no/such/dir", "qwen-1.5b", "config.json"]),
    (["teacher.path=/no/such/dir"], ["teacher.path=/no/such/dir", "config.json"]),
    (
        ["method=opd", "method.decision_ratio=0.3"],
        ["method.decision_ratio is not a knob of method=opd", "valid keys: divergence, name, selector"],
    ),
    (
        ["method.decison_ratio=0.3"],
        ["method.decison_ratio is not a knob of method=dear", "decision_ratio", "evidence_ratio"],
    ),
    (["method.decision_ratio=1.5"], ["method.decision_ratio must be a number in [0, 1], got 1.5"]),
    (["method.boost=exp"], ["method.boost must be one of normalized, multiplicative, additive, none; got 'exp'"]),
    (["method=tip", "method.tip_ratio=-1"], ["method.tip_ratio must be a number in [0, 1]"]),
    (["method.mode=threshold", "method.h_min=null"], ["h_min must be a number"]),
    (["rollout.n=0"], ["rollout.n must be an integer >= 1, got 0"]),
    (["rollout.temperature=0"], ["rollout.temperature must be a finite number > 0"]),
    (["optim.lr=-1e-3"], ["optim.lr must be a finite number > 0"]),
    (["optim.schedule=linear"], ["optim.schedule must be one of cosine, constant"]),
    (["loss.kind=kl"], ["loss.kind must be one of reverse_kl, forward_kl, jsd, pg"]),
    (["loss.beta=2"], ["loss.beta must be a number in [0, 1], got 2"]),
    (["steps=ten"], ["steps must be an integer >= 0, got 'ten'"]),
    (["seed=-1"], ["seed must be an integer >= 0"]),
    (["toy_task.max_digit=12"], ["toy_task.max_digit must be an integer in [1, 9], got 12"]),
    (["toy_task.min_terms=5", "toy_task.max_terms=3"], ["toy_task.max_terms (3) must be >= toy_task.min_terms (5)"]),
    (["benchmark.samples=4"], ["benchmark.samples=4 needs benchmark.temperature > 0"]),
    (["trainer.precision=fp8"], ["trainer.precision must be one of"]),
    (["logger.name=tensorboard"], ["logger.name must be one of wandb, csv, none"]),
    (["+foo=1"], ["foo is not a setting of the config; valid keys:", "method", "rollout"]),
    (
        ["rollout.nn=2"],
        [
            "rollout.nn is not a setting of rollout; valid keys: cache, compile, max_new_tokens, n, prompts_per_call, "
            "temperature"
        ],
    ),
    (["-m", "seed=0,1", "method=opd,dear", "method.lam=2"], ["method.lam is not a knob of method=opd"]),
    (["-m", "method.decision_ratio=0.1,0.3,1.5"], ["method.decision_ratio must be a number in [0, 1], got 1.5"]),
    (["data=math500", "benchmark=math500-full"], ["data=math500 trains on the problems benchmark=math500-full"]),
    (["model=qwen-1.5b", "teacher=qwen-7b", "data=math500"], ["data=math500 trains on the problems benchmark=math500"]),
    (["-m", "model=toy-student,qwen-1.5b"], ["this sweep mixes toy and real students"]),
]


def refusal(args: list[str], capsys) -> str:
    """What dear-train prints before Hydra runs (the CLI's own path, in this process): the one error line."""
    from dear.preflight import command as cli

    with pytest.raises(SystemExit) as stop:
        cli.check_group_overrides("dear-train", args)
        argv, _ = cli.with_setup("dear-train", args)
        cli.preflight("dear-train", "train", argv, train_config)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dear-train: error: "), lines
    return lines[0]


@pytest.mark.parametrize("args,needles", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_a_bad_config_is_one_line_and_exit_2(args, needles, capsys):
    line = refusal([a for a in args if a != "-m"], capsys)
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    "args",
    [["model.toy.train_steps=-5"], ["method=opd", "method.decision_ratio=0.3"], ["-m", "seed=0,1", "method.lam=-1"]],
)
def test_the_installed_command_refuses_before_writing_anything(tmp_path, args):
    proc = dear("dear-train", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dear-train: error: "), proc.stderr
    assert not (tmp_path / "outputs").exists(), "a refused run must not create a run directory"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "nothing may be built"


def test_dear_eval_checks_its_config_too(tmp_path):
    proc = dear("dear-eval", "benchmark.limit=-3", cwd=tmp_path)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "dear-eval: error: benchmark.limit must be an integer >= 0 or None, got -3"
    ), proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_every_shipped_config_passes_the_schema():
    """Each preset of each group, and each experiment, composes into a config the schema accepts.

    A real model is paired with itself (a toy partner is refused), and a benchmark is read by a real pair (its
    responses may outrun a toy's context); what the machine offers (a GPU, the hub) is not asked:
    tests/test_preflight.py checks that."""
    for group in ("model", "teacher", "method", "data", "benchmark", "trainer", "logger", "experiment"):
        for name in choices(group):
            overrides = [f"{group}={name}"]
            if group in ("model", "teacher") and compose(overrides)[group].source != "toy":
                overrides.append(f"{'teacher' if group == 'model' else 'model'}={name}")
            if group == "benchmark":
                overrides += ["model=qwen-1.5b", "teacher=qwen-7b"]
            train_config(compose(overrides), machine=False)


def test_any_knob_works_on_a_method_whose_selector_reads_it():
    s = train_config(compose(["method=random", "method.decision_ratio=0.3", "method.scope=batch"]))
    assert (s.method.decision_ratio, s.method.scope, s.method.evidence_ratio) == (0.3, "batch", 0.2)
    s = train_config(compose(["method=entropy", "method.decision_ratio=0.3"]))
    assert s.method.selector == "entropy" and s.method.decision_ratio == 0.3


def test_the_recorded_config_shows_every_knob_a_run_used():
    """What makes dear_nosim an ablation (similarity: none) is in its config and in metrics.json's record."""
    record = config_record(train_config(compose(["method=dear_nosim"])))
    method = record["method"]
    assert method["similarity"] == "none" and method["selector"] == "dear" and method["name"] == "dear_nosim"
    assert {k for k, v in method.items() if v is not None} >= {
        "decision_ratio",
        "evidence_ratio",
        "boost",
        "lam",
        "agg",
        "w_dec",
        "w_evi",
        "w_other",
        "hidden_layer",
    }
    assert record["loss"]["beta"] == 0.5 and record["toy_task"]["seed"] == 1234


def test_each_method_file_spells_out_what_its_selector_reads():
    """A method's composed config holds exactly its selector's knobs (no hidden defaults in code)."""
    from dear.config import methods

    for name in choices("method"):
        method = compose([f"method={name}"]).method
        assert set(method) == {"name", "selector", "divergence", "source", *methods.get(method.selector).knobs}, name


def test_the_toy_task_defaults_are_the_yaml_file():
    on_disk = yaml.safe_load((ROOT / "dear" / "conf" / "toy_task" / "default.yaml").read_text())
    assert dataclasses.asdict(ToyTaskConfig()) == on_disk


def test_a_method_built_in_code_is_checked_the_same_way():
    with pytest.raises(ConfigError, match="selector all does not read decision_ratio"):
        MethodConfig(name="x", divergence="reverse_kl", selector="all", source="student", knobs={"decision_ratio": 0.2})
    with pytest.raises(ConfigError, match=r"method.lam must be a finite number >= 0, got -1"):
        knobs = {**dict(compose(["method=dear"]).method), "lam": -1}
        MethodConfig(**{k: knobs.pop(k) for k in MethodConfig.COMMON}, knobs=knobs)
    with pytest.raises(ConfigError, match=r"method.selector must be one of all, entropy, dear, tip, random"):
        load(MethodConfig, {"name": "x", "divergence": "reverse_kl", "selector": "greedy"}, "method.")
    with pytest.raises(ConfigError, match="method is missing method.scope"):
        load(MethodConfig, {"name": "x", "divergence": "reverse_kl", "selector": "tip", "tip_ratio": 0.5}, "method.")


def test_sweeps_are_checked_point_by_point_without_the_product():
    points = sweep_points(["seed=0,1,2", "method=opd,dear", "steps=3"])
    assert points[0] == ["seed=0", "method=opd", "steps=3"]
    assert ["seed=2", "method=opd", "steps=3"] in points and ["seed=0", "method=dear", "steps=3"] in points
    assert len(points) == 1 + 2 + 1  # every value once, not 3 x 2 combinations


def test_hydra_flags_are_not_overrides():
    assert user_overrides(["-m", "seed=1", "hydra/launcher=basic", "--config-dir", "/x", "method=opd"]) == [
        "seed=1",
        "method=opd",
    ]
    assert user_overrides(["seed=1", "--cfg", "job"]) is None  # nothing runs: nothing to refuse


def test_the_headline_command_composes_a_real_run(tmp_path):
    """dear-train model=qwen-1.5b teacher=qwen-7b: real prompts, math500, the accelerator there is, a 1.5B's steps."""
    assert choose_setup(["model=qwen-1.5b", "teacher=qwen-7b"]) == "real-math"
    # a knob only the real setup's groups have (data.limit: the toy stream has no limit) does not hide the student
    assert choose_setup(["model=qwen-1.5b", "teacher=qwen-7b", "data.limit=16", "benchmark.limit=4"]) == "real-math"
    s = train_config(compose(["model=qwen-1.5b", "teacher=qwen-7b", "setup=real-math"]), machine=False)
    assert (s.data.name, s.benchmark.name, s.trainer.accelerator, s.trainer.precision) == (
        "rg-gsm_symbolic",
        "math500",
        "auto",
        "auto",
    )
    # the student's own response length (conf/model/qwen-1.5b.yaml)
    assert (s.optim.lr, s.rollout.max_new_tokens, s.batch_size, s.steps) == (1e-6, 2048, 32, 200)
    proc = dear("dear-train", "model=qwen-1.5b", "teacher=qwen-7b", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0 and "setup=real-math" in proc.stderr
    job = yaml.safe_load(proc.stdout)
    assert job["data"]["name"] == "rg-gsm_symbolic" and job["optim"]["lr"] == 1e-6 and job["steps"] == 200


def test_the_embedded_default_stays_the_toy_run():
    assert choose_setup([]) is None and choose_setup(["method=opd", "seed=3"]) is None
    s = train_config(compose([]))
    assert (s.model.name, s.data.name, s.benchmark.name, s.trainer.accelerator, s.steps) == (
        "toy-student",
        "toy",
        "toy",
        "cpu",
        120,
    )


def test_a_named_setup_or_experiment_is_kept():
    assert choose_setup(["model=qwen-1.5b", "teacher=qwen-7b", "setup=toy"]) is None
    assert choose_setup(["experiment=qwen-1.5b-14b"]) is None
    s = train_config(compose(["experiment=qwen-1.5b-14b"]), machine=False)
    assert (s.model.name, s.teacher.name, s.benchmark.name, s.steps) == ("qwen-1.5b", "qwen-14b", "math500", 200)
    # an experiment's own values win over train.yaml's (they did not before train.yaml listed _self_ first)
    assert s.optim.lr == 1e-6


@pytest.mark.parametrize(
    "name,pair",
    [
        ("qwen-1.5b-14b", ("qwen-1.5b", "qwen-14b")),
        ("qwen-1.5b-qwen3-4b", ("qwen-1.5b", "qwen3-4b")),
        ("qwen3-1.7b-4b", ("qwen3-1.7b", "qwen3-4b")),
    ],
)
def test_the_papers_pairs_are_experiments(name, pair):
    s = train_config(compose([f"experiment={name}"]), machine=False)
    assert (s.model.name, s.teacher.name) == pair and s.data.name != s.benchmark.name
