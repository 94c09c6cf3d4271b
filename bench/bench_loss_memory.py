"""Peak memory of the distillation loss + backward from hidden states: ours against TRL's DistillationTrainer's.

    python bench/bench_loss_memory.py [--rows 8] [--seq 512] [--vocab 151936] [--hidden 64] [--json PATH]
    python bench/bench_loss_memory.py --quick        # [2, 64, 32000], seconds

Inputs, the same for both: student final hidden states ``[B, T, H]`` and LM head ``[V, H]`` (both
requiring grad, as in training), teacher hidden states and head (constants); reverse KL ``KL(p‖q)``
at every position, weight 1, averaged over positions.

- ours: ``dear.objective.distill_loss(HeadLogits(h_s, W_s), HeadLogits(h_t, W_t), ones, kind="reverse_kl")``,
  then ``backward``: logit rows are computed a chunk of positions at a time and never exist whole.
- TRL: the loss ``trl.DistillationTrainer`` computes (``_chunked_divergence_loss`` of
  ``trl.trainer.distillation_trainer`` with ``beta=1``, the reverse KL, every position in the completion
  mask) on the same hidden states and heads, then ``backward``: its chunked kernel
  (``trl.kernels.chunked_divergence``), here on the CPU in its torch fallback (no Triton) on float32 tiles
  of ``[min(B*T, 4096), 32768]``.

Each runs in a fresh process under an address-space limit (90% of MemAvailable), so a shape that does not
fit fails with an allocation error instead of waking the OOM killer; if TRL's does not fit at ``--rows``,
both are measured again at half the rows (and so on down to 1) and the result says so. Two probes around
loss + backward, after the inputs exist and TRL is imported: `common.AllocationTrace` (the peak of tensor
bytes alive at once, from the CPU allocator's own accounting: the figure) and `common.PeakRSS` (VmHWM reset
with clear_refs, minus VmRSS before: what the process held, freed heap included). The loss values and
gradient norms of both are reported as a check that both compute the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import AllocationTrace, PeakRSS, available_gib, emit, report, run_child, set_address_limit  # noqa: E402

IMPLS = ("ours", "trl")


def child(args) -> None:
    """Measure each of ``--impl`` in turn on the same inputs; one JSON line: ``{"results": {impl: ...}}``."""
    set_address_limit(args.mem_limit_gib)
    import torch

    torch.set_num_threads(args.threads)
    if "trl" in args.impl:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss as trl_loss
    from dear.objective import HeadLogits, distill_loss

    b, t, v, h = args.rows, args.seq, args.vocab, args.hidden
    g = torch.Generator().manual_seed(0)
    scale = 3.0 / h**0.5  # logits of standard deviation ~3
    h_s = torch.randn(b, t, h, generator=g).requires_grad_()
    w_s = (torch.randn(v, h, generator=g) * scale).requires_grad_()
    h_t = torch.randn(b, t, h, generator=g)
    w_t = torch.randn(v, h, generator=g) * scale
    results = {}
    for impl in args.impl:
        h_s.grad = w_s.grad = None
        probe = PeakRSS()
        probe.start()
        start = time.perf_counter()
        try:
            with AllocationTrace() as trace:
                with trace.phase("loss"):
                    if impl == "ours":
                        weights = torch.ones(b, t)
                        loss, _ = distill_loss(HeadLogits(h_s, w_s), HeadLogits(h_t, w_t), weights, kind="reverse_kl")
                    else:
                        mask = torch.ones(b, t, dtype=torch.long)  # every position is a completion token
                        loss, _, _ = trl_loss(h_s, h_t, w_s, w_t, mask, beta=1.0)
                    loss.backward()
        except (RuntimeError, MemoryError) as err:  # an allocation failed under the address-space limit
            results[impl] = {"impl": impl, "rows": b, "oom": True, "error": str(err).splitlines()[0][:160]}
            break
        seconds = time.perf_counter() - start
        peak = probe.stop()
        results[impl] = {
            "impl": impl,
            "rows": b,
            "peak_bytes": trace.peaks["loss"],
            "rss_peak_bytes": peak,
            "rss_before_bytes": probe.base_bytes,
            "seconds": seconds,
            "loss": float(loss),
            "grad_norm_hidden": float(h_s.grad.double().norm()),
            "grad_norm_head": float(w_s.grad.double().norm()),
            "how": f"tensors: the CPU allocator's accounting (torch.profiler); RSS: {probe.how}",
        }
        del loss
    emit({"results": results})


def _run(args, impls: list[str], rows: int) -> dict[str, dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--impl", *impls, "--rows", str(rows)]
    cmd += ["--seq", str(args.seq), "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
    cmd += ["--threads", str(args.threads), "--mem-limit-gib", str(args.mem_limit_gib)]
    r = run_child(cmd, timeout=args.timeout * len(impls))
    return {impl: r.get("results", {}).get(impl, {"error": r.get("error", "no result")}) for impl in impls}


def measure(args) -> dict:
    """TRL first (it is the one that may not fit), then ours at the rows where TRL fit."""
    out = {
        "asked": {"rows": args.rows, "seq": args.seq, "vocab": args.vocab, "hidden": args.hidden},
        "mem_limit_gib": round(args.mem_limit_gib, 1),
        "attempts": [],
    }
    rows = args.rows
    while rows >= 1:
        if args.one_process:
            both = _run(args, ["trl", "ours"], rows)
            trl = both["trl"]
        else:
            trl = _run(args, ["trl"], rows)["trl"]
        out["attempts"].append({"rows": rows, "trl": trl})
        if trl.get("oom"):
            rows //= 2
            continue
        if "error" in trl:
            out["error"] = f"TRL at {rows} rows: {trl['error']}"
            return out
        ours = both["ours"] if args.one_process else _run(args, ["ours"], rows)["ours"]
        out["attempts"][-1]["ours"] = ours
        if "error" in ours:
            out["error"] = f"ours at {rows} rows: {ours['error']}"
            return out
        out["rows"] = rows
        if rows != args.rows:
            out["fallback"] = (
                f"TRL's loss did not fit at {args.rows} rows under a {args.mem_limit_gib:.1f} GiB address-space "
                f"limit; measured at {rows} rows (TRL's peak grows with the rows, ours does not)"
            )
            out["ours_at_asked_rows"] = _run(args, ["ours"], args.rows)["ours"]  # ours at the shape asked for
        out["ours"], out["trl"] = ours, trl
        out["ratio"] = ours["peak_bytes"] / max(trl["peak_bytes"], 1)
        out["rss_ratio"] = ours["rss_peak_bytes"] / max(trl["rss_peak_bytes"], 1)
        out["loss_rel_diff"] = abs(ours["loss"] - trl["loss"]) / max(abs(trl["loss"]), 1e-12)
        out["grad_rel_diff"] = abs(ours["grad_norm_hidden"] - trl["grad_norm_hidden"]) / max(
            trl["grad_norm_hidden"], 1e-12
        )
        out["how"] = ours["how"]
        return out
    out["error"] = "TRL's loss did not fit even at 1 row"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child")
    parser.add_argument("--mem-limit-gib", type=float, default=None, help="per child (default: 90%% of MemAvailable)")
    parser.add_argument("--quick", action="store_true", help="[2, 64, 32000]")
    parser.add_argument("--json", default=None, help="write the result here ('-': a JSON line on stdout)")
    parser.add_argument("--one-process", action="store_true", help="both sides in one child (quick)")
    parser.add_argument("--impl", choices=IMPLS, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.seq, args.vocab, args.one_process = 2, 64, 32000, True
    if args.mem_limit_gib is None:
        args.mem_limit_gib = 0.9 * available_gib()
    if args.impl:
        child(args)
        return
    r = measure(args)
    if not report(r, args.json):
        print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
