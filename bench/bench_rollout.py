"""Generation on the CPU against its FLOP bound: SmolLM2-135M's rollouts and evaluation, and where the time goes.

    python bench/bench_rollout.py [--repeats 2] [--threads N] [--cache-dir DIR] [--json PATH]
    python bench/bench_rollout.py --quick        # 1 prompt x 2 samples and 4 prompts, 4 new tokens: seconds

Two cases, both through `dear.distill.rollout.generate` (dear's one generation path) on SmolLM2-135M-Instruct
in float32, with ``experiment=smollm2-chain_sum``'s prompts in the chat template:

- ``rollout``: a training step's batch, ``batch_size`` prompts x ``rollout.n`` samples (4 x 2), up to
  ``rollout.max_new_tokens`` (32), sampling at the rollout temperature;
- ``evaluation``: ``eval.batch_size`` prompts (64) of the same stream, up to ``benchmark.max_new_tokens`` (48),
  greedy, as the evaluator generates.

Forward hooks on the model time each forward ``generate`` makes: the first is the prefill (every prompt
token), the others decode (one token a row); the rest of ``generate``'s wall time is outside the model
(sampling, logits processing, stopping checks, tokenizing and decoding). Generation stops early when every
row has ended, so the steps counted are the ones that ran.

The bound: the model's matmul FLOPs, ``2 x (weights of the linear layers below the head) x tokens`` plus
``2 x (head weights) x logit rows`` (``generate`` asks the prefill for the last position's logits only), at
the machine's float32 matmul rate, measured as ``[512, H] @ [H, I]`` (the model's hidden and MLP widths) at
the same thread count. Attention scores, norms, rotary embeddings and sampling are outside the bound (a few
percent of the FLOPs at these lengths). The same matmul at the decode shape ``[rows, H] @ [H, I]`` tells how
much of decode's shortfall is the matmul kernel itself at few rows, and the rate of a large float32 copy
what reading every weight once a decode step costs (the bound at few rows).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import compose, report  # noqa: E402
from pairs import QUICK, SMOLLM2, default_cache_dir, smollm2_missing, step_prompts  # noqa: E402

BOUND_ROWS = 512  # rows of the matmul that sets the bound: a prefill-sized block


def matmul_rate(rows: int, inner: int, cols: int, seconds: float) -> float:
    """FLOP/s of float32 ``[rows, inner] @ [inner, cols]``: the median of five windows of ``seconds / 5``."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    out = torch.empty(rows, cols)
    for _ in range(3):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(5):
        iters, start = 0, time.perf_counter()
        while iters < 3 or time.perf_counter() - start < seconds / 5:
            torch.mm(a, b, out=out)
            iters += 1
        rates.append(2 * rows * inner * cols * iters / (time.perf_counter() - start))
    return statistics.median(rates)


def memory_rate(megabytes: int, seconds: float) -> float:
    """Bytes/s a float32 copy moves (read and write), the median of five windows: what streaming weights costs."""
    src = torch.randn(megabytes * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    rates = []
    for _ in range(5):
        iters, start = 0, time.perf_counter()
        while iters < 2 or time.perf_counter() - start < seconds / 5:
            dst.copy_(src)
            iters += 1
        rates.append(2 * src.numel() * 4 * iters / (time.perf_counter() - start))
    return statistics.median(rates)


def matmul_weights(model) -> tuple[int, int]:
    """``(weights of the linear layers below the LM head, weights of the head)``: the FLOPs per token / 2."""
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return body, head.weight.numel()


class ForwardClock:
    """The wall time and the input width (tokens a row) of each forward of ``model`` while installed."""

    def __init__(self, model):
        self.calls: list[tuple[float, int]] = []
        self._start, self._width = 0.0, 0
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._width = int(ids.shape[1]) if ids is not None else 0
        self._start = time.perf_counter()

    def _after(self, module, args, kwargs, output):
        self.calls.append((time.perf_counter() - self._start, self._width))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


def run_case(model, tokenizer, prompts: list[str], *, n: int, new: int, greedy: bool, temperature: float) -> dict:
    """One ``generate`` call, timed forward by forward."""
    from dear.distill.rollout import generate

    clock = ForwardClock(model)
    try:
        start = time.perf_counter()
        r = generate(model, tokenizer, prompts, n=n, temperature=temperature, max_new_tokens=new, greedy=greedy)
        wall = time.perf_counter() - start
    finally:
        clock.close()
    (prefill, width), decode = clock.calls[0], [s for s, _ in clock.calls[1:]]
    return {
        "rows": int(r.input_ids.shape[0]),
        "prompt_width": width,
        "steps": len(clock.calls),  # tokens sampled per row: one per forward
        "wall_s": wall,
        "prefill_s": prefill,
        "decode_s": sum(decode),
        "outside_s": wall - prefill - sum(decode),
        "new_tokens": int(r.response_mask.sum()),
    }


def against_bound(runs: list[dict], body: int, head: int, rate: float, decode_rate: float, bandwidth: float) -> dict:
    """The median run's times next to the bound at ``rate`` FLOP/s (``decode_rate``: at the decode shape;
    ``bandwidth``: bytes/s, for reading every weight once a decode step)."""
    m = {k: statistics.median(r[k] for r in runs) for k in ("wall_s", "prefill_s", "decode_s", "outside_s")}
    r = runs[0]
    rows, width, steps = r["rows"], r["prompt_width"], statistics.median(x["steps"] for x in runs)
    prefill_flops = 2 * body * rows * width + 2 * head * rows
    decode_flops = 2 * (body + head) * rows * (steps - 1)
    decode_steps = max(steps - 1, 1)
    bound_total = (prefill_flops + decode_flops) / rate
    return {
        **{k: round(v, 4) for k, v in m.items()},
        "rows": rows,
        "prompt_width": width,
        "steps": steps,
        "new_tokens_per_s": round(rows * steps / m["wall_s"], 1),
        "prefill_bound_s": round(prefill_flops / rate, 4),
        "decode_ms_per_step": round(1000 * m["decode_s"] / decode_steps, 2),
        "decode_ms_per_row_token": round(1000 * m["decode_s"] / decode_steps / rows, 3),
        "bound_ms_per_row_token": round(1000 * 2 * (body + head) / rate, 3),
        "weights_read_ms_per_step": round(1000 * 4 * (body + head) / bandwidth, 2),
        "outside_ms_per_step": round(1000 * m["outside_s"] / steps, 2),
        "fraction": bound_total / m["wall_s"],
        "prefill_fraction": round(prefill_flops / rate / m["prefill_s"], 4),
        "decode_fraction": round(decode_flops / rate / m["decode_s"], 4) if m["decode_s"] else None,
        "decode_fraction_at_decode_shape": round(decode_flops / decode_rate / m["decode_s"], 4)
        if m["decode_s"]
        else None,
        "share_of_wall": {
            k.removesuffix("_s"): round(m[k] / m["wall_s"], 4) for k in ("prefill_s", "decode_s", "outside_s")
        },
    }


def measure(args) -> dict:
    from dear.models.load import load_model
    from dear.preflight.settings import train_config

    torch.set_num_threads(args.threads)
    missing = smollm2_missing(args.cache_dir)
    if missing:
        return {"error": missing}
    s = train_config(compose([*SMOLLM2, f"cache_dir={args.cache_dir}"] + (QUICK if args.quick else [])))
    student = load_model(s.model, s.cache_dir, s.toy_task, trainable=True, progress=False)
    model, tokenizer = student.model, student.tokenizer
    body, head = matmul_weights(model)
    cfg = model.config
    seconds = 0.1 if args.quick else 2.0
    rate = matmul_rate(BOUND_ROWS, cfg.hidden_size, cfg.intermediate_size, seconds)
    bandwidth = memory_rate(64 if args.quick else 512, seconds)
    eval_rows = 4 if args.quick else s.eval.batch_size
    cases = {
        "rollout": dict(
            prompts=step_prompts(s, tokenizer),
            n=s.rollout.n,
            new=s.rollout.max_new_tokens,
            greedy=False,
            temperature=s.rollout.temperature,
        ),
        "evaluation": dict(
            prompts=step_prompts(s, tokenizer, batch_size=eval_rows),
            n=1,
            new=4 if args.quick else s.benchmark.max_new_tokens,
            greedy=True,
            temperature=1.0,
        ),
    }
    out = {
        "model": s.model.name,
        "threads": torch.get_num_threads(),
        "matmul_weights": {"below_head": body, "head": head},
        "bound_matmul": [BOUND_ROWS, cfg.hidden_size, cfg.intermediate_size],
        "matmul_gflops": round(rate / 1e9, 2),
        "memory_gbps": round(bandwidth / 1e9, 2),
        "cases": {},
    }
    run_case(model, tokenizer, cases["rollout"]["prompts"][:1], n=1, new=2, greedy=True, temperature=1.0)  # warm-up
    for name, c in cases.items():
        runs = [run_case(model, tokenizer, **c) for _ in range(args.repeats)]
        decode_rate = matmul_rate(runs[0]["rows"], cfg.hidden_size, cfg.intermediate_size, seconds)
        out["cases"][name] = {
            **against_bound(runs, body, head, rate, decode_rate, bandwidth),
            "decode_shape_matmul_gflops": round(decode_rate / 1e9, 2),
            "max_new_tokens": c["new"],
            "greedy": c["greedy"],
            "repeats": len(runs),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="generate calls per case (medians reported)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=None, help="where SmolLM2 is (default: dear's cache)")
    parser.add_argument("--quick", action="store_true", help="tiny batches and lengths (the smoke test)")
    parser.add_argument("--json", default=None, help="write the result here ('-': a JSON line on stdout)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    args.cache_dir = (args.cache_dir or default_cache_dir()).expanduser()
    r = measure(args)
    if not report(r, args.json):
        print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
