"""Peak memory and wall time of `dear.objective.distill_loss` against a naive implementation.

Forward + backward of the reverse-KL loss (normalize="selected", weights on 40% of the
positions) on a student ``[B, T, 151936]`` (requires grad) / teacher ``[B, T, 152064]`` float32
batch, the Qwen2.5 1.5B/7B head pair. Each implementation runs in a fresh subprocess so peaks do
not mix; a child reports ``ru_maxrss`` after the forward+backward minus ``ru_maxrss`` right after
its inputs were allocated, i.e. the memory the loss needs on top of its inputs (the gradient,
``[B, T, Vs]`` float32, included in both).

The naive implementation is what one writes first: ``log_softmax`` of both full tensors, the full
KL, autograd. At B = 8 it needs ~20 GB; each child runs under an address-space limit so that a
too-large shape fails with an out-of-memory line instead of waking the OOM killer.

    python bench/bench_objective.py             # [8, 512, V]; --batch 4 for a smaller machine
    python bench/bench_objective.py --quick     # [2, 64, 32000]-ish smoke run, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) for line in f}
    return info["MemAvailable"] / 2**20


def _naive_loss(student, teacher, weights, vocab):
    import torch

    lp = torch.log_softmax(student[..., :vocab], dim=-1)  # [B, T, V]
    lq = torch.log_softmax(teacher[..., :vocab], dim=-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)  # [B, T]
    return (weights * kl).sum() / weights.sum()


def child(args: argparse.Namespace) -> None:
    """Allocate the inputs, then time one forward+backward and report the peak above them."""
    limit = int(args.mem_limit_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    from dear.objective import distill_loss

    torch.manual_seed(0)
    b, t, vs, vt = args.batch, args.seq, args.vocab_student, args.vocab_teacher
    student = torch.randn(b, t, vs).mul_(3).requires_grad_()
    teacher = torch.randn(b, t, vt).mul_(3)
    weights = torch.zeros(b * t)
    weights[torch.randperm(b * t)[: round(0.4 * b * t)]] = 1.0
    weights = weights.reshape(b, t)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, inputs included

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    try:
        if args.impl == "chunked":
            loss, _ = distill_loss(student, teacher, weights, chunk_size=args.chunk_size)
        else:
            loss = _naive_loss(student, teacher, weights, min(vs, vt))
        loss.backward()
    except (RuntimeError, MemoryError) as err:  # allocation failed under the address-space limit
        print(json.dumps({"impl": args.impl, "error": str(err).splitlines()[0][:120]}))
        return
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss
    print(
        json.dumps(
            {
                "impl": args.impl,
                "seconds": seconds,
                "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu0,
                "peak_gib": (peak - base) / 2**20,
                "inputs_gib": base / 2**20,
                "loss": loss.item(),
                "grad_norm": float(student.grad.double().norm()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab-student", type=int, default=151936)
    parser.add_argument("--vocab-teacher", type=int, default=152064)
    parser.add_argument("--chunk-size", type=int, default=None, help="positions per chunk (default: 2**26 // V)")
    parser.add_argument("--quick", action="store_true", help="small shape [2, 64, 32000/32064]")
    parser.add_argument(
        "--mem-limit-gib",
        type=float,
        default=None,
        help="address-space limit per child (default: 90%% of MemAvailable)",
    )
    parser.add_argument("--impl", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.seq, args.vocab_student, args.vocab_teacher = 2, 64, 32000, 32064
    if args.mem_limit_gib is None:
        args.mem_limit_gib = 0.9 * _available_gib()
    if args.impl:
        child(args)
        return

    import torch

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results = []
    for impl in ("chunked", "naive"):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--impl",
            impl,
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--vocab-student",
            str(args.vocab_student),
            "--vocab-teacher",
            str(args.vocab_teacher),
            "--mem-limit-gib",
            str(args.mem_limit_gib),
        ]
        if args.chunk_size:
            cmd += ["--chunk-size", str(args.chunk_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        results.append(
            json.loads(lines[-1])
            if lines
            else {"impl": impl, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"}
        )

    b, t = args.batch, args.seq
    print(
        f"distill_loss reverse_kl, normalize=selected, 40% of positions weighted; student [{b}, {t}, "
        f"{args.vocab_student}] fp32 (requires grad), teacher [{b}, {t}, {args.vocab_teacher}] fp32; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, child RLIMIT_AS {args.mem_limit_gib:.1f} GiB"
    )
    print(
        f"{'impl':8} {'fwd+bwd s':>10} {'CPU s':>8} {'peak above inputs GiB':>22} {'inputs GiB':>11} "
        f"{'loss':>12} {'|grad|':>12}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['impl']:8} failed: {r['error']}")
            continue
        print(
            f"{r['impl']:8} {r['seconds']:10.2f} {r['cpu_seconds']:8.2f} {r['peak_gib']:22.2f} {r['inputs_gib']:11.2f} "
            f"{r['loss']:12.6f} {r['grad_norm']:12.6g}"
        )
    if all("error" not in r for r in results):
        fast, slow = results
        print(
            f"naive / chunked: wall time x{slow['seconds'] / fast['seconds']:.2f}, "
            f"CPU time x{slow['cpu_seconds'] / fast['cpu_seconds']:.2f}, "
            f"peak memory above inputs x{slow['peak_gib'] / max(fast['peak_gib'], 1e-9):.2f}; "
            f"loss rel. diff {abs(slow['loss'] - fast['loss']) / abs(slow['loss']):.1e}, "
            f"|grad| rel. diff {abs(slow['grad_norm'] - fast['grad_norm']) / slow['grad_norm']:.1e}"
        )


if __name__ == "__main__":
    main()
