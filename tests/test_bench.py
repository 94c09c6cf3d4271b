"""`make bench` in its --quick mode: every figure is in the JSON, measured or with a reason why not.

No timing or memory goal is asserted here (tiny shapes on a shared machine measure nothing); the
figures themselves come from `make bench` (bench/run.py). What is asserted: every figure and the keys its
table line and readers need, and the arithmetic the figures rest on, on known inputs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODELS

sys.path.insert(0, str(ROOT / "bench"))

PAIRS = ["smollm2", "qwen151k"]
FIGURES = [
    "dear_over_opd_step_time",
    *(f"dear_over_opd_step_time_{p}" for p in PAIRS),
    *(f"opd_step_speedup_vs_trl_{k}_{p}" for p in PAIRS for k in ("tuned", "defaults")),
    "loss_peak_mem_over_trl",
    "step_peak_tensor_mem_flat",
    "step_peak_mem_flat",
    "rollout_flop_bound_fraction",
    "eval_generation_flop_bound_fraction",
]
REPORTED = {"rollout_flop_bound_fraction", "eval_generation_flop_bound_fraction"}  # no goal
NEEDS_SMOLLM2 = {f for f in FIGURES if f.endswith(tuple(PAIRS)) or f in REPORTED}
NEEDS_TRL = {f for f in FIGURES if "_vs_trl_" in f or f == "loss_peak_mem_over_trl"}


def _has_distillation_trainer() -> bool:
    return importlib.util.find_spec("trl") is not None and (
        importlib.util.find_spec("trl.trainer.distillation_trainer") is not None
    )


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory, toy_cache):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out), f"cache_dir={toy_cache}"]
    proc = subprocess.run(
        cmd + TINY_MODELS, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_quick_bench_reports_every_figure(quick_bench):
    from dear.models.packaged import SMOLLM2_DIRNAME, is_materialized

    result, stdout = quick_bench
    assert result["quick"] is True
    for key in ("torch", "trl", "threads", "cpu_model", "load_average_at_start", "load_average_at_end", "date"):
        assert key in result["machine"], key
    assert list(result["figures"]) == FIGURES
    smollm2 = is_materialized(Path(result["smollm2_cache"]) / SMOLLM2_DIRNAME)
    for name, fig in result["figures"].items():
        assert fig["how"], name
        if name in REPORTED:
            assert fig["goal"] is None and fig["met"] is None, name
        else:
            assert fig["goal"].split()[0] in ("<=", ">=") and float(fig["goal"].split()[1]) > 0, name
        assert name in stdout  # the table names every figure
        # Unavailable only for a reason this machine has: SmolLM2 not in dear's cache, or no DistillationTrainer
        if fig.get("unavailable"):
            allowed = (name in NEEDS_SMOLLM2 and not smollm2) or (name in NEEDS_TRL and not _has_distillation_trainer())
            assert allowed, (name, fig["unavailable"])
            assert "SmolLM2" in fig["unavailable"] or "TRL" in fig["unavailable"], (name, fig["unavailable"])
            continue
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]) and fig["value"] > 0, name
        assert isinstance(fig["met"], bool) or name in REPORTED, name


def test_quick_bench_figure_details(quick_bench):
    """Each measured figure carries what its table line says: the pair's vocabulary, TRL's settings per side,
    both memory probes, and the rollout's split of its time."""
    result, _ = quick_bench
    figures = {n: f for n, f in result["figures"].items() if not f.get("unavailable")}
    vocab = {"smollm2": 49152, "qwen151k": 151936}
    for p in PAIRS:
        if f"dear_over_opd_step_time_{p}" in figures:
            d = figures[f"dear_over_opd_step_time_{p}"]["details"]
            assert d["vocab"] == vocab[p] and d["batch"]["response_tokens"] > 0, d
        for key, reduced in (("tuned", False), ("defaults", True)):
            name = f"opd_step_speedup_vs_trl_{key}_{p}"
            if name in figures:
                d = figures[name]["details"]
                assert d["shape"]["vocab"] == vocab[p], d["shape"]
                settings = d["trl_settings"]
                assert settings["bf16"] is reduced and settings["gradient_checkpointing"] is reduced, settings
                assert settings["beta"] == 1.0 and settings["loss_kernel"], settings
                assert d["trl_mean_response_tokens"] > 0 and d["ours_mean_response_tokens"] > 0, d
    runs = figures["step_peak_tensor_mem_flat"]["details"]["runs"]
    assert set(runs) == {"2", "4"} and all(r["tensor_peak_mib"] > 0 for r in runs.values()), runs
    loss = figures["loss_peak_mem_over_trl"]["details"]
    assert loss["loss_rel_diff"] < 1e-4, loss  # both sides compute the same reverse KL
    for name in REPORTED & set(figures):
        d = figures[name]["details"]
        assert d["steps"] >= 2 and d["matmul_gflops"] > 0 and d["decode_ms_per_step"] > 0, d
        assert abs(sum(d["share_of_wall"].values()) - 1) < 1e-3, d["share_of_wall"]


def test_flop_bound_arithmetic():
    """The bound on known numbers: 10 weights below the head, 5 in it, 2 rows x 3 prompt tokens, 4 tokens made
    at 100 FLOP/s: prefill 2*10*6 + 2*5*2 = 140 FLOPs, decode 2*15*2*3 = 180 FLOPs."""
    from bench_rollout import against_bound

    run = {"rows": 2, "prompt_width": 3, "steps": 4, "wall_s": 8.0, "prefill_s": 2.8, "decode_s": 3.6, "outside_s": 1.6}
    d = against_bound([run], body=10, head=5, rate=100.0, decode_rate=50.0, bandwidth=60.0)
    assert d["prefill_bound_s"] == 1.4 and d["prefill_fraction"] == 0.5
    assert d["decode_fraction"] == 0.5 and d["decode_fraction_at_decode_shape"] == 1.0
    assert d["fraction"] == pytest.approx(320 / 100 / 8)
    assert d["decode_ms_per_step"] == 1200 and d["bound_ms_per_row_token"] == 300
    assert d["weights_read_ms_per_step"] == 1000  # 15 float32 weights at 60 bytes/s


def test_budget_spent_marks_figures_unavailable(tmp_path, toy_cache):
    """A run out of budget starts no job and says why in each figure (``--budget-s``)."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--budget-s", "1", "--only", "step", "--threads", "1"]
    cmd += ["--out", str(out), f"cache_dir={toy_cache}", *TINY_MODELS]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"]
    assert "budget spent" in figures["dear_over_opd_step_time"]["unavailable"]
    assert figures["opd_step_speedup_vs_trl_tuned_smollm2"]["unavailable"] == "not run (--only)"


def test_unavailable_jobs_name_their_reason():
    from run import JOBS, unavailable_jobs

    assert unavailable_jobs(list(JOBS), None, None) == {}
    out = unavailable_jobs(list(JOBS), "SmolLM2-135M is not in the cache", "TRL is not installed")
    assert set(out) == {"rollout", "step-smollm2", "step-qwen151k", "trl-smollm2", "trl-qwen151k", "loss"}
    assert out["loss"]["error"] == "TRL is not installed"
    assert "tokenizer" in out["trl-qwen151k"]["error"] and "SmolLM2" in out["trl-qwen151k"]["error"]


GPU_PHASES = ["rollout", "step", "optimizer", "evaluation", "heldout_kl", "selection"]


def test_gpu_script_cpu_smoke(tmp_path):
    """bench/gpu.py runs dear-train's own path (tiny random models on the CPU) and reports every phase: a peak
    measured or the reason why not, the plan's prediction, and the step figures (meaningful only on a GPU)."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--cpu-smoke", "--peak-tflops", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["error"] is None
    assert result["settings"]["steps_run"] == 2
    assert list(result["phases"]) == GPU_PHASES
    positive = lambda x: isinstance(x, float) and math.isfinite(x) and x > 0  # noqa: E731
    for name, p in result["phases"].items():
        assert p["calls"] >= 1, (name, p)  # a wrapper that is not installed leaves its phase uncalled
        assert positive(p["peak_gib"]) or "not measured" in p["peak_how"], (name, p)
        assert positive(p["plan_gib"]) and p["plan_how"], (name, p)
        assert name in proc.stdout  # the table names every phase
    rollout, step = result["phases"]["rollout"], result["phases"]["step"]
    assert positive(rollout["new_tokens_per_s"]) and rollout["share_of_max_new_tokens"] == 1.0
    assert positive(step["tokens_per_s"]) and positive(step["training_side_mfu"])
    assert positive(result["mean_step_time_s"])
