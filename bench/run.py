"""`make bench`: the project's performance figures, each a ratio measured side by side in one run, on CPU.

    python bench/run.py [--quick] [--out outputs/bench/latest.json] [--threads N] [--budget-s 570]
                        [--only step memory loss trl] [toy overrides ...]

Figures (goal in brackets), each measured by a script of its own, in a fresh process:

- ``dear_over_opd_step_time`` [<= 1.03] (`bench_step.py`): median wall time of one `dear.distill.step.distill_step`
  of ``method=dear`` over ``method=opd`` on the embedded toy pair, one shared rollout batch, interleaved.
- ``step_peak_mem_flat`` [<= 1.10] (`bench_step_memory.py`): peak memory of one training step above
  weights and AdamW state with 32 rollouts over 8, micro-batch 4, chunked logits, V = 151936.
- ``loss_peak_mem_over_trl`` [<= 0.10] (`bench_loss_memory.py`): peak memory of loss + backward from hidden
  states, ours (`dear.objective.HeadLogits`) over TRL's ``generalized_jsd_loss`` on materialised logits.
- ``opd_step_speedup_vs_trl_defaults`` [>= 2.5] and ``opd_step_speedup_vs_trl_tuned`` [>= 1.3]
  (`bench_trl_step.py`): TRL ``GKDTrainer`` full on-policy step time over ours (``method=opd``), interleaved.

Writes one JSON object (each figure's value, goal, met and how it was measured, plus the machine) and
prints a table. A figure that cannot be measured here carries ``"unavailable": reason`` and no value.
The whole run keeps to ``--budget-s`` (default 570 s); a figure left without time is marked unavailable.
Timed figures run one at a time; ``--quick`` (tiny shapes, for the smoke test) runs them all at once.
Extra arguments are Hydra overrides of the toy runs (figures 1 and 4), e.g. ``cache_dir=/tmp/c``.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, compose, load_average, machine_facts, pick_threads, run_child  # noqa: E402

from dear.files import write_json_atomic  # noqa: E402

HERE = Path(__file__).resolve().parent
FIGURES = {  # name: (comparison, goal)
    "dear_over_opd_step_time": ("<=", 1.03),
    "step_peak_mem_flat": ("<=", 1.10),
    "loss_peak_mem_over_trl": ("<=", 0.10),
    "opd_step_speedup_vs_trl_defaults": (">=", 2.5),
    "opd_step_speedup_vs_trl_tuned": (">=", 1.3),
}
JOBS = ("step", "memory", "loss", "trl")  # in the order they run
QUICK_OVERRIDES = ["batch_size=2", "rollout.n=2", "rollout.max_new_tokens=8"]
MIB, GIB = 2**20, 2**30


def _cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), "--json", "-", *args]


def job_commands(args, overrides: list[str]) -> dict[str, tuple[list[str], float]]:
    """Each job's command line and its own time cap in seconds."""
    t = ["--threads", str(args.threads)]
    if args.quick:
        return {
            "step": (_cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "2", *t, *overrides), 240),
            "memory": (_cmd("bench_step_memory.py", "--quick", *t), 240),
            "loss": (_cmd("bench_loss_memory.py", "--quick", *t), 240),
            "trl": (_cmd("bench_trl_step.py", "--warmup", "0", "--repeats", "1", *t, *overrides), 240),
        }
    return {
        "step": (
            _cmd("bench_step.py", "--methods", "opd", "dear", "--repeats", "60", "--budget-s", "60", *t, *overrides),
            150,
        ),
        "memory": (_cmd("bench_step_memory.py", "--timeout", "150", *t), 320),
        "loss": (_cmd("bench_loss_memory.py", "--timeout", "200", *t), 480),
        "trl": (
            _cmd("bench_trl_step.py", "--warmup", "1", "--repeats", "12", "--budget-s", "90", "--timeout", "300")
            + [*t, *overrides],
            320,
        ),
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


# --- from a job's result to figures ----------------------------------------------------------------


def _figure(name: str, value: float | None, how: str, details: dict | None = None, unavailable: str | None = None):
    op, goal = FIGURES[name]
    fig: dict = {"value": None, "goal": f"{op} {goal}", "met": None, "how": how}
    if unavailable is None and (value is None or not math.isfinite(value)):
        unavailable = f"no finite value ({value!r})"
    if unavailable is not None:
        fig["unavailable"] = unavailable
    else:
        fig["value"] = round(float(value), 4)
        fig["met"] = bool(value <= goal) if op == "<=" else bool(value >= goal)
    if details:
        fig["details"] = details
    return fig


HOW = {
    "dear_over_opd_step_time": (
        "bench/bench_step.py: median wall time of distill_step (student and teacher forward, signals, "
        "selection, loss, backward) for method=dear over the same for method=opd, on one rollout batch of the "
        "embedded toy pair sampled once, methods interleaved round by round (order alternating)"
    ),
    "step_peak_mem_flat": (
        "bench/bench_step_memory.py: one process per configuration; random-weight Qwen2 student and teacher "
        "(V 151936, hidden 64, 2 layers), a hand-made rollout (prompts 16-48 tokens left-padded, responses 64-128 "
        "right-padded), method=dear, StepConfig(micro_batch_size=4, logits=chunked); after a warm-up step (AdamW "
        "moments exist) and dropping the gradients: peak RSS of one full step (distill_step, clipping, AdamW) "
        "above the RSS before it (malloc_trim(0), VmHWM reset via /proc/self/clear_refs), 32 rollouts over 8"
    ),
    "loss_peak_mem_over_trl": (
        "bench/bench_loss_memory.py: one process per side under an address-space limit; from the same hidden "
        "states [B, T, 64] and heads [151936, 64] (student's requiring grad), peak RSS of loss + backward above "
        "the inputs: dear.objective.distill_loss on HeadLogits (reverse_kl, every position weight 1) over "
        "trl.experimental.gkd.GKDTrainer.generalized_jsd_loss(beta=1) on logits materialised as h @ W^T"
    ),
    "opd_step_speedup_vs_trl_defaults": (
        "bench/bench_trl_step.py: median wall time of a full on-policy step (generation, teacher, loss, backward, "
        "clipping, optimizer) of TRL's GKDTrainer with GKDConfig defaults (lmbda=1, beta=1, same prompts, batch, "
        "max_new_tokens and sampling temperature; no eval/saving/reporting; CPU) over ours (method=opd), each "
        "side in its own process, one step each in turn"
    ),
    "opd_step_speedup_vs_trl_tuned": (
        "bench/bench_trl_step.py: as the defaults figure, with TRL tuned to our settings (fp32: bf16=False; "
        "gradient_checkpointing=False, so its generation keeps the KV cache)"
    ),
}


def figures_from(job: str, r: dict) -> dict[str, dict]:
    err = r.get("error")
    if job == "step":
        name = "dear_over_opd_step_time"
        if err:
            return {name: _figure(name, None, HOW[name], unavailable=err)}
        opd, dear = r["methods"]["opd"], r["methods"]["dear"]
        details = {
            "opd_median_ms": round(opd["median_ms"], 2),
            "dear_median_ms": round(dear["median_ms"], 2),
            "median_of_paired_ratios": round(dear["paired_ratio"], 4),
            "cpu_time_ratio": round(dear["cpu_ratio"], 4),
            "rounds": r["rounds"],
            "batch": r["batch"],
            "threads": r["threads"],
            "rollout_ms": round(r["rollout_ms"], 1),
        }
        return {name: _figure(name, dear["ratio"], HOW[name], details)}
    if job == "memory":
        name = "step_peak_mem_flat"
        if err:
            return {name: _figure(name, None, HOW[name], {"runs": r.get("runs")}, unavailable=err)}
        runs = {
            n: {
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
        return {name: _figure(name, r["ratio"], HOW[name], details)}
    if job == "loss":
        name = "loss_peak_mem_over_trl"
        if err:
            return {name: _figure(name, None, HOW[name], {"attempts": r.get("attempts")}, unavailable=err)}
        a = r["asked"]
        details = {
            "shape": [r["rows"], a["seq"], a["vocab"]],
            "hidden": a["hidden"],
            "ours_peak_gib": round(r["ours"]["peak_bytes"] / GIB, 3),
            "trl_peak_gib": round(r["trl"]["peak_bytes"] / GIB, 3),
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
        return {name: _figure(name, r["ratio"], HOW[name], details)}
    if job == "trl":
        names = ("opd_step_speedup_vs_trl_defaults", "opd_step_speedup_vs_trl_tuned")
        if err:
            return {n: _figure(n, None, HOW[n], unavailable=f"TRL GKDTrainer could not be timed: {err}") for n in names}
        out = {}
        for name, role, key in zip(names, ("trl-defaults", "trl-tuned"), ("defaults", "tuned")):
            details = {
                "ours_median_s": round(r["ours"]["median_s"], 3),
                f"trl_{key}_median_s": round(r[role]["median_s"], 3),
                "ours_mean_response_tokens": r["ours"]["mean_response_tokens"],
                f"trl_{key}_mean_response_tokens": r[role]["mean_response_tokens"],
                "rows": r["ours"]["rows"],
                "shape": r["shape"],
                "rounds": r["rounds"],
                "threads": r["threads"],
                "trl_settings": r[role].get("settings"),
            }
            out[name] = _figure(name, r[role]["median_s"] / r["ours"]["median_s"], HOW[name], details)
        return out
    raise ValueError(job)


# --- the table -------------------------------------------------------------------------------------


def _detail_line(name: str, fig: dict) -> str:
    if "unavailable" in fig:
        return f"unavailable: {fig['unavailable']}"
    d = fig.get("details", {})
    if name == "dear_over_opd_step_time":
        b = d["batch"]
        return (
            f"dear {d['dear_median_ms']:.1f} ms vs opd {d['opd_median_ms']:.1f} ms per step, median of {d['rounds']} "
            f"interleaved rounds ({b['sequences']} x {b['tokens']} tokens; paired {d['median_of_paired_ratios']:.3f}, "
            f"CPU time {d['cpu_time_ratio']:.3f})"
        )
    if name == "step_peak_mem_flat":
        runs = d["runs"]
        lo, hi = min(runs, key=int), max(runs, key=int)
        text = (
            f"{hi} rollouts {runs[hi]['peak_above_mib']:.1f} MiB vs {lo} rollouts {runs[lo]['peak_above_mib']:.1f} MiB "
            f"above weights + AdamW ({runs[lo]['weights_mib'] + runs[lo]['adamw_state_mib']:.0f} MiB)"
        )
        if "fixed_mmap_threshold" in d:
            text += f"; with glibc's mmap threshold fixed: x{d['fixed_mmap_threshold']['ratio']:.3f}"
        return text
    if name == "loss_peak_mem_over_trl":
        text = (
            f"ours {d['ours_peak_gib']:.2f} GiB vs TRL {d['trl_peak_gib']:.2f} GiB at {d['shape']} (loss + backward "
            f"{d['ours_seconds']:.1f} s vs {d['trl_seconds']:.1f} s; loss rel. diff {d['loss_rel_diff']:.1e})"
        )
        if "fallback" in d:
            text += "; " + d["fallback"].split(";")[0]
            asked = d.get("ours_at_asked_rows")
            if asked:
                text += f"; ours {asked['peak_gib']:.2f} GiB at {asked['rows']} rows"
        return text
    if name.startswith("opd_step_speedup"):
        key = "defaults" if name.endswith("defaults") else "tuned"
        return (
            f"TRL {key} {d[f'trl_{key}_median_s']:.2f} s vs ours {d['ours_median_s']:.2f} s per step, median of "
            f"{d['rounds']} rounds ({d[f'trl_{key}_mean_response_tokens']:.0f} vs "
            f"{d['ours_mean_response_tokens']:.0f} response tokens/step)"
        )
    return ""


def table(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"make bench{' --quick' if result['quick'] else ''}: {m['date']}, {m['cpu_model']}, {m['host_cores']} cores, "
        f"torch {m['torch']}, {m['threads']} torch thread(s) ({m['threads_reason']})",
        f"load average {m['load_average_at_start']} at start, {m['load_average_at_end']} at end; "
        f"{result['elapsed_s']:.0f} s",
        "",
        f"{'figure':<34}{'value':>9}  {'goal':<9}met",
    ]
    for name, fig in result["figures"].items():
        value = f"{fig['value']:.3f}" if fig["value"] is not None else "-"
        met = {True: "yes", False: "MISS", None: "n/a"}[fig["met"]]
        lines.append(f"{name:<34}{value:>9}  {fig['goal']:<9}{met}")
        lines.extend(textwrap.wrap(_detail_line(name, fig), 116, initial_indent="    ", subsequent_indent="      "))
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, all figures at once (the smoke test)")
    parser.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "latest.json"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 2 if idle, else 1)")
    parser.add_argument("--budget-s", type=float, default=570.0, help="wall-clock budget of the whole run")
    parser.add_argument("--only", nargs="+", choices=JOBS, default=list(JOBS))
    args, overrides = parser.parse_known_args()
    start = time.perf_counter()
    deadline = start + args.budget_s
    args.threads, reason = pick_threads(args.threads)
    machine = machine_facts(args.threads, reason)
    toy = (QUICK_OVERRIDES if args.quick else []) + overrides
    commands = job_commands(args, toy)

    results: dict[str, dict] = {}
    jobs = [j for j in JOBS if j in args.only]
    if args.quick:  # nothing is timed for real: all at once, the toy pair built while the others start
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = {j: pool.submit(run_child, *commands[j]) for j in jobs if j in ("memory", "loss")}
            prepare_toy_models(toy, args.threads)
            futures.update({j: pool.submit(run_child, *commands[j]) for j in jobs if j in ("step", "trl")})
            results = {j: futures[j].result() for j in jobs}
    else:  # one at a time, so that no figure competes with another for the cores
        prepare_toy_models(toy, args.threads)
        for j in jobs:
            left = deadline - time.perf_counter()
            if left < 30:
                results[j] = {"error": f"not run: {args.budget_s:.0f} s budget spent"}
                continue
            print(f"[bench] {j} (up to {min(commands[j][1], left):.0f} s) ...", file=sys.stderr, flush=True)
            results[j] = run_child(commands[j][0], timeout=min(commands[j][1], left))

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
        "overrides": toy,
    }
    out = Path(args.out)
    write_json_atomic(out, result)  # a killed run leaves the previous figures whole
    print(table(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
