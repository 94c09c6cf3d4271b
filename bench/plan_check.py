"""Check `dear.plan`'s memory formulas against the allocator's own accounting on the CPU, phase by phase.

    python bench/plan_check.py             # SmolLM2-135M, Qwen2 at V = 151936 (hidden 64, 256), Qwen3, a wide
                                           # Qwen2 at V = 2048: ~3 minutes on one thread
    python bench/plan_check.py --quick     # one small Qwen2 at the real vocabulary: seconds
    python bench/plan_check.py --case smollm2 --explain    # what is alive at each peak, measured and predicted

What is measured: the peak of *allocated tensor bytes* as the CPU allocator reports every allocation and free
to ``torch.profiler`` (``profile_memory=True``): the events are summed in time order and the largest running
total inside each phase's ``record_function`` window is that phase's peak above the trace's start; what was
allocated before the trace (weights, AdamW's moments, the teacher) is added as the exact sum of those
tensors' bytes. `self_test` first checks the method on known allocations (exact to the byte).

What runs: the project's own functions with the GPU run's number formats, on random weights (memory does not
depend on values): a float32 student under ``torch.autocast("cpu", bfloat16)``, a bfloat16 teacher, AdamW
with ``foreach=True`` (a GPU's default), in the order of `dear.training.module.DistillModule`, each autocast region as
Lightning's training step and ``evaluate_now`` make them:

1. a one-row step, so gradients exist as they do between steps (until the next ``zero_grad``);
2. evaluation: `dear.distill.rollout.generate` (greedy, dynamic cache), then the held-out KL's `score_step`;
3. a selection page: one sampled token (autocast copies every matrix), then `score_step` with the method;
4. the training step: the rollout (`generate`, sampling, static cache), ``zero_grad``, then
   `dear.distill.step.distill_step` with chunked logits in micro-batches, gradient checkpointing on; then clipping
   and ``optimizer.step``; then the same step with checkpointing off, in a region of its own.

The step trains on rollouts built at full length (prompts of ``P`` tokens, responses of ``T``), the plan's
worst case; generation never stops early (the end-of-text id is one no model samples). Each measured peak is
printed next to `dear.plan.plan_phases`'s prediction for the same shapes and settings, and the same again
for the part above the weights, moments and teacher (gradients, autocast's copies and the phase's own work).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import AllocationTrace  # noqa: E402

MIB = 2**20
TOLERANCE = 0.20  # |predicted / measured - 1| allowed per phase


@dataclass(frozen=True)
class Case:
    """A model pair and a run's sizes (rows = prompts × n, P prompt tokens, T new tokens)."""

    name: str
    kind: str  # llama | qwen2 | qwen3
    student: dict
    teacher: dict
    prompts: int = 2
    n: int = 2
    prompt_tokens: int = 32
    new_tokens: int = 64
    micro_batch: int = 2
    eval_rows: int = 4
    eval_new_tokens: int = 64
    kl_rows: int = 4
    both_checkpointing: bool = True


QWEN_VOCAB = 151936
SMOLLM2 = dict(  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json (dear/model_shapes.json)
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)


def qwen2(hidden: int, layers: int, tied: bool, vocab: int = QWEN_VOCAB) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 32),
        num_key_value_heads=max(1, hidden // 128),
        vocab_size=vocab,
        tie_word_embeddings=tied,
        max_position_embeddings=4096,
    )


def qwen3(hidden: int, layers: int, tied: bool) -> dict:
    return dict(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=QWEN_VOCAB,
        tie_word_embeddings=tied,
        max_position_embeddings=4096,
    )


CASES = [
    Case("smollm2-135m", "llama", SMOLLM2, SMOLLM2, prompt_tokens=128, new_tokens=64, eval_new_tokens=32),
    Case("qwen2 h64 V=151936", "qwen2", qwen2(64, 2, True), qwen2(128, 2, False), prompt_tokens=64, new_tokens=192),
    Case("qwen2 h256 V=151936", "qwen2", qwen2(256, 4, True), qwen2(512, 2, False), prompt_tokens=64, new_tokens=256),
    Case("qwen3 h256 V=151936", "qwen3", qwen3(256, 4, True), qwen3(384, 2, True), prompt_tokens=64, new_tokens=256),
    # A small vocabulary, so that activations, prefill and the teacher's forward dominate as at a GPU's sizes.
    Case(
        "qwen2 h1024 V=2048",
        "qwen2",
        qwen2(1024, 4, True, vocab=2048),
        qwen2(1536, 2, False, vocab=2048),
        prompt_tokens=128,
        new_tokens=128,
        eval_new_tokens=64,
    ),
]
QUICK = [
    Case(
        "quick qwen2 h64 V=151936",
        "qwen2",
        qwen2(64, 2, True),
        qwen2(96, 2, False),
        prompt_tokens=16,
        new_tokens=48,
        eval_new_tokens=24,
        both_checkpointing=False,
    )
]


# ---------------------------------------------------------------------------------------------
# The allocator's accounting
# ---------------------------------------------------------------------------------------------


def self_test() -> None:
    """The method on known allocations: a 4 MB float32 tensor, another, their 4 MB product; the peak is
    12,000,000 bytes and, after the frees, 1,000,000 bytes of bfloat16 remain."""
    import torch

    with AllocationTrace() as trace:
        with trace.phase("known"):
            a = torch.empty(1000, 1000)
            b = torch.empty(1000, 1000)
            c = a @ b
            del a, b, c
            d = torch.empty(500, 1000, dtype=torch.bfloat16)
    if trace.peaks["known"] != 12_000_000 or trace.end != 1_000_000:
        raise SystemExit(f"plan_check: the profiler's accounting is off: {trace.peaks}, end {trace.end}")
    del d


# ---------------------------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------------------------


class IdTokenizer:
    """Just enough of a tokenizer for `dear.distill.rollout.generate`: a prompt is its token ids written out."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        import torch

        rows = [[int(x) for x in t.split()] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left-padded, as the project's tokenizers are
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, ids, skip_special_tokens=True):
        return [""] * len(ids)


def build(kind: str, shape: dict, seed: int):
    import torch
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[kind]
    torch.manual_seed(seed)
    config = config_cls(**shape, pad_token_id=0)
    return model_cls(config), config


def full_rollout(rows: int, prompt: int, new: int, vocab: int):
    """A `Rollout` of random ids at full length: ``prompt`` prompt tokens (the first row left-padded by 3),
    ``new`` response tokens, all real: the plan's worst case."""
    import torch

    from dear.distill.rollout import Rollout, position_ids

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab - 1, (rows, prompt + new), generator=g)
    attention = torch.ones(rows, prompt + new, dtype=torch.long)
    attention[0, :3] = 0  # padding, so attention takes a mask as in every real batch
    response = torch.zeros(rows, prompt + new, dtype=torch.bool)
    response[:, prompt:] = True
    return Rollout(ids, attention, position_ids(attention), response, prompt, [""] * rows)


def method_and_loss():
    from dear.config.schema import LossConfig, MethodConfig, load

    knobs = dict(decision_ratio=0.2, evidence_ratio=0.2, mode="topk", scope="sequence", agg="max", direction="both")
    knobs |= dict(window=None, boost="normalized", lam=1.0, confident_only=False, similarity="cosine")
    knobs |= dict(w_dec=1.0, w_evi=1.0, w_other=0.0, hidden_layer=-1, evidence_pool="remaining")
    common = dict(name="dear", divergence="reverse_kl", selector="dear", source="student")
    method = load(MethodConfig, {**common, **knobs}, "method.")
    return method, LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)


def measure(case: Case, checkpointing: bool = True, explain: bool = False) -> dict[str, int]:
    """Peak allocated bytes of each phase of ``case`` (weights, moments and teacher included)."""
    import torch

    from dear.config.schema import StepConfig
    from dear.distill.rollout import generate
    from dear.distill.step import distill_step, score_step
    from dear.models.load import set_gradient_checkpointing

    student, config = build(case.kind, case.student, 0)
    teacher, _ = build(case.kind, case.teacher, 1)
    teacher = teacher.to(torch.bfloat16).eval().requires_grad_(False)
    student.train()
    vocab = config.vocab_size
    method, loss = method_and_loss()
    step = StepConfig(micro_batch_size=case.micro_batch, logits="chunked", gradient_checkpointing=checkpointing)
    other = StepConfig(micro_batch_size=case.micro_batch, logits="chunked", gradient_checkpointing=not checkpointing)
    tok = IdTokenizer(pad_token_id=0, eos_token_id=vocab)  # an id no model samples: every response runs to full length
    prompt = lambda i: " ".join(str(2 + (7 * i + j) % (vocab - 3)) for j in range(case.prompt_tokens))  # noqa: E731
    prompts = [prompt(i) for i in range(case.prompts)]
    eval_prompts = [prompt(100 + i) for i in range(case.eval_rows)]
    rows = case.prompts * case.n
    batch = full_rollout(rows, case.prompt_tokens, case.new_tokens, vocab)
    kl_batch = full_rollout(case.kl_rows, case.prompt_tokens, case.eval_new_tokens, vocab)
    page = full_rollout(4, case.prompt_tokens, case.new_tokens, vocab)
    tiny = full_rollout(1, 4, 4, vocab)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    opt = torch.optim.AdamW(student.parameters(), lr=1e-6, foreach=True)

    def train_step(settings: StepConfig) -> None:
        set_gradient_checkpointing(student, settings.gradient_checkpointing)
        distill_step(student, teacher, batch, method, loss, vocab_size=vocab, step=settings)

    with autocast():  # AdamW's moments exist before the trace, as after the first step of a run
        distill_step(student, teacher, tiny, method, loss, vocab_size=vocab, step=step)
    opt.step()
    opt.zero_grad(set_to_none=True)
    resident = sum(p.nbytes for p in student.parameters()) + sum(p.nbytes for p in teacher.parameters())
    resident += sum(v.nbytes for state in opt.state.values() for v in state.values() if torch.is_tensor(v))
    with AllocationTrace(explain) as trace:
        with autocast():  # the previous step; training_step frees its gradients right after the optimizer step
            distill_step(student, teacher, tiny, method, loss, vocab_size=vocab, step=step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with autocast():  # evaluate_now: benchmark generation, then the held-out KL's scoring
            with trace.phase("evaluation"):
                generate(student, tok, eval_prompts, n=1, greedy=True, max_new_tokens=case.eval_new_tokens)
            with trace.phase("scoring"):
                score_step(student, teacher, kl_batch, None, loss, vocab_size=vocab, step=step)
        with autocast():  # a selection page (draw_selection): it samples, so autocast has copied every matrix
            generate(student, tok, prompts[:1], n=1, max_new_tokens=1)  # (the head too); then it scores
            with trace.phase("pages"):
                score_step(student, teacher, page, method, loss, vocab_size=vocab, step=step)
        with autocast():  # training_step: rollout, zero_grad, distill_step
            with trace.phase("rollout"):
                generate(
                    student, tok, prompts, n=case.n, temperature=1.0, max_new_tokens=case.new_tokens, cache="static"
                )
            opt.zero_grad()
            with trace.phase("step"):
                train_step(step)
        with trace.phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
        if case.both_checkpointing:
            with autocast():  # a rollout casts every matrix (one token does it), then the step
                generate(student, tok, prompts[:1], n=1, max_new_tokens=1)
                opt.zero_grad()
                with trace.phase("other step"):
                    train_step(other)
    if explain:
        for name in trace.peaks:
            print(
                f"  {case.name} / {name}: {(resident + trace.peaks[name]) / MIB:.1f} MiB at its peak "
                f"({trace.seconds[name]:.1f} s), of which"
            )
            print(f"    {resident / MIB:9.2f} MiB  weights, moments and teacher (before the trace)")
            print("\n".join(trace.explanation(name)))
    peaks = {name: resident + peak for name, peak in trace.peaks.items()}
    peaks["scoring"] = max(peaks["scoring"], peaks.pop("pages"))
    peaks["resident"] = resident
    return peaks


def predict(case: Case, checkpointing: bool = True, explain: bool = False) -> dict[str, int]:
    """`dear.plan`'s prediction for the same shapes and settings, by the measured phases' names, and
    ``resident``: its student weights, AdamW moments and teacher (what the trace starts with)."""
    from dear.plan import Precision, Shape, Workload, plan_phases

    student = Shape.from_config("student", {**case.student, "model_type": case.kind}, "bench/plan_check.py")
    teacher = Shape.from_config("teacher", {**case.teacher, "model_type": case.kind}, "bench/plan_check.py")
    w = Workload(
        batch_size=case.prompts,
        rollout_n=case.n,
        prompt_tokens=case.prompt_tokens,
        new_tokens=case.new_tokens,
        micro_batch=case.micro_batch,
        checkpointing=checkpointing,
        logits="chunked",
        hidden_states=True,
        selected_share=0.4,  # method_and_loss(): dear, 0.2 + 0.2
        sampler="student",
        rollout_cache="static",
        temperature=1.0,
        eval_batch=case.eval_rows,
        eval_samples=1,
        eval_new_tokens=case.eval_new_tokens,
        eval_greedy=True,
        kl_prompts=case.kl_rows,
        precision=Precision.of("bf16-mixed"),
    )
    phases = plan_phases(student, teacher, w, teacher_bytes=2)
    names = [p.key if p.counted else f"other {p.key}" for p in phases]
    peaks = {name: p.peak for name, p in zip(names, phases)}
    if explain:
        for name, p in zip(names, phases):
            print(f"  predicted {case.name} / {name}: {p.peak / MIB:.1f} MiB at {p.moment}, of which")
            print("\n".join(f"    {t.bytes / MIB:9.2f} MiB  {t.name}" for t in p.terms))
    peaks["resident"] = 4 * student.params + 8 * student.params + 2 * teacher.params
    return peaks


def check(cases: list[Case], explain: bool = False) -> list[dict]:
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        measured = measure(case, explain=explain)
        predicted = predict(case, explain=explain)
        for name in ("optimizer", "rollout", "step", "other step", "scoring", "evaluation"):
            if name not in measured:
                continue
            p, m = predicted[name], measured[name]
            rows.append(
                {
                    "case": case.name,
                    "phase": name,
                    "predicted_mib": p / MIB,
                    "measured_mib": m / MIB,
                    # above what is resident before the phase's work: the part the activation formulas predict
                    "predicted_above_mib": (p - predicted["resident"]) / MIB,
                    "measured_above_mib": (m - measured["resident"]) / MIB,
                }
            )
        print(f"  {case.name}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> list[str]:
    """Predicted and measured peaks, and the same above the weights, moments and teacher (``above``)."""
    lines = [
        f"{'case':<26} {'phase':<11} {'predicted':>10} {'measured':>10} {'ratio':>6}"
        f"   {'above: pred':>11} {'meas':>8} {'ratio':>6}   (MiB)"
    ]
    for r in rows:
        ratio = r["predicted_mib"] / r["measured_mib"]
        above = r["predicted_above_mib"] / r["measured_above_mib"] if r["measured_above_mib"] > 0 else float("nan")
        flag = "" if abs(ratio - 1) <= TOLERANCE else "  <-- the peak is off by more than 20%"
        if not flag and not abs(above - 1) <= TOLERANCE:
            flag = "  <-- the part above the state is off by more than 20%"
        lines.append(
            f"{r['case']:<26} {r['phase']:<11} {r['predicted_mib']:>10.1f} {r['measured_mib']:>10.1f} {ratio:>6.2f}"
            f"   {r['predicted_above_mib']:>11.1f} {r['measured_above_mib']:>8.1f} {above:>6.2f}{flag}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--explain", action="store_true", help="print what is alive at each phase's peak")
    parser.add_argument("--case", help="only the cases whose name contains this")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    self_test()
    cases = [c for c in (QUICK if args.quick else CASES) if not args.case or args.case in c.name]
    rows = check(cases, explain=args.explain)
    print("\n".join(table(rows)))
    off = [r for r in rows if abs(r["predicted_mib"] / r["measured_mib"] - 1) > TOLERANCE]
    print(f"{len(rows) - len(off)} of {len(rows)} phases within {TOLERANCE:.0%}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if off else 0


if __name__ == "__main__":
    sys.exit(main())
