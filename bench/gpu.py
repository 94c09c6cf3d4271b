"""GPU figures at the real pair's shapes: rollout speed, student/teacher throughput and MFU, full-step peak memory.

    python bench/gpu.py [--peak-tflops T] [--out outputs/bench/gpu.json] [--budget-s 420]
    python bench/gpu.py --cpu-smoke          # tiny shapes on the CPU: every code path, no meaningful number

Models are random-weight Qwen2 models built from the Qwen2.5-1.5B-Instruct (student) and Qwen2.5-7B-Instruct
(teacher) configurations (hidden size, layers, heads, intermediate size, vocabulary; no download), in bf16
on the GPU. Settings come from the composed ``experiment=qwen-1.5b-7b`` config (conf/experiment/, with
conf/setup/real-math.yaml): 32 prompts x 4 samples, up to 1024 new tokens, its ``step`` (micro-batches,
chunked logits, gradient checkpointing), method and loss. Prompts are 256 random token ids.

Measured, in this order (each part is skipped, with the reason, once ``--budget-s`` is spent):

1. Rollouts with `dear.rollout.generate` (Hugging Face ``generate``), 128 sequences x 1024 new tokens:
   static KV cache + ``torch.compile`` (the first call, which compiles, is timed apart) and the dynamic
   cache. New tokens/s = sampled response tokens / wall seconds. Goal: >= 20,000 new tokens/s.
2. One full training step at the experiment's settings: AdamW's state is created first (a one-sequence
   step), then ``torch.cuda.reset_peak_memory_stats``; rollout (static cache, compiled), then
   `dear.step.distill_step` under bf16 autocast, clipping and the AdamW step. Reported: peak
   ``torch.cuda.max_memory_allocated`` (and reserved) of the whole step, and the training-side MFU of the
   distill_step: ``(6·N_student + 2·N_teacher) · tokens / (seconds · peak FLOP/s)``. Goals: peak <= 80 GiB
   (one 80 GB GPU), MFU >= 40%.
3. Student training alone (forward + backward of a plain LM loss, micro-batch 8 x 1280 tokens, with and
   without gradient checkpointing) and teacher forward alone (``inference_mode``): tokens/s and MFU
   (``6·N·tokens`` for training, ``2·N·tokens`` for the frozen teacher).

N counts the parameters that take part in matrix products: everything but the input embedding, the LM
head counted once (tied or not). Attention's quadratic term is not counted (the usual ``6N`` convention),
so MFU is a slight underestimate. Peak FLOP/s: dense bf16 tensor-core peak from a small table by device
name (H100 SXM/H200 989 TFLOP/s, H100 PCIe 756, A100 312, L40S 362, L4 121, B200 2250) or ``--peak-tflops``.
Writes ``outputs/bench/gpu.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import ROOT, PeakRSS, compose, machine_facts  # noqa: E402

SHAPES = {  # the public configurations, without the weights
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
SMOKE_SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "qwen2.5-7b": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
}
SMOKE_VOCAB = 512
# Dense bf16 tensor-core peak, TFLOP/s (no sparsity); the first name found in the device's name wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
]
GOALS = {  # figure: (comparison, goal)
    "rollout_new_tokens_per_s_static_compiled": (">=", 20000.0),
    "training_side_mfu": (">=", 0.40),
    "full_step_peak_gib": ("<=", 80.0),
}
PROMPT_TOKENS = 256
GIB = 2**30


class IdTokenizer:
    """Just enough of a tokenizer for `dear.rollout.generate`: a prompt is its token ids written out."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        import torch

        rows = [[int(x) for x in t.split()] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left-padded, as the project's tokenizers are set up
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [""] * len(ids)


def build(name: str, device, dtype, smoke: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = dict(SHAPES[name])
    if smoke:
        shape.update(SMOKE_SHAPES[name], vocab_size=SMOKE_VOCAB)
    config = Qwen2Config(
        **shape,
        max_position_embeddings=32768 if not smoke else 512,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0 if name.endswith("1.5b") else 1)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def matmul_params(model) -> int:
    """N: the parameters in matrix products (all but the input embedding; the head once, tied or not)."""
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embed.numel() + (head.numel() if head is embed else 0)


def peak_flops(device, asked_tflops: float | None) -> tuple[float | None, str]:
    import torch

    if asked_tflops:
        return asked_tflops * 1e12, f"--peak-tflops {asked_tflops}"
    if device.type != "cuda":
        return None, "no bf16 peak known for a CPU; pass --peak-tflops"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16 (table)"
    return None, f"{name} is not in the table; pass --peak-tflops"


class Timer:
    """Wall seconds of a block, the device synchronised at both ends."""

    def __init__(self, device):
        self.device, self.seconds = device, 0.0

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self._sync()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.seconds = time.perf_counter() - self.start


def main() -> None:  # noqa: C901  (one straight script of parts)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (tests the code paths)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the parts left after this many s")
    parser.add_argument("--out", default=None, help="default: outputs/bench/gpu.json (gpu-smoke.json with --cpu-smoke)")
    args = parser.parse_args()
    start = time.perf_counter()

    import torch

    from dear.config import train_config
    from dear.files import write_json_atomic
    from dear.models import set_gradient_checkpointing
    from dear.rollout import generate
    from dear.step import distill_step

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --cpu-smoke on a CPU")
    device = torch.device("cpu" if smoke else "cuda")
    dtype = torch.float32 if smoke else torch.bfloat16
    if smoke:
        torch.set_num_threads(1)
    s = train_config(compose(["experiment=qwen-1.5b-7b"]))
    prompts_n, samples, new_tokens = s.batch_size, s.rollout.n, s.rollout.max_new_tokens
    micro, prompt_tokens = s.step.micro_batch_size or 8, PROMPT_TOKENS
    if smoke:
        prompts_n, samples, new_tokens, micro, prompt_tokens = 2, 2, 8, 2, 8
    flops_peak, flops_how = peak_flops(device, args.peak_tflops)
    facts = machine_facts(torch.get_num_threads(), "gpu.py")
    facts["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result: dict = {
        "smoke": smoke,
        "machine": facts,
        "settings": {
            "experiment": "qwen-1.5b-7b",
            "prompts": prompts_n,
            "samples_per_prompt": samples,
            "max_new_tokens": new_tokens,
            "prompt_tokens": prompt_tokens,
            "step": {
                "micro_batch_size": micro,
                "logits": s.step.logits,
                "gradient_checkpointing": s.step.gradient_checkpointing,
            },
            "method": s.method.name,
            "dtype": str(dtype),
            "peak_flops": flops_peak,
            "peak_flops_how": flops_how,
        },
        "parts": {},
    }
    parts = result["parts"]

    def part(name: str, fn) -> None:
        left = args.budget_s - (time.perf_counter() - start)
        if left <= 0:
            parts[name] = {"skipped": f"--budget-s {args.budget_s:.0f} spent"}
            return
        print(f"[gpu] {name} ...", file=sys.stderr, flush=True)
        try:
            parts[name] = fn()
        except Exception as err:  # noqa: BLE001  (one part failing leaves the others standing)
            parts[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def mfu(flops: float, seconds: float) -> float | None:
        return flops / seconds / flops_peak if flops_peak else None

    student = build("qwen2.5-1.5b", device, dtype, smoke)
    teacher = build("qwen2.5-7b", device, dtype, smoke).eval().requires_grad_(False)
    n_s, n_t = matmul_params(student), matmul_params(teacher)
    result["settings"]["matmul_params"] = {"student": n_s, "teacher": n_t}
    vocab = min(student.config.vocab_size, teacher.config.vocab_size)
    tok = IdTokenizer(pad_token_id=0, eos_token_id=vocab - 1)  # a random model samples it ~once per 150k tokens
    g = torch.Generator().manual_seed(0)
    prompts = [
        " ".join(str(i) for i in torch.randint(2, vocab - 1, (prompt_tokens,), generator=g).tolist())
        for _ in range(prompts_n)
    ]
    compile_ok = device.type == "cuda"

    def rollout(cache: str):
        return generate(
            student,
            tok,
            prompts,
            n=samples,
            temperature=s.rollout.temperature,
            max_new_tokens=new_tokens,
            cache=cache,
            compile=compile_ok and cache == "static",
        )

    def timed_rollout(cache: str, warm: bool) -> dict:
        out = {}
        if warm:  # the first call with a static cache compiles (once per shape)
            with Timer(device) as t:
                rollout(cache)
            out["first_call_s"] = round(t.seconds, 2)
        with Timer(device) as t:
            r = rollout(cache)
        new = int(r.response_mask.sum())
        out.update(seconds=round(t.seconds, 3), new_tokens=new, new_tokens_per_s=new / t.seconds)
        out["rows"] = int(r.input_ids.shape[0])
        return out

    part("rollout_static_compiled", lambda: {**timed_rollout("static", warm=True), "compiled": compile_ok})

    def checkpointing(on: bool) -> None:
        set_gradient_checkpointing(student, on)  # as dear/train.py turns it on

    def full_step() -> dict:
        opt = torch.optim.AdamW(student.parameters(), lr=s.optim.lr, weight_decay=s.optim.weight_decay)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

        def train(batch):
            # Checkpointing only around training: the rollouts then reuse the graphs compiled in part 1.
            checkpointing(s.step.gradient_checkpointing)
            student.train()
            try:
                opt.zero_grad(set_to_none=True)
                with autocast:
                    distill_step(student, teacher, batch, s.method, s.loss, vocab_size=vocab, step=s.step)
                torch.nn.utils.clip_grad_norm_(student.parameters(), s.optim.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            finally:
                checkpointing(False)

        first = rollout("static")
        train(first.rows(slice(0, 1)))  # AdamW's moments exist from here on
        del first
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            probe = PeakRSS()
            probe.start()
        with Timer(device) as t_gen:
            batch = rollout("static")
        gen_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        with Timer(device) as t_step:
            train(batch)
        tokens = int(batch.attention_mask.sum())
        out = {
            "rows": int(batch.input_ids.shape[0]),
            "tokens": tokens,
            "new_tokens": int(batch.response_mask.sum()),
            "rollout_s": round(t_gen.seconds, 2),
            "train_s": round(t_step.seconds, 2),
            "train_tokens_per_s": tokens / t_step.seconds,
            "training_side_mfu": mfu((6 * n_s + 2 * n_t) * tokens, t_step.seconds),
        }
        if device.type == "cuda":
            out.update(
                peak_allocated_gib=torch.cuda.max_memory_allocated(device) / GIB,
                peak_reserved_gib=torch.cuda.max_memory_reserved(device) / GIB,
                peak_in_rollout_gib=gen_peak / GIB,
                allocated_before_gib=before / GIB,
                how="torch.cuda.max_memory_allocated over rollout + distill_step + clipping + AdamW, weights and "
                "AdamW state included",
            )
        else:
            probe.stop()
            out.update(peak_above_before_gib=probe.peak_bytes / GIB, how=probe.how)
        return out

    part("full_step", full_step)
    part("rollout_dynamic", lambda: timed_rollout("dynamic", warm=False))

    length = prompt_tokens + new_tokens
    ids = torch.randint(2, vocab - 1, (micro, length), generator=g).to(device)

    def median_seconds(run) -> float:
        """Median wall time of ``run()`` over three calls after one warm-up."""
        times = []
        for k in range(4):
            with Timer(device) as t:
                run()
            if k:
                times.append(t.seconds)
        return statistics.median(times)

    def throughput(seconds: float, flops_per_token: int) -> dict:
        tokens = micro * length
        return {
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "mfu": mfu(flops_per_token * tokens, seconds),
        }

    def student_train(with_checkpointing: bool) -> dict:
        def forward_backward():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = student(input_ids=ids, labels=ids).loss
            loss.backward()
            student.zero_grad(set_to_none=True)

        checkpointing(with_checkpointing)
        student.train()
        try:
            return throughput(median_seconds(forward_backward), 6 * n_s)
        finally:
            checkpointing(False)

    part("student_train_checkpointed", lambda: student_train(True))
    part("student_train", lambda: student_train(False))

    def teacher_forward() -> dict:
        def forward():
            with torch.inference_mode():
                teacher(input_ids=ids)

        return throughput(median_seconds(forward), 2 * n_t)

    part("teacher_forward", teacher_forward)

    # --- figures against goals
    def figure(name: str, value, source: str) -> dict:
        op, goal = GOALS[name]
        fig = {"value": value, "goal": f"{op} {goal:g}", "met": None, "from": source}
        if value is not None:
            fig["met"] = bool(value >= goal) if op == ">=" else bool(value <= goal)
            return fig
        where = parts.get(source.split(".")[0], {})
        reason = where.get("error") or where.get("skipped")
        if not reason and source.endswith("mfu") and not flops_peak:
            reason = flops_how
        fig["unavailable"] = reason or "not measured (see parts)"
        return fig

    fs = parts.get("full_step", {})
    result["figures"] = {
        "rollout_new_tokens_per_s_static_compiled": figure(
            "rollout_new_tokens_per_s_static_compiled",
            parts.get("rollout_static_compiled", {}).get("new_tokens_per_s"),
            "rollout_static_compiled.new_tokens_per_s",
        ),
        "training_side_mfu": figure("training_side_mfu", fs.get("training_side_mfu"), "full_step.training_side_mfu"),
        "full_step_peak_gib": figure(
            "full_step_peak_gib", fs.get("peak_allocated_gib", fs.get("peak_above_before_gib")), "full_step.peak"
        ),
    }
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out or ROOT / "outputs" / "bench" / ("gpu-smoke.json" if smoke else "gpu.json"))
    write_json_atomic(out, result)

    note = " (CPU smoke: tiny shapes, the numbers mean nothing)" if smoke else ""
    print(f"{facts['device']}, torch {facts['torch']}; {result['elapsed_s']:.0f} s{note}")
    print(f"{'figure':<42}{'value':>14}  {'goal':<10}met")
    for name, fig in result["figures"].items():
        value = "-" if fig["value"] is None else f"{fig['value']:.4g}"
        met = {True: "yes", False: "MISS", None: "n/a"}[fig["met"]]
        print(f"{name:<42}{value:>14}  {fig['goal']:<10}{met}  {fig.get('unavailable', '')}")
    for name, p in parts.items():
        keys = ("new_tokens_per_s", "tokens_per_s", "train_tokens_per_s", "mfu", "training_side_mfu", "first_call_s")
        shown = ", ".join(f"{k} {p[k]:.4g}" for k in keys if isinstance(p.get(k), float | int))
        print(f"  {name:<30} {shown or p.get('error') or p.get('skipped', '')}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
