"""Time one training step per method, side by side on the same batch.

    python bench/bench_step.py [--repeats 20] [--warmup 1] [--methods opd dear ...] [--threads N] [--json PATH]
                               [overrides ...]

The overrides compose the run as ``dear-train`` would (the embedded toy pair without any; `bench/pairs.py`
gives those of the real-vocabulary pairs), and the prompts are the first batch of its prompt stream,
formatted as ``dear-train`` formats them. One rollout batch is sampled once (same prompts, same samples for
every method); then each method's step (`dear.distill.step.distill_step`: student forward with hidden
states, teacher forward, signals, selection, loss, backward) is timed in interleaved rounds, the order
reversed every other round, so drift on a shared machine hits all methods alike. The rollout itself
(identical for every method) is timed separately. Reported: median ms per step (wall and CPU time of this
process) and the ratio to the first method, both as the ratio of medians and as the median of the
per-round ratios. ``--warmup`` steps of each method go first, untimed. ``--budget-s`` stops the rounds
early (after at least 5) once that many seconds of rounds have passed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import compose, report  # noqa: E402
from pairs import load_pair, step_prompts  # noqa: E402

MIN_ROUNDS = 5


def measure(
    methods: list[str], repeats: int, overrides: list[str], threads: int, budget_s: float | None, warmup: int = 1
) -> dict:
    from dear.distill.rollout import generate
    from dear.distill.step import distill_step
    from dear.preflight.settings import train_config

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    s, student, teacher, vocab = load_pair(overrides)
    prompts = step_prompts(s, student.tokenizer)
    t0 = time.perf_counter()
    rollout = generate(
        student.model,
        student.tokenizer,
        prompts,
        n=s.rollout.n,
        temperature=s.rollout.temperature,
        max_new_tokens=s.rollout.max_new_tokens,
    )
    rollout_ms = 1000 * (time.perf_counter() - t0)
    mask = rollout.target_mask
    settings = {m: train_config(compose(overrides + [f"method={m}"])) for m in methods}

    def step(method: str) -> tuple[float, float]:
        """The training step dear-train runs (`distill_step`), forward and backward: (wall ms, CPU ms)."""
        cfg = settings[method]
        cpu, start = time.process_time(), time.perf_counter()
        distill_step(
            student.model,
            teacher.model,
            rollout,
            cfg.method,
            cfg.loss,
            vocab_size=vocab,
            generator=torch.Generator().manual_seed(0),
            step=cfg.step,
        )  # runs backward too
        student.model.zero_grad(set_to_none=True)
        return 1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu)

    wall: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(warmup):
        for m in methods:
            step(m)
    begin = time.perf_counter()
    for k in range(repeats):
        for m in methods if k % 2 == 0 else methods[::-1]:
            w, c = step(m)
            wall[m].append(w)
            cpu[m].append(c)
        if budget_s is not None and k + 1 >= MIN_ROUNDS and time.perf_counter() - begin > budget_s:
            break
    base = methods[0]
    out = {
        "batch": {
            "sequences": int(rollout.input_ids.shape[0]),
            "tokens": int(rollout.input_ids.shape[1]),
            "response_tokens": int(mask.sum()),
        },
        "rollout_ms": rollout_ms,
        "model": s.model.name,
        "vocab": vocab,
        "logits": s.step.logits,
        "micro_batch_size": s.step.micro_batch_size,
        "threads": torch.get_num_threads(),
        "rounds": len(wall[base]),
        "methods": {},
    }
    for m in methods:
        out["methods"][m] = {
            "median_ms": statistics.median(wall[m]),
            "median_cpu_ms": statistics.median(cpu[m]),
            "ratio": statistics.median(wall[m]) / statistics.median(wall[base]),
            "paired_ratio": statistics.median(a / b for a, b in zip(wall[m], wall[base])),
            "cpu_ratio": statistics.median(cpu[m]) / statistics.median(cpu[base]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each method first")
    parser.add_argument("--methods", nargs="+", default=["opd", "dear", "entropy", "tip", "random"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: trainer.threads or 2)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop the rounds after this many seconds")
    parser.add_argument("--json", default=None, help="write the result here ('-': a JSON line on stdout)")
    args, overrides = parser.parse_known_args()
    if args.threads is None:
        from dear.preflight.settings import train_config

        args.threads = train_config(compose(overrides)).trainer.threads or 2
    r = measure(args.methods, args.repeats, overrides, args.threads, args.budget_s, args.warmup)
    if report(r, args.json):
        return
    b = r["batch"]
    print(
        f"batch: {b['sequences']} sequences x {b['tokens']} tokens, {b['response_tokens']} response tokens; rollout "
        f"(shared) {r['rollout_ms']:.0f} ms; torch threads {r['threads']}; {r['rounds']} interleaved rounds"
    )
    print(f"{'method':<16}{'median ms/step':>16}{'CPU ms':>10}{'ratio':>8}{'paired':>8}   (step without the rollout)")
    for m, v in r["methods"].items():
        print(f"{m:<16}{v['median_ms']:>16.1f}{v['median_cpu_ms']:>10.1f}{v['ratio']:>8.2f}{v['paired_ratio']:>8.2f}")


if __name__ == "__main__":
    main()
