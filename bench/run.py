"""`make bench`: the project's performance figures, each a ratio measured side by side in one run, on CPU.

    python bench/run.py [--quick] [--out outputs/bench/latest.json] [--threads N] [--budget-s 3600]
                        [--smollm2-cache DIR] [--only step loss memory rollout step-smollm2 ...] [toy overrides ...]

Figures (goal in brackets), each measured by a script of its own, in a fresh process. The step figures run on
three pairs (`bench/pairs.py`): the embedded toy pair (vocabulary 17), SmolLM2-135M as student and teacher
(49,152) and random-weight Qwen2 models at Qwen2.5's vocabulary (151,936), the last two at
``experiment=smollm2-chain_sum``'s shapes (4 prompts x 2 samples, 32 new tokens):

- ``dear_over_opd_step_time`` [<= 1.03] (toy) and ``dear_over_opd_step_time_<pair>`` [<= 1.05] (`bench_step.py`):
  median wall time of one `dear.distill.step.distill_step` of ``method=dear`` (hidden states and selection
  included) over ``method=opd``, one shared rollout batch, interleaved.
- ``opd_step_speedup_vs_trl_tuned_<pair>`` and ``..._defaults_<pair>`` [>= 1.3] (`bench_trl_step.py`): TRL
  ``DistillationTrainer``'s full on-policy step (generation, teacher, loss, backward, optimizer) over ours
  (``method=opd``), interleaved; tuned: fp32, no gradient checkpointing; defaults: its `DistillationConfig`.
- ``loss_peak_mem_over_trl`` [<= 0.25] (`bench_loss_memory.py`): peak tensor memory of loss + backward from
  hidden states, ours (`dear.objective.HeadLogits`) over the loss ``DistillationTrainer`` computes (its chunked
  kernel), [8, 512, 151936].
- ``step_peak_tensor_mem_flat`` [<= 1.05] and ``step_peak_mem_flat`` [<= 1.10] (`bench_step_memory.py`): peak
  memory of one training step above weights and AdamW state, 32 rollouts over 8, micro-batch 4, chunked logits,
  V = 151936: tensors alive (the CPU allocator's accounting), and resident memory (RSS).
- ``rollout_flop_bound_fraction`` and ``eval_generation_flop_bound_fraction`` [reported, no goal]
  (`bench_rollout.py`): SmolLM2-135M's generation at the rollout batch (4 x 2, 32 new tokens) and the
  evaluation batch (64, 48 new tokens), its matmul FLOPs at the machine's measured float32 matmul rate over
  the wall time, split into prefill, decode and what runs outside the model.

Writes one JSON object (each figure's value, goal, met and how it was measured, plus the machine) and
prints a table. A figure that cannot be measured here carries ``"unavailable": reason`` and no value: so do
the SmolLM2 and Qwen2 figures when SmolLM2 is not in dear's cache (``--smollm2-cache``; the Qwen2 pair
borrows its tokenizer) and the TRL figures without a TRL that ships ``DistillationTrainer``.
The whole run keeps to ``--budget-s`` (default 3600 s), each job to its own cap (the real-vocabulary TRL
comparisons up to 15 minutes each); a job left without time is marked unavailable. Timed figures run one at
a time; ``--quick`` (tiny shapes, for the smoke test) runs them a few at once.
Extra arguments are Hydra overrides of the toy runs, e.g. ``cache_dir=/tmp/c``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, compose, load_average, machine_facts, pick_threads, run_child  # noqa: E402
from pairs import (  # noqa: E402
    PAIRS,
    QWEN_SHAPE,
    QWEN_SHAPE_QUICK,
    build_qwen151k,
    default_cache_dir,
    pair_overrides,
    smollm2_missing,
)

from dear.files import write_json_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
FIGURES = {  # name: (comparison, goal); (None, None): reported, no goal
    "dear_over_opd_step_time": ("<=", 1.03),
    **{f"dear_over_opd_step_time_{p}": ("<=", 1.05) for p in PAIRS},
    **{f"opd_step_speedup_vs_trl_{k}_{p}": (">=", 1.3) for p in PAIRS for k in ("tuned", "defaults")},
    "loss_peak_mem_over_trl": ("<=", 0.25),
    "step_peak_tensor_mem_flat": ("<=", 1.05),
    "step_peak_mem_flat": ("<=", 1.10),
    "rollout_flop_bound_fraction": (None, None),
    "eval_generation_flop_bound_fraction": (None, None),
}
REAL_JOBS = (*(f"step-{p}" for p in PAIRS), *(f"trl-{p}" for p in PAIRS))
JOBS = ("step", *REAL_JOBS, "loss", "memory", "rollout")  # in the order they run: the headline comparisons first
TRL_JOBS = ("loss", *(f"trl-{p}" for p in PAIRS))
QUICK_OVERRIDES = ["batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8"]
MIB, GIB = 2**20, 2**30


def _cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), "--json", "-", *args]


def job_commands(args, toy: list[str], real: dict[str, list[str]]) -> dict[str, tuple[list[str], float]]:
    """Each job's command line and its own time cap in seconds (``real``: each pair's overrides)."""
    t = ["--threads", str(args.threads)]
    cache = ["--cache-dir", str(args.smollm2_cache)]
    if args.quick:
        return {
            "step": (_cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "2", *t, *toy), 240),
            "memory": (_cmd("bench_step_memory.py", "--quick", *t), 240),
            "loss": (_cmd("bench_loss_memory.py", "--quick", *t), 240),
            "rollout": (_cmd("bench_rollout.py", "--quick", *cache, *t), 240),
            **{
                f"step-{p}": (
                    _cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "1", "--warmup", "0")
                    + [*t, *real[p]],
                    300,
                )
                for p in real
            },
            **{
                f"trl-{p}": (_cmd("bench_trl_step.py", "--warmup", "0", "--repeats", "1", *t, *real[p]), 300)
                for p in real
            },
        }
    return {
        "step": (
            _cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "60", "--budget-s", "60", *t, *toy),
            150,
        ),
        "loss": (_cmd("bench_loss_memory.py", "--timeout", "200", *t), 480),
        "memory": (_cmd("bench_step_memory.py", "--timeout", "200", *t), 440),
        "rollout": (_cmd("bench_rollout.py", "--repeats", "2", *cache, *t), 240),
        **{
            f"step-{p}": (
                _cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "20", "--budget-s", "120")
                + [*t, *real[p]],
                300,
            )
            for p in real
        },
        **{
            f"trl-{p}": (
                _cmd("bench_trl_step.py", "--warmup", "1", "--repeats", "7", "--budget-s", "360", "--timeout", "840")
                + [*t, *real[p]],
                900,
            )
            for p in real
        },
    }


def prepare_toy_models(overrides: list[str], threads: int) -> None:
    """Build (or find) the toy pair once, before any timed figure, so that no two processes build it at once."""
    import torch

    from dear.models.load import resolve_weights
    from dear.preflight.settings import train_config

    torch.set_num_threads(threads)
    s = train_config(compose(overrides))
    resolve_weights(s.model, s.cache_dir, s.toy_task, progress=False, group="model")
    resolve_weights(s.teacher, s.cache_dir, s.toy_task, progress=False, group="teacher")


def trl_missing() -> str | None:
    """Why TRL's DistillationTrainer cannot be imported here, or None."""
    from importlib.util import find_spec

    if find_spec("trl") is None:
        return "TRL is not installed (pip install 'trl>=1.16', which ships DistillationTrainer)"
    if find_spec("trl.trainer.distillation_trainer") is None:
        from importlib.metadata import version

        return f"TRL {version('trl')} has no trl.DistillationTrainer; pip install 'trl>=1.16'"
    return None


def unavailable_jobs(jobs: list[str], smollm2: str | None, trl: str | None) -> dict[str, dict]:
    """The jobs that cannot run here, each with ``{"error": why}``."""
    out = {}
    for j in jobs:
        if smollm2 and j in ("rollout", *REAL_JOBS):
            borrowed = j.endswith("qwen151k")
            out[j] = {"error": f"the Qwen2 pair borrows SmolLM2's tokenizer: {smollm2}" if borrowed else smollm2}
        elif trl and j in TRL_JOBS:
            out[j] = {"error": trl}
    return out


# --- from a job's result to figures ----------------------------------------------------------------


def _figure(name: str, value: float | None, how: str, details: dict | None = None, unavailable: str | None = None):
    op, goal = FIGURES[name]
    fig: dict = {"value": None, "goal": f"{op} {goal}" if op else None, "met": None, "how": how}
    if unavailable is None and (value is None or not math.isfinite(value)):
        unavailable = f"no finite value ({value!r})"
    if unavailable is not None:
        fig["unavailable"] = unavailable
    else:
        fig["value"] = round(float(value), 4)
        if op:
            fig["met"] = bool(value <= goal) if op == "<=" else bool(value >= goal)
    if details:
        fig["details"] = details
    return fig


PAIR_WORDS = {
    "toy": "the embedded toy pair (V 17)",
    "smollm2": "SmolLM2-135M-Instruct as student and teacher (V 49,152), experiment=smollm2-chain_sum's batch",
    "qwen151k": "random-weight Qwen2 student and teacher (V 151,936, hidden 256, 2 layers, tied head; SmolLM2's "
    "tokenizer grown to V), experiment=smollm2-chain_sum's batch, step.logits=chunked",
}
STEP_HOW = (
    "bench/bench_step.py: median wall time of distill_step (student and teacher forward, hidden states, signals, "
    "selection, loss, backward) for method=dear over the same for method=opd, on one rollout batch of {pair} "
    "sampled once, methods interleaved round by round (order alternating)"
)
TRL_HOW = (
    "bench/bench_trl_step.py: median wall time of a full on-policy step (generation, teacher, loss, backward, "
    "clipping, optimizer) of trl.DistillationTrainer {settings} over ours (method=opd: rollout, distill_step, "
    "clipping, AdamW, schedule) on {pair}; same prompts (the chat-template text dear-train samples from), each "
    "prompt repeated rollout.n times, same max new tokens, temperature and divergence (beta=1, reverse KL), no "
    "shuffling, eval, saving or reporting; CPU; each side in its own process, one step each in turn"
)
TRL_SETTINGS = {
    "tuned": "tuned as a careful user would (fp32: bf16=False; gradient_checkpointing=False; its chunked "
    "divergence kernel, always on)",
    "defaults": "with DistillationConfig's defaults (bf16 autocast, gradient checkpointing; its chunked kernel)",
}
ROLLOUT_HOW = (
    "bench/bench_rollout.py: SmolLM2-135M-Instruct (fp32) through dear.distill.rollout.generate on "
    "experiment=smollm2-chain_sum's chat prompts, {case}; its matmul FLOPs (2 x linear weights below the head x "
    "tokens, prefill tokens included, + 2 x head weights x logit rows) at the float32 matmul rate measured here "
    "([512, 576] @ [576, 1536], same threads), over generate's wall time; forward hooks split the time into "
    "prefill, decode and outside the model"
)
HOW = {
    "dear_over_opd_step_time": STEP_HOW.format(pair=PAIR_WORDS["toy"]),
    **{f"dear_over_opd_step_time_{p}": STEP_HOW.format(pair=PAIR_WORDS[p]) for p in PAIRS},
    **{
        f"opd_step_speedup_vs_trl_{k}_{p}": TRL_HOW.format(settings=TRL_SETTINGS[k], pair=PAIR_WORDS[p])
        for p in PAIRS
        for k in TRL_SETTINGS
    },
    "loss_peak_mem_over_trl": (
        "bench/bench_loss_memory.py: one process per side under an address-space limit; from the same hidden "
        "states [B, T, 64] and heads [151936, 64] (student's requiring grad), the peak of tensor bytes alive "
        "during loss + backward above the inputs (the CPU allocator's accounting via torch.profiler): "
        "dear.objective.distill_loss on HeadLogits (reverse_kl, every position weight 1) over the loss "
        "trl.DistillationTrainer computes (trl.trainer.distillation_trainer._chunked_divergence_loss, beta=1, "
        "every position in the mask: its chunked kernel, on the CPU its torch tiles of [min(N, 4096), 32768])"
    ),
    "step_peak_tensor_mem_flat": (
        "bench/bench_step_memory.py: one process per configuration; random-weight Qwen2 student and teacher "
        "(V 151936, hidden 64, 2 layers), a hand-made rollout (prompts 16-48 tokens left-padded, responses 64-128 "
        "right-padded), method=dear, StepConfig(micro_batch_size=4, logits=chunked); after a warm-up step (AdamW "
        "moments exist) and dropping the gradients: the peak of tensor bytes alive during one full step "
        "(distill_step, clipping, AdamW) above what was allocated before it, from the CPU allocator's own "
        "accounting (torch.profiler, profile_memory=True), 32 rollouts over 8"
    ),
    "step_peak_mem_flat": (
        "bench/bench_step_memory.py: as step_peak_tensor_mem_flat, the step before it measured as the process "
        "sees it: peak RSS above the RSS before the step (malloc_trim(0), VmHWM reset via /proc/self/clear_refs), "
        "freed heap glibc keeps resident included, 32 rollouts over 8"
    ),
    "rollout_flop_bound_fraction": ROLLOUT_HOW.format(
        case="the training rollout (batch_size 4 x rollout.n 2, 32 new tokens, sampling)"
    ),
    "eval_generation_flop_bound_fraction": ROLLOUT_HOW.format(
        case="the evaluation batch (64 prompts, 48 new tokens, greedy)"
    ),
}


def _step_figure(name: str, r: dict) -> dict:
    if r.get("error"):
        return _figure(name, None, HOW[name], unavailable=r["error"])
    opd, dear = r["methods"]["opd"], r["methods"]["dear"]
    details = {
        "opd_median_ms": round(opd["median_ms"], 2),
        "dear_median_ms": round(dear["median_ms"], 2),
        "median_of_paired_ratios": round(dear["paired_ratio"], 4),
        "cpu_time_ratio": round(dear["cpu_ratio"], 4),
        "rounds": r["rounds"],
        "batch": r["batch"],
        "model": r.get("model"),
        "vocab": r.get("vocab"),
        "logits": r.get("logits"),
        "threads": r["threads"],
        "rollout_ms": round(r["rollout_ms"], 1),
    }
    return _figure(name, dear["ratio"], HOW[name], details)


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _trl_figures(pair: str, r: dict) -> dict[str, dict]:
    names = {k: f"opd_step_speedup_vs_trl_{k}_{pair}" for k in TRL_SETTINGS}
    if r.get("error"):
        return {n: _figure(n, None, HOW[n], unavailable=r["error"]) for n in names.values()}
    out = {}
    for key, name in names.items():
        role = f"trl-{key}"
        details = {
            "ours_median_s": round(r["ours"]["median_s"], 3),
            "trl_median_s": round(r[role]["median_s"], 3),
            "ours_generation_median_s": _rounded(r["ours"].get("generation_median_s"), 3),
            "trl_generation_median_s": _rounded(r[role].get("generation_median_s"), 3),
            "ours_seconds": r["ours"]["seconds"],
            "trl_seconds": r[role]["seconds"],
            "ours_mean_response_tokens": r["ours"]["mean_response_tokens"],
            "trl_mean_response_tokens": r[role]["mean_response_tokens"],
            "rows": r["ours"]["rows"],
            "shape": r["shape"],
            "rounds": r["rounds"],
            "threads": r["threads"],
            "trl_settings": r[role].get("settings"),
        }
        out[name] = _figure(name, r[role]["median_s"] / r["ours"]["median_s"], HOW[name], details)
    return out


def _memory_figures(r: dict) -> dict[str, dict]:
    names = ("step_peak_tensor_mem_flat", "step_peak_mem_flat")
    if r.get("error"):
        return {n: _figure(n, None, HOW[n], {"runs": r.get("runs")}, unavailable=r["error"]) for n in names}
    runs = {
        n: {
            "tensor_peak_mib": round(v["tensor_peak_bytes"] / MIB, 1),
            "peak_above_mib": round(v["peak_bytes"] / MIB, 1),
            "rss_before_mib": round(v["rss_before_bytes"] / MIB, 1),
            "weights_mib": round(v["weights_bytes"] / MIB, 1),
            "adamw_state_mib": round(v["optimizer_state_bytes"] / MIB, 1),
            "response_tokens": v["response_tokens"],
            "step_seconds": round(v["seconds"], 2),
        }
        for n, v in r["runs"].items()
    }
    details = {"shape": r["shape"], "runs": runs, "probe": r["how"]}
    return {
        "step_peak_tensor_mem_flat": _figure("step_peak_tensor_mem_flat", r["tensor_ratio"], HOW[names[0]], details),
        "step_peak_mem_flat": _figure("step_peak_mem_flat", r["ratio"], HOW[names[1]], details),
    }


def _loss_figure(r: dict) -> dict:
    name = "loss_peak_mem_over_trl"
    if r.get("error"):
        return _figure(name, None, HOW[name], {"attempts": r.get("attempts")}, unavailable=r["error"])
    a = r["asked"]
    details = {
        "shape": [r["rows"], a["seq"], a["vocab"]],
        "hidden": a["hidden"],
        "ours_peak_gib": round(r["ours"]["peak_bytes"] / GIB, 3),
        "trl_peak_gib": round(r["trl"]["peak_bytes"] / GIB, 3),
        "rss_ratio": round(r["rss_ratio"], 4),
        "ours_rss_peak_gib": round(r["ours"]["rss_peak_bytes"] / GIB, 3),
        "trl_rss_peak_gib": round(r["trl"]["rss_peak_bytes"] / GIB, 3),
        "ours_seconds": round(r["ours"]["seconds"], 1),
        "trl_seconds": round(r["trl"]["seconds"], 1),
        "loss_rel_diff": r["loss_rel_diff"],
        "grad_norm_rel_diff": r["grad_rel_diff"],
        "child_address_limit_gib": r["mem_limit_gib"],
        "probe": r["how"],
    }
    if "fallback" in r:
        details["fallback"] = r["fallback"]
        asked = r.get("ours_at_asked_rows", {})
        if "peak_bytes" in asked:
            details["ours_at_asked_rows"] = {"rows": a["rows"], "peak_gib": round(asked["peak_bytes"] / GIB, 3)}
        details["failed_attempts"] = [
            {"rows": x["rows"], "trl": x["trl"].get("error")} for x in r["attempts"] if x["trl"].get("oom")
        ]
    return _figure(name, r["ratio"], HOW[name], details)


def _rollout_figures(r: dict) -> dict[str, dict]:
    names = {"rollout": "rollout_flop_bound_fraction", "evaluation": "eval_generation_flop_bound_fraction"}
    if r.get("error"):
        return {n: _figure(n, None, HOW[n], unavailable=r["error"]) for n in names.values()}
    machine = {k: r[k] for k in ("matmul_gflops", "memory_gbps", "bound_matmul", "matmul_weights", "threads")}
    return {
        name: _figure(name, r["cases"][case]["fraction"], HOW[name], {**r["cases"][case], **machine})
        for case, name in names.items()
    }


def figures_from(job: str, r: dict) -> dict[str, dict]:
    if job == "step":
        return {"dear_over_opd_step_time": _step_figure("dear_over_opd_step_time", r)}
    if job.startswith("step-"):
        name = f"dear_over_opd_step_time_{job.removeprefix('step-')}"
        return {name: _step_figure(name, r)}
    if job.startswith("trl-"):
        return _trl_figures(job.removeprefix("trl-"), r)
    if job == "memory":
        return _memory_figures(r)
    if job == "loss":
        return {"loss_peak_mem_over_trl": _loss_figure(r)}
    if job == "rollout":
        return _rollout_figures(r)
    raise ValueError(job)


# --- the table -------------------------------------------------------------------------------------


def _detail_line(name: str, fig: dict) -> str:
    if "unavailable" in fig:
        return f"unavailable: {fig['unavailable']}"
    d = fig.get("details", {})
    if name.startswith("dear_over_opd_step_time"):
        b = d["batch"]
        return (
            f"dear {d['dear_median_ms']:.1f} ms vs opd {d['opd_median_ms']:.1f} ms per step, median of {d['rounds']} "
            f"interleaved rounds ({b['sequences']} x {b['tokens']} tokens, V {d['vocab']}, {d['logits']} logits; "
            f"paired {d['median_of_paired_ratios']:.3f}, CPU time {d['cpu_time_ratio']:.3f})"
        )
    if name == "step_peak_tensor_mem_flat":
        runs = d["runs"]
        lo, hi = min(runs, key=int), max(runs, key=int)
        return (
            f"{hi} rollouts {runs[hi]['tensor_peak_mib']:.1f} MiB vs {lo} rollouts {runs[lo]['tensor_peak_mib']:.1f} "
            f"MiB of tensors above weights + AdamW ({runs[lo]['weights_mib'] + runs[lo]['adamw_state_mib']:.0f} MiB)"
        )
    if name == "step_peak_mem_flat":
        runs = d["runs"]
        lo, hi = min(runs, key=int), max(runs, key=int)
        text = (
            f"{hi} rollouts {runs[hi]['peak_above_mib']:.1f} MiB vs {lo} rollouts {runs[lo]['peak_above_mib']:.1f} MiB "
            f"resident above weights + AdamW"
        )
        if "fixed_mmap_threshold" in d:
            text += f"; with glibc's mmap threshold fixed: x{d['fixed_mmap_threshold']['ratio']:.3f}"
        return text
    if name == "loss_peak_mem_over_trl":
        text = (
            f"ours {d['ours_peak_gib']:.2f} GiB vs TRL {d['trl_peak_gib']:.2f} GiB of tensors at {d['shape']} "
            f"(RSS x{d['rss_ratio']:.3f}; loss + backward {d['ours_seconds']:.1f} s vs {d['trl_seconds']:.1f} s; "
            f"loss rel. diff {d['loss_rel_diff']:.1e})"
        )
        if "fallback" in d:
            text += "; " + d["fallback"].split(";")[0]
            asked = d.get("ours_at_asked_rows")
            if asked:
                text += f"; ours {asked['peak_gib']:.2f} GiB at {asked['rows']} rows"
        return text
    if name.startswith("opd_step_speedup"):
        key = "defaults" if "_defaults_" in name else "tuned"
        sh = d["shape"]
        text = (
            f"TRL {key} {d['trl_median_s']:.2f} s vs ours {d['ours_median_s']:.2f} s per step, median of "
            f"{d['rounds']} rounds, V {sh['vocab']} ({d['trl_mean_response_tokens']:.0f} vs "
            f"{d['ours_mean_response_tokens']:.0f} response tokens/step)"
        )
        gen_trl, gen_ours = d.get("trl_generation_median_s"), d.get("ours_generation_median_s")
        if gen_trl is not None and gen_ours is not None:
            text += (
                f"; generation {gen_trl:.2f} s vs {gen_ours:.2f} s, the rest (teacher, loss, backward, optimizer) "
                f"{d['trl_median_s'] - gen_trl:.2f} s vs {d['ours_median_s'] - gen_ours:.2f} s"
            )
        return text
    if name.endswith("flop_bound_fraction"):
        return (
            f"{d['rows']} rows x {d['prompt_width']} prompt tokens, {d['steps']:.0f} new: {d['wall_s']:.2f} s, "
            f"{d['new_tokens_per_s']:.0f} new tokens/s; prefill {d['prefill_s']:.2f} s (bound "
            f"{d['prefill_bound_s']:.2f} s, x{d['prefill_fraction']:.2f}); "
            f"decode {d['decode_ms_per_step']:.0f} ms/step = "
            f"{d['decode_ms_per_row_token']:.2f} ms per row-token (bound {d['bound_ms_per_row_token']:.2f}, reading "
            f"the weights {d['weights_read_ms_per_step']:.0f} ms/step; matmul at {d['rows']} rows "
            f"{d['decode_shape_matmul_gflops']:.0f} of {d['matmul_gflops']:.0f} GFLOP/s); outside the model "
            f"{d['outside_ms_per_step']:.1f} ms/step"
        )
    return ""


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"make bench{' --quick' if result['quick'] else ''}: {m['date']}, {m['cpu_model']}, {m['host_cores']} cores, "
        f"torch {m['torch']}, trl {m['trl']}, {m['threads']} torch thread(s) ({m['threads_reason']})",
        f"load average {m['load_average_at_start']} at start, {m['load_average_at_end']} at end; "
        f"{result['elapsed_s']:.0f} s",
        "",
        f"{'figure':<42}{'value':>9}  {'goal':<9}met",
    ]
    for name, fig in result["figures"].items():
        value = f"{fig['value']:.3f}" if fig["value"] is not None else "-"
        met = {True: "yes", False: "MISS", None: "n/a"}[fig["met"]]
        lines.append(f"{name:<42}{value:>9}  {fig['goal'] or 'report':<9}{met}")
        lines.extend(textwrap.wrap(_detail_line(name, fig), 116, initial_indent="    ", subsequent_indent="      "))
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few figures at once (the smoke test)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "latest.json"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 2 if idle, else 1)")
    parser.add_argument("--budget-s", type=float, default=3600.0, help="wall-clock budget of the whole run")
    parser.add_argument("--smollm2-cache", type=Path, default=None, help="dear's cache holding SmolLM2-135M")
    parser.add_argument("--only", nargs="+", choices=JOBS, default=list(JOBS))
    args, overrides = parser.parse_known_args()
    start = time.perf_counter()
    deadline = start + args.budget_s
    args.threads, reason = pick_threads(args.threads)
    args.smollm2_cache = (args.smollm2_cache or default_cache_dir()).expanduser()
    machine = machine_facts(args.threads, reason)
    toy = (QUICK_OVERRIDES if args.quick else []) + overrides
    jobs = [j for j in JOBS if j in args.only]
    smollm2 = smollm2_missing(args.smollm2_cache)
    results = unavailable_jobs(jobs, smollm2, trl_missing())
    qwen_dir = Path(tempfile.mkdtemp(prefix="dear-bench-qwen151k-"))
    try:
        real = {"smollm2": pair_overrides("smollm2", args.smollm2_cache, args.quick)}
        commands = job_commands(args, toy, real)  # the qwen151k pair's once its models exist

        def build_qwen() -> None:
            if any(j.endswith("-qwen151k") for j in jobs if j not in results):
                shape = QWEN_SHAPE_QUICK if args.quick else QWEN_SHAPE
                paths = build_qwen151k(qwen_dir, args.smollm2_cache, **shape)
                real["qwen151k"] = pair_overrides("qwen151k", args.smollm2_cache, args.quick, paths)
                commands.update(job_commands(args, toy, real))

        todo = [j for j in jobs if j not in results]
        if args.quick:  # nothing is timed for real: a few at once, the models built while the first ones start
            with ThreadPoolExecutor(4) as pool:
                first = [j for j in todo if j in ("memory", "loss", "rollout")]
                futures = {j: pool.submit(run_child, *commands[j]) for j in first}
                prepare_toy_models(toy, args.threads)
                build_qwen()
                rest = sorted(
                    (j for j in todo if j not in first), key=lambda j: not j.startswith("trl-")
                )  # longest first
                futures.update({j: pool.submit(run_child, *commands[j]) for j in rest})
                results.update({j: futures[j].result() for j in todo})
        else:  # one at a time, so that no figure competes with another for the cores
            prepare_toy_models(toy, args.threads)
            build_qwen()
            for j in todo:
                left = deadline - time.perf_counter()
                if left < 30:
                    results[j] = {"error": f"not run: {args.budget_s:.0f} s budget spent"}
                    continue
                print(f"[bench] {j} (up to {min(commands[j][1], left):.0f} s) ...", file=sys.stderr, flush=True)
                results[j] = run_child(commands[j][0], timeout=min(commands[j][1], left))
    finally:
        shutil.rmtree(qwen_dir, ignore_errors=True)

    figures: dict[str, dict] = {}
    for j in jobs:
        figures.update(figures_from(j, results[j]))
    # Diagnosis, if time is left: is the step's growth with rollouts live tensors or glibc keeping freed memory?
    mem = figures.get("step_peak_mem_flat")
    if not args.quick and mem and mem["value"] is not None and mem["value"] > 1.02:
        left = deadline - time.perf_counter()
        if left > 120:
            print("[bench] memory with a fixed mmap threshold ...", file=sys.stderr, flush=True)
            cmd = _cmd("bench_step_memory.py", "--timeout", "150", "--threads", str(args.threads))
            fixed = run_child(cmd + ["--malloc-mmap-threshold", "65536"], timeout=min(320, left))
            if "ratio" in fixed:
                mem["details"]["fixed_mmap_threshold"] = {
                    "ratio": round(fixed["ratio"], 4),
                    "peaks_above_mib": {n: round(v["peak_bytes"] / MIB, 1) for n, v in fixed["runs"].items()},
                    "note": "MALLOC_MMAP_THRESHOLD_=65536 turns off glibc's dynamic mmap threshold, so freed "
                    "large buffers go back to the kernel at once; a ratio near 1 here means the growth above is "
                    "the allocator keeping freed heap memory, not tensors that live longer with more rollouts",
                }
    for name in FIGURES:
        if name not in figures:
            figures[name] = _figure(name, None, HOW[name], unavailable="not run (--only)")
    figures = {name: figures[name] for name in FIGURES}

    machine["load_average_at_end"] = load_average()
    result = {
        "quick": args.quick,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "machine": machine,
        "figures": figures,
        "job_seconds": {
            j: {"wall": results[j].get("child_seconds"), "cpu": results[j].get("cpu_seconds")} for j in jobs
        },
        "overrides": {"toy": toy, **real},
        "smollm2_cache": str(args.smollm2_cache),
    }
    out = Path(args.out)
    write_json_atomic(out, result)  # a killed run leaves the previous figures whole
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
