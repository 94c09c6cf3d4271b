"""`make bench` in its --quick mode: every figure is in the JSON, measured or with a reason why not.

No timing or memory goal is asserted here (tiny shapes on a shared machine measure nothing); the
figures themselves come from `make bench` (bench/run.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT, TINY_MODELS

FIGURES = [
    "dear_over_opd_step_time",
    "step_peak_mem_flat",
    "loss_peak_mem_over_trl",
    "opd_step_speedup_vs_trl_defaults",
    "opd_step_speedup_vs_trl_tuned",
]


def test_quick_bench_reports_every_figure(tmp_path, toy_cache):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out), f"cache_dir={toy_cache}"]
    proc = subprocess.run(
        cmd + TINY_MODELS, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["quick"] is True
    for key in ("torch", "threads", "cpu_model", "load_average_at_start", "load_average_at_end", "date"):
        assert key in result["machine"], key
    assert list(result["figures"]) == FIGURES
    for name, fig in result["figures"].items():
        assert fig["goal"].split()[0] in ("<=", ">=") and fig["how"], name
        # TRL is a test dependency, so here every figure is measured: none may fall back to "unavailable"
        assert not fig.get("unavailable"), (name, fig.get("unavailable"))
        assert isinstance(fig["value"], float) and math.isfinite(fig["value"]) and fig["value"] > 0, name
        assert isinstance(fig["met"], bool), name
        assert name in proc.stdout  # the table names every figure


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
