"""Peak memory of one training step above weights and optimizer state, at a fixed micro-batch, vs. rollouts.

    python bench/bench_step_memory.py [--rollouts 8 32] [--micro-batch 4] [--json PATH]
    python bench/bench_step_memory.py --quick        # tiny shapes, seconds

Student and teacher are random-weight Qwen2 models built from a config (no download) with a real
vocabulary (V = 151936, Qwen2.5's) and a small hidden size (64, 2 layers, untied heads), so the
vocabulary-sized work dominates as in a real run while the step stays seconds on a CPU. The rollout is
made by hand: random token ids, prompts of 16-48 tokens left-padded to 48, responses of 64-128 tokens
right-padded to 128 (the 8-rollout batch is the first 8 rows of the 32-rollout one).

Each configuration runs in a fresh process (``--quick``: both in one): build the models and AdamW,
take one warm-up step on one micro-batch (so the optimizer's moments exist), drop the gradients, then
measure one full step (`dear.distill.step.distill_step` with ``StepConfig(micro_batch_size, logits="chunked")``
over every micro-batch, gradient clipping, AdamW step, gradients dropped) twice, with two probes:

- `common.PeakRSS` (the process's view): glibc ``malloc_trim(0)``, reset ``VmHWM`` via ``/proc/self/clear_refs``,
  step, then ``VmHWM`` minus the ``VmRSS`` just before. Freed heap that glibc keeps resident counts.
- `common.AllocationTrace` (the tensors' view), on the second step: the most bytes of tensors alive at once
  during the step, from the CPU allocator's own accounting of every allocation and free.

What was there before the step (weights, moments, the rollout, the libraries) is not counted; the step's
gradients, activations, chunk workspaces and optimizer temporaries are. Reported: each probe's peak per
configuration and its ratio of the largest to the smallest number of rollouts (flat = 1.0).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import AllocationTrace, PeakRSS, compose, emit, offline_env, report, run_child  # noqa: E402
from pairs import QWEN_VOCAB, qwen2_config  # noqa: E402


def random_qwen2(vocab: int, hidden: int, layers: int, seed: int, context: int):
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(
        qwen2_config(vocab, hidden, layers, head_dim=16, context=context, tie=False, pad_token_id=0)
    )


def random_rollout(rows: int, prompt: int, response: int, vocab: int, seed: int = 0):
    """A `Rollout` of random ids: prompts of prompt/3..prompt tokens left-padded to ``prompt``, responses of
    response/2..response tokens right-padded to ``response``."""
    import torch

    from dear.distill.rollout import Rollout, position_ids

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (rows, prompt + response), generator=g)
    p_len = torch.randint(max(1, prompt // 3), prompt + 1, (rows,), generator=g)
    r_len = torch.randint(max(1, response // 2), response + 1, (rows,), generator=g)
    cols = torch.arange(prompt + response)
    in_prompt = (cols[None] >= prompt - p_len[:, None]) & (cols[None] < prompt)
    in_response = (cols[None] >= prompt) & (cols[None] < prompt + r_len[:, None])
    attention = (in_prompt | in_response).long()
    ids = ids.masked_fill(attention == 0, 0)
    return Rollout(ids, attention, position_ids(attention), in_response, prompt, [""] * rows)


def child(args) -> None:
    """Measure each of ``--rollouts-one`` in turn (fresh models and optimizer each); one JSON line of runs."""
    import torch

    from dear.config.schema import StepConfig
    from dear.distill.step import distill_step
    from dear.models.schedule import optimizer
    from dear.preflight.settings import train_config

    torch.set_num_threads(args.threads)
    s = train_config(compose([f"method={args.method}"]))
    context = args.prompt + args.response + 8
    step = StepConfig(micro_batch_size=args.micro_batch, logits="chunked", gradient_checkpointing=False)
    everything = random_rollout(max(args.all_rollouts), args.prompt, args.response, args.vocab)
    runs = {}
    for n in args.rollouts_one:
        student = random_qwen2(args.vocab, args.hidden, args.layers, 0, context).train()
        teacher = random_qwen2(args.vocab, args.hidden, args.layers, 1, context).eval().requires_grad_(False)
        opt, _ = optimizer(student.parameters(), s.optim, s.steps)  # the run's (fused) AdamW
        rollout = everything.rows(slice(0, n))

        def train_step(batch, student=student, teacher=teacher, opt=opt) -> float:
            opt.zero_grad(set_to_none=True)
            loss, _ = distill_step(
                student,
                teacher,
                batch,
                s.method,
                s.loss,
                vocab_size=args.vocab,
                generator=torch.Generator().manual_seed(0),
                step=step,
            )
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss)

        train_step(rollout.rows(slice(0, args.micro_batch)))  # warm-up: AdamW's moments exist from here on
        weights = sum(p.numel() * p.element_size() for m in (student, teacher) for p in m.parameters())
        moments = sum(
            t.numel() * t.element_size()
            for st in opt.state.values()
            for t in st.values()
            if isinstance(t, torch.Tensor)
        )
        probe = PeakRSS()
        probe.start()
        start = time.perf_counter()
        loss = train_step(rollout)
        seconds = time.perf_counter() - start
        peak = probe.stop()
        with AllocationTrace() as trace:
            with trace.phase("step"):
                train_step(rollout)
        runs[str(n)] = {
            "rollouts": n,
            "peak_bytes": peak,
            "tensor_peak_bytes": trace.peaks["step"],
            "tensor_step_seconds": trace.seconds["step"],
            "rss_before_bytes": probe.base_bytes,
            "weights_bytes": weights,
            "optimizer_state_bytes": moments,
            "response_tokens": int(rollout.target_mask.sum()),
            "seconds": seconds,
            "loss": loss,
            "how": probe.how,
        }
        del student, teacher, opt, train_step
    emit({"runs": runs})


def measure(args) -> dict:
    out = {
        "shape": {
            "vocab": args.vocab,
            "hidden": args.hidden,
            "layers": args.layers,
            "prompt_width": args.prompt,
            "response_width": args.response,
            "micro_batch_size": args.micro_batch,
            "logits": "chunked",
            "method": args.method,
        },
        "malloc_mmap_threshold": args.malloc_mmap_threshold,
        "one_process": args.one_process,
        "runs": {},
    }
    groups = [args.rollouts] if args.one_process else [[n] for n in args.rollouts]
    fixed = {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)} if args.malloc_mmap_threshold else {}
    for group in groups:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--rollouts-one", *map(str, group)]
        cmd += ["--all-rollouts", *map(str, args.rollouts)]
        cmd += ["--micro-batch", str(args.micro_batch), "--vocab", str(args.vocab), "--hidden", str(args.hidden)]
        cmd += ["--layers", str(args.layers), "--prompt", str(args.prompt), "--response", str(args.response)]
        cmd += ["--method", args.method, "--threads", str(args.threads)]
        r = run_child(cmd, timeout=args.timeout * len(group), env=offline_env(**fixed))
        for n in group:
            out["runs"][str(n)] = r["runs"][str(n)] if "runs" in r else {"error": r.get("error", "no result")}
    errors = [f"{n} rollouts: {r['error']}" for n, r in out["runs"].items() if "error" in r]
    if errors:
        out["error"] = "; ".join(errors)
        return out
    lo, hi = out["runs"][str(min(args.rollouts))], out["runs"][str(max(args.rollouts))]
    out["ratio"] = hi["peak_bytes"] / max(lo["peak_bytes"], 1)
    out["tensor_ratio"] = hi["tensor_peak_bytes"] / max(lo["tensor_peak_bytes"], 1)
    out["how"] = lo["how"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=QWEN_VOCAB)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=48)
    parser.add_argument("--response", type=int, default=128)
    parser.add_argument("--method", default="dear")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    parser.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=None,
        help="run the children with MALLOC_MMAP_THRESHOLD_ set (glibc's dynamic threshold off): a diagnosis",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes: V 4096, 2 and 4 rollouts of 16+32 tokens")
    parser.add_argument("--one-process", action="store_true", help="every configuration in one child (quick)")
    parser.add_argument("--json", default=None, help="write the result here ('-': a JSON line on stdout)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rollouts-one", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--all-rollouts", type=int, nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.rollouts, args.micro_batch, args.vocab, args.prompt, args.response = [2, 4], 2, 4096, 16, 32
        args.one_process = True
    r = measure(args)
    if not report(r, args.json):
        print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
