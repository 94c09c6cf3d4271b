"""The embedded default's quality targets (slow: builds the real toy pair and distils it).

make test-slow
"""

from __future__ import annotations

import pytest

from dear.data.benchmarks import load_benchmark
from dear.data.toy import ToyTaskConfig
from dear.eval.runner import Evaluator
from dear.models.load import load_model
from dear.train import train

from conftest import compose

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("default-cache")


def test_teacher_is_strong_and_student_starts_well_below(cache):
    cfg = compose([f"cache_dir={cache}"])
    toy = ToyTaskConfig(**cfg.toy_task)
    problems = load_benchmark("toy", limit=500, task=dict(cfg.toy_task))
    accuracy = {}
    for preset in (cfg.teacher, cfg.model):
        loaded = load_model(preset, cfg.cache_dir, toy, trainable=False, progress=False)
        ev = Evaluator("toy", problems, loaded.tokenizer, max_new_tokens=48, batch_size=256)
        accuracy[preset.name] = ev.evaluate(loaded.model).summary["accuracy"]
    assert accuracy["toy-teacher"] >= 0.90
    assert 0.20 <= accuracy["toy-student"] <= 0.60


def test_default_run_gains_at_least_ten_points(cache, tmp_path):
    cfg = compose([f"cache_dir={cache}", "logger=csv"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metrics = train(cfg, run_dir)
    assert metrics["benchmarks"]["toy"]["gain"] >= 0.10
    assert metrics["heldout_reverse_kl"]["after"] < metrics["heldout_reverse_kl"]["before"]
