"""The real pretrained pair: SmolLM2-135M-Instruct distilled from its own fine-tune on rg-chain_sum.

The fast tests compose ``experiment=smollm2-chain_sum`` and check the tune recipe's schema
without building anything. The slow ones build the teacher in the default cache (reused across
runs; 24 minutes the first time on 2 cores shared at load ~15, 10 CPU-minutes) and check the pair's
targets (3 distillation seeds: 36 minutes each, run in parallel at that load, 6 CPU-minutes each)::

    make test-slow    # or: pytest -m slow tests/test_smollm2_pair.py
"""

from __future__ import annotations

import statistics

import pytest
from omegaconf import OmegaConf

from dear.config.schema import ConfigError, ModelPreset, load
from dear.preflight.settings import train_config

from conftest import compose

EXPERIMENT = "experiment=smollm2-chain_sum"


def _teacher_yaml() -> dict:
    return OmegaConf.to_container(compose([EXPERIMENT]).teacher, resolve=True)


def test_experiment_composes_the_pair_on_disjoint_problems():
    s = train_config(compose([EXPERIMENT]))
    assert (s.model.name, s.model.source) == ("smollm2-135m", "smollm2")
    assert (s.teacher.name, s.teacher.source) == ("smollm2-135m-chain_sum", "smollm2-tuned")
    assert s.model.chat_template and s.teacher.chat_template
    assert s.data.name == s.benchmark.name == "rg-chain_sum"
    task_options = {k: v for k, v in s.data.options.items() if k != "seed_offset"}
    assert task_options == s.benchmark.options == s.teacher.tune.options  # one task, one configuration
    assert s.data.options["seed_offset"] >= s.data.limit  # no generator seed shared with the benchmark
    assert s.trainer.accelerator == "cpu"


def test_training_prompts_and_benchmark_share_no_generator_seed():
    from dear.data.benchmarks import load_benchmark
    from dear.models.tuned import TUNE_SEED_OFFSET

    s = train_config(compose([EXPERIMENT, "data.limit=50", "benchmark.limit=50"]))
    bench = load_benchmark(s.benchmark.name, limit=s.benchmark.limit, seed=0, **s.benchmark.options)
    data = load_benchmark(s.data.name, limit=s.data.limit, seed=0, **s.data.options)
    seeds = {p.meta["generator_seed"] for p in bench}
    assert seeds == {0}
    assert {p.meta["generator_seed"] for p in data} == {s.data.options["seed_offset"]}
    assert len({s.data.options["seed_offset"], TUNE_SEED_OFFSET, 0}) == 3


@pytest.mark.parametrize(
    "change, words",
    [
        ({"tune": None}, "teacher.tune (the fine-tuning recipe) is required when teacher.source is smollm2-tuned"),
        ({"tune.steps": 0}, "teacher.tune.steps must be an integer >= 1, got 0"),
        ({"tune.lr": -1e-4}, "teacher.tune.lr must be a finite number > 0, got -0.0001"),
        ({"tune.epochs": 2}, "teacher.tune.epochs is not a setting of teacher.tune; valid keys: batch_size, lr"),
        ({"tune.seed": None}, "teacher.tune is missing teacher.tune.seed"),
    ],
)
def test_tune_recipe_errors_are_one_line(change, words):
    data = _teacher_yaml()
    for key, value in change.items():
        if key == "tune":
            data.pop("tune")
        elif value is None:
            data["tune"].pop(key.split(".")[1])
        else:
            data["tune"][key.split(".")[1]] = value
    with pytest.raises(ConfigError) as err:
        load(ModelPreset, data, "teacher.")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_task_fails_in_one_line_before_building(tmp_path):
    from dear.models.tuned import TuneFailed, ensure_tuned_model

    recipe = load(
        ModelPreset, {**_teacher_yaml(), "tune": {**_teacher_yaml()["tune"], "task": "no_such_task"}}, "teacher."
    ).tune
    with pytest.raises(TuneFailed, match="unknown reasoning-gym task 'no_such_task'") as err:
        ensure_tuned_model("t", recipe, tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # nothing built, nothing left behind


# --------------------------------------------------------------------------- slow: the real pair


@pytest.mark.slow
def test_teacher_is_twenty_points_above_the_student():
    from dear.models.load import load_model
    from dear.training.benchmark import build_evaluator, eval_problems

    s = train_config(compose([EXPERIMENT]))
    accuracy = {}
    for preset, group in ((s.teacher, "teacher"), (s.model, "model")):
        loaded = load_model(preset, s.cache_dir, trainable=False, progress=False, group=group)
        accuracy[group] = build_evaluator(s, loaded, eval_problems(s)).evaluate(loaded.model).summary["accuracy"]
    assert accuracy["teacher"] >= accuracy["model"] + 0.20, accuracy


@pytest.mark.slow
def test_distillation_gains_five_points_over_three_seeds_with_the_kl_falling(tmp_path):
    from dear.train import train

    gains = []
    for seed in (0, 1, 2):
        run_dir = tmp_path / f"seed{seed}"
        run_dir.mkdir()
        metrics = train(compose([EXPERIMENT, f"seed={seed}", "logger=csv"]), run_dir)
        gains.append(metrics["benchmarks"]["rg-chain_sum"]["gain"])
        kl = metrics["heldout_reverse_kl"]
        assert kl["after"] < kl["before"], (seed, kl)
    assert statistics.mean(gains) >= 0.05, gains
