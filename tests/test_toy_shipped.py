"""The toy pair ships built (dear/models/toy.py, dear/models/toy_weights/): every toy preset has its build, checked by
sha256 on load, used without building; a rebuild of the recipe behaves as shipped within a stated tolerance."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

import dear.models.toy as toy
from dear.data.benchmarks import load_benchmark
from dear.data.toy import ToyTaskConfig
from dear.errors import DearError
from dear.eval.runner import Evaluator
from dear.models.load import load_model

from conftest import compose

# A rebuild on another machine (other floating-point kernels) may differ a little from the shipped weights: its
# held-out accuracy must stay this close to the shipped model's, on the toy benchmark's 500 problems.
REBUILD_TOLERANCE = 0.05


def test_every_toy_preset_ships_built_and_matches_its_manifest():
    manifest = json.loads((toy.SHIPPED / "MANIFEST.json").read_text())
    keys = {toy.spec_key(p.name, p.toy, ToyTaskConfig()) for p in toy.presets()}
    assert len(keys) == 6  # toy-student, toy-teacher and their -s and -l variants
    # a preset whose recipe changed has a new key: `make toy-weights` ships its build
    assert keys == set(manifest), f"not shipped: {sorted(keys - set(manifest))}; run `make toy-weights`"
    for key in keys:
        assert toy.check_shipped(toy.SHIPPED / key) == toy.SHIPPED / key
        assert set(manifest[key]) == set(toy.SHIPPED_FILES)
    assert sum(f.stat().st_size for f in toy.SHIPPED.rglob("*") if f.is_file()) < 10e6  # a few MB


def test_a_run_uses_the_shipped_pair_and_builds_nothing(tmp_path, monkeypatch):
    def no_building(*args, **kwargs):
        raise AssertionError("a shipped toy model was built")

    monkeypatch.setattr(toy, "_train_toy_model", no_building)
    cfg = compose([f"cache_dir={tmp_path}"])  # an empty cache
    for preset in (cfg.model, cfg.teacher):
        loaded = load_model(preset, cfg.cache_dir, ToyTaskConfig(**cfg.toy_task), trainable=False, progress=False)
        assert loaded.source_dir.startswith(str(toy.SHIPPED))
    assert not list(tmp_path.iterdir())  # nothing written to the cache
    # another recipe (a build seed nobody shipped) is built into the cache, as before
    other = dataclasses.replace(toy.presets()[0].toy, seed=99)
    with pytest.raises(AssertionError, match="was built"):
        toy.ensure_toy_model("toy-student", other, ToyTaskConfig(), tmp_path, progress=False)


def test_a_shipped_file_that_does_not_match_its_manifest_is_one_line(tmp_path, monkeypatch):
    shipped = tmp_path / "toy_weights"
    shutil.copytree(toy.SHIPPED, shipped)
    monkeypatch.setattr(toy, "SHIPPED", shipped)
    key = next(k for k in json.loads((shipped / "MANIFEST.json").read_text()) if k.startswith("toy-student-"))
    weights = shipped / key / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    cfg = compose([f"cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DearError, match=rf"shipped toy model {key} does not match its manifest \(model.safetensors\)"):
        load_model(cfg.model, cfg.cache_dir, ToyTaskConfig(**cfg.toy_task), trainable=False, progress=False)


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("toy-student-s", 0.2, 0.6),  # the smallest: the quickest to rebuild
        pytest.param("toy-student", 0.15, 0.35, marks=pytest.mark.slow),  # the README's tables start from 0.222
        pytest.param("toy-teacher", 0.90, 1.0, marks=pytest.mark.slow),
    ],
)
def test_a_rebuild_behaves_as_shipped(tmp_path, name, low, high):
    """The build still works and gives what ships, within `REBUILD_TOLERANCE`."""
    cfg = compose([f"cache_dir={tmp_path}"])
    task = ToyTaskConfig(**cfg.toy_task)
    preset = next(p for p in toy.presets() if p.name == name)
    rebuilt = toy.ensure_toy_model(preset.name, preset.toy, task, tmp_path, progress=False, shipped=False)
    assert rebuilt.parent == tmp_path
    problems = load_benchmark("toy", limit=500, task=dict(cfg.toy_task))
    accuracy = {}
    for where in (rebuilt, toy.SHIPPED / rebuilt.name):
        loaded = load_model(dataclasses.replace(preset, path=str(where)), tmp_path, task, trainable=False)
        ev = Evaluator("toy", problems, loaded.tokenizer, max_new_tokens=48, batch_size=256)
        accuracy[where] = ev.evaluate(loaded.model).summary["accuracy"]
    shipped, fresh = accuracy[toy.SHIPPED / rebuilt.name], accuracy[rebuilt]
    print(f"{name}: shipped {shipped:.3f}, rebuilt here {fresh:.3f}")
    assert low <= shipped <= high
    assert abs(fresh - shipped) <= REBUILD_TOLERANCE, (fresh, shipped)
