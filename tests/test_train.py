"""End-to-end training on tiny toy models: every method runs, learns, records and resumes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dear.preflight.command import choices
from dear.train import train

from conftest import TINY_RUN, compose


def run(tmp_path, toy_cache, *extra: str, name: str = "run"):
    cfg = compose(TINY_RUN + [f"cache_dir={toy_cache}", *extra])
    run_dir = tmp_path / name
    run_dir.mkdir()
    return cfg, run_dir, train(cfg, run_dir)


def toy_weights(cache, prefix):
    (folder,) = [p for p in cache.iterdir() if p.name.startswith(prefix)]
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("method", choices("method"))
def test_each_method_trains_the_student(tmp_path, toy_cache, method):
    cfg, run_dir, metrics = run(tmp_path, toy_cache, f"method={method}")
    before = toy_weights(toy_cache, "toy-student")
    after = load_file(str(run_dir / "student" / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the student's weights did not change"
    assert metrics["steps"] == 2
    # the loss of every step is finite and logged
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [
        float(r.split(",")[header.index("train/loss")]) for r in rows[1:] if r.split(",")[header.index("train/loss")]
    ]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_metrics_record_everything_needed_to_rebuild_the_run(tmp_path, toy_cache):
    cfg, run_dir, metrics = run(tmp_path, toy_cache, "seed=3")
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["seed"] == 3
    assert on_disk["config"]["seed"] == 3 and on_disk["config"]["method"]["name"] == "dear"
    assert {"torch", "transformers", "lightning", "python", "dear"} <= set(on_disk["versions"])
    bench = on_disk["benchmarks"]["toy"]
    assert 0.0 <= bench["accuracy_before"] <= 1.0 and 0.0 <= bench["accuracy_after"] <= 1.0
    assert [row["step"] for row in on_disk["curve"]] == [0, 1, 2]
    assert on_disk["heldout_reverse_kl"]["before"] > 0
    assert 0.0 <= on_disk["accuracy_auc"] <= 1.0
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def test_same_seed_same_run(tmp_path, toy_cache):
    *_, a = run(tmp_path, toy_cache, "seed=5", name="a")
    *_, b = run(tmp_path, toy_cache, "seed=5", name="b")
    assert a["curve"] == b["curve"]


def test_resume_continues_the_step_count(tmp_path, toy_cache):
    _, first_dir, first = run(tmp_path, toy_cache, "steps=2", name="first")
    ckpt = first_dir / "checkpoints" / "last.ckpt"
    _, _, resumed = run(tmp_path, toy_cache, "steps=4", f"ckpt_path={ckpt}", name="resumed")
    assert resumed["steps"] == 4
    assert [row["step"] for row in resumed["curve"]] == [0, 1, 2, 3, 4]
    assert resumed["curve"][:3] == first["curve"]


def test_wandb_logger_writes_an_offline_run(tmp_path, toy_cache):
    _, run_dir, _ = run(tmp_path, toy_cache, "logger=wandb")
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run in the run directory"
