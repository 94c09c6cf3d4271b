"""Full on-policy training steps, ours (``method=opd``) against TRL's ``DistillationTrainer``, interleaved.

    python bench/bench_trl_step.py [--repeats 5] [--warmup 1] [--threads N] [--json PATH] [overrides ...]

The overrides compose the run as ``dear-train`` would (`bench/pairs.py` gives the real-vocabulary pairs');
the prompts are the first batch of its prompt stream, formatted as ``dear-train`` formats them. Three
participants, each in its own process (TRL's trainers share Accelerate's process-wide state, so two
differently configured ones cannot live in one process), each with its own copy of the student and the
teacher, all on the same prompts:

- ``ours``: what ``dear-train method=opd`` does in a step, in plain torch: sample ``rollout.n``
  responses per prompt (`dear.distill.sources.training_rollout`), `dear.distill.step.distill_step` (student and
  teacher forward, signals, loss, backward) with the run's ``step`` settings, the finiteness check, gradient
  clipping, AdamW step, schedule step. Lightning's own per-step overhead is not included.
- ``trl-defaults``: ``trl.DistillationTrainer`` with `DistillationConfig`'s defaults except what has to match:
  the batch (each prompt repeated ``rollout.n`` times, one row each, in order: the trainer samples one
  completion per row), ``max_completion_length``, the sampling temperature, ``beta`` (1: the reverse KL, as
  ``method=opd``), no shuffling, no evaluation, saving, reporting or progress bar; CPU. Its defaults include bf16
  mixed precision and gradient checkpointing (which it turns off while generating, so generation keeps its KV
  cache). Its loss is always its chunked divergence kernel (`trl.kernels.chunked_divergence`): on a device
  without Triton (the CPU) the torch fallback on ``[min(N, 4096), 32768]`` float32 tiles, every completion
  position projected, padding included.
- ``trl-tuned``: the same as a careful user would run it: fp32 (``bf16=False``), no gradient checkpointing.

The prompts are handed over as text already in the chat template (what ``dear-train`` samples from), so both
sides see the same prompt token ids. A step is timed from ``on_step_begin`` to ``on_step_end`` for TRL
(generation, teacher, loss, backward, clipping, optimizer and schedule) and from the rollout to the schedule
step for ours. The processes take turns, one step each, passing a baton (a semaphore ring): exactly one
participant computes at a time, TRL's between-step work (logging, the next batch) included, so load on the
machine hits all three alike. The first ``--warmup`` steps of each are not counted. Reported: median seconds
per step and TRL's over ours, with the mean response tokens per step on each side (the samples differ).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import compose, report  # noqa: E402
from pairs import load_pair, load_tokenizer, step_prompts  # noqa: E402

ROLES = ("ours", "trl-defaults", "trl-tuned")
MIN_REPEATS = 3  # timed rounds before --budget-s may stop them
BATON_TIMEOUT = 900.0  # seconds a participant waits for its turn before it gives up


class Baton:
    """Turn-taking between processes: participant i runs one step, then hands over to i+1."""

    def __init__(self, sems, index: int):
        self.sems, self.index = sems, index

    def take(self) -> None:
        if not self.sems[self.index].acquire(timeout=BATON_TIMEOUT):
            raise TimeoutError(f"no turn within {BATON_TIMEOUT:.0f} s (another participant stopped)")

    def pass_on(self) -> None:
        self.sems[(self.index + 1) % len(self.sems)].release()


def _run_ours(args, prompts: list[str], baton: Baton, barrier, steps, budget_s: float | None) -> dict:
    import torch

    from dear.distill.sources import training_rollout
    from dear.distill.step import distill_step
    from dear.models.schedule import optimizer
    from dear.training.guards import all_finite

    s, student, teacher, vocab = load_pair(args.overrides)
    model = student.model
    o = s.optim
    opt, sched = optimizer(model.parameters(), o, s.steps)  # what DistillModule.configure_optimizers makes
    times, tokens, generation = [], [], []
    barrier.wait(timeout=BATON_TIMEOUT)
    first_timed = None
    k = 0
    while k < steps.value:
        baton.take()
        k += 1
        if k == args.warmup + 1:
            first_timed = time.perf_counter()
        start = time.perf_counter()
        rollout = training_rollout(  # what DistillModule.training_step samples with
            s.method.source,
            model,
            teacher.model,
            student.tokenizer,
            prompts,
            s.rollout,
            task=s.toy_task,
            seed=s.seed,
            offset=0,
        )
        generation.append(time.perf_counter() - start)
        opt.zero_grad()
        loss, _ = distill_step(
            model, teacher.model, rollout, s.method, s.loss, vocab_size=vocab, generator=None, step=s.step
        )
        finite = bool(torch.isfinite(loss)) and all_finite(p.grad for p in model.parameters() if p.grad is not None)
        if finite:
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
        sched.step()
        times.append(time.perf_counter() - start)
        tokens.append(int(rollout.target_mask.sum()))
        # Ours moves first in every round, so when it stops after step k the others have k - 1 behind them.
        timed = k - args.warmup
        if budget_s is not None and first_timed is not None and timed >= MIN_REPEATS:
            if time.perf_counter() - first_timed > budget_s:
                steps.value = k
        baton.pass_on()
    return {
        "seconds": times,
        "generation_seconds": generation,
        "response_tokens": tokens,
        "rows": int(rollout.input_ids.shape[0]),
    }


BETA = {"reverse_kl": 1.0, "forward_kl": 0.0}  # DistillationConfig.beta of our divergences


def _run_trl(args, role: str, prompts: list[str], baton: Baton, barrier, steps) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer
    from trl.kernels import chunked_divergence
    from trl.kernels.chunked_logprob import _use_triton

    s, student, teacher, _ = load_pair(args.overrides)
    if s.loss.kind not in BETA:
        raise ValueError(f"loss.kind={s.loss.kind} has no DistillationTrainer beta here; use reverse_kl")
    rows = [p for p in prompts for _ in range(s.rollout.n)]  # our grouping: prompt i's samples side by side
    data = Dataset.from_list([{"prompt": p} for p in rows])
    times: list[float] = []
    tokens: list[int] = []
    generation: list[float] = []

    class Turns(TrainerCallback):
        """Take the baton before a step, time it, hand the baton over at the next step's start."""

        holding = False
        start = 0.0

        def on_step_begin(self, _args, state, control, **kwargs):
            if self.holding:
                baton.pass_on()
            baton.take()
            self.holding = True
            self.start = time.perf_counter()

        def on_step_end(self, _args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            if state.global_step >= steps.value:  # ours stopped the rounds early (--budget-s)
                control.should_training_stop = True

        def on_train_end(self, _args, state, control, **kwargs):
            if self.holding:
                baton.pass_on()
                self.holding = False

    class Counting(DistillationTrainer):
        def _generate_and_score_completions(self, inputs):
            start = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            generation.append(time.perf_counter() - start)
            tokens.append(int(out["completion_mask"].sum()))  # the sampled completion tokens
            return out

    must_match = dict(
        per_device_train_batch_size=len(rows),
        max_steps=steps.value,
        max_completion_length=s.rollout.max_new_tokens,
        temperature=s.rollout.temperature,
        beta=BETA[s.loss.kind],
        shuffle_dataset=False,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=s.seed,
    )
    tuned = dict(bf16=False, gradient_checkpointing=False) if role == "trl-tuned" else {}
    with tempfile.TemporaryDirectory() as out:
        config = DistillationConfig(output_dir=out, **must_match, **tuned)
        trainer = Counting(
            model=student.model,
            teacher_model=teacher.model,
            args=config,
            train_dataset=data,
            processing_class=student.tokenizer,
            callbacks=[Turns()],
        )
        torch.set_num_threads(args.threads)  # the Trainer may have set its own
        barrier.wait(timeout=BATON_TIMEOUT)
        trainer.train()
    device = next(student.model.parameters()).device
    settings = {
        "bf16": bool(config.bf16),
        "gradient_checkpointing": bool(config.gradient_checkpointing),
        "learning_rate": config.learning_rate,
        "optim": str(config.optim),
        "beta": config.beta,
        "generation_use_cache": trainer.generation_config.use_cache,  # None: the model's own (True)
        "loss_kernel": "triton" if _use_triton(device) else "torch tiles (no Triton on this device)",
        "loss_tile": [chunked_divergence.TOKEN_CHUNK_SIZE, chunked_divergence.VOCAB_CHUNK_SIZE],
    }
    return {
        "seconds": times,
        "generation_seconds": generation,
        "response_tokens": tokens,
        "rows": len(rows),
        "settings": settings,
    }


def participant(args, role: str, index: int, prompts, sems, barrier, steps, queue) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    baton = Baton(sems, index)
    try:
        if role == "ours":
            result = _run_ours(args, prompts, baton, barrier, steps, args.budget_s)
        else:
            result = _run_trl(args, role, prompts, baton, barrier, steps)
        queue.put({"role": role, **result})
    except BaseException as err:  # noqa: BLE001  (reported to the parent, which stops the others)
        barrier.abort()
        queue.put({"role": role, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"})
        traceback.print_exc()


def _prompts(overrides: list[str]) -> tuple[list[str], dict]:
    """The step's prompts (read with the student's tokenizer, as dear-train formats them) and its shape."""
    from dear.preflight.settings import train_config

    s = train_config(compose(["method=opd", *overrides]))
    tokenizer = load_tokenizer(s)
    shape = {
        "model": s.model.name,
        "prompts": s.batch_size,
        "samples_per_prompt": s.rollout.n,
        "max_new_tokens": s.rollout.max_new_tokens,
        "vocab": len(tokenizer),
        "ours_logits": s.step.logits,
        "ours_micro_batch_size": s.step.micro_batch_size,
    }
    return step_prompts(s, tokenizer), shape


def measure(args) -> dict:
    prompts, shape = _prompts(args.overrides)
    ctx = mp.get_context("spawn")
    sems = [ctx.Semaphore(1 if i == 0 else 0) for i in range(len(ROLES))]
    barrier = ctx.Barrier(len(ROLES))
    queue = ctx.Queue()
    steps = ctx.Value("i", args.warmup + args.repeats)  # lowered by ours when --budget-s runs out
    procs = [
        ctx.Process(target=participant, args=(args, role, i, prompts, sems, barrier, steps, queue), daemon=True)
        for i, role in enumerate(ROLES)
    ]
    for p in procs:
        p.start()
    results: dict[str, dict] = {}
    deadline = time.monotonic() + args.timeout
    error = None
    while len(results) < len(ROLES) and time.monotonic() < deadline:
        try:
            item = queue.get(timeout=5)
        except Exception:  # noqa: BLE001  (queue.Empty: check the processes)
            if any(p.exitcode not in (None, 0) for p in procs) and queue.empty():
                error = error or "a participant exited without a result"
                break
            continue
        results[item["role"]] = item
        if "error" in item:
            error = f"{item['role']}: {item['error']}"
            break
    for p in procs:  # only the processes started here
        p.join(timeout=10 if error is None else 1)
        if p.is_alive():
            p.terminate()
    if error is None and len(results) < len(ROLES):
        error = f"timed out after {args.timeout:.0f} s"
    out = {"shape": shape, "threads": args.threads, "warmup": args.warmup}
    if error is not None:
        out["error"] = error
        return out
    for role in ROLES:
        r = results[role]
        timed = r["seconds"][args.warmup :]
        toks = r["response_tokens"][args.warmup :]
        gen = r["generation_seconds"][args.warmup : args.warmup + len(timed)]
        out[role] = {
            "median_s": statistics.median(timed),
            "seconds": [round(x, 4) for x in timed],
            "generation_median_s": statistics.median(gen) if gen else None,
            "mean_response_tokens": statistics.fmean(toks) if toks else None,
            "rows": r["rows"],
            **({"settings": r["settings"]} if "settings" in r else {}),
        }
    out["rounds"] = min(len(out[role]["seconds"]) for role in ROLES)
    ours = out["ours"]["median_s"]
    out["speedup_vs_trl_defaults"] = out["trl-defaults"]["median_s"] / ours
    out["speedup_vs_trl_tuned"] = out["trl-tuned"]["median_s"] / ours
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per participant (default: 1 or 2)")
    parser.add_argument("--budget-s", type=float, default=None, help="stop the rounds (after 3) past this many s")
    parser.add_argument("--timeout", type=float, default=480.0, help="seconds for the whole comparison")
    parser.add_argument("--json", default=None, help="write the result here ('-': a JSON line on stdout)")
    args, args.overrides = parser.parse_known_args()
    if args.threads is None:
        from common import pick_threads

        args.threads = pick_threads(None)[0]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = measure(args)
    report(result, args.json)  # the summary below goes to stderr either way
    if "error" in result:
        print(f"unavailable: {result['error']}", file=sys.stderr)
        return
    print(
        f"{result['shape']['prompts']} prompts x {result['shape']['samples_per_prompt']} samples, up to "
        f"{result['shape']['max_new_tokens']} new tokens; {args.threads} threads; "
        f"{result['rounds']} interleaved rounds",
        file=sys.stderr,
    )
    for role in ROLES:
        r = result[role]
        print(
            f"{role:<14} {r['median_s']:8.3f} s/step  {r['mean_response_tokens']:7.1f} response tokens/step",
            file=sys.stderr,
        )
    print(
        f"speed-up vs TRL defaults x{result['speedup_vs_trl_defaults']:.2f}, "
        f"vs TRL tuned x{result['speedup_vs_trl_tuned']:.2f}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
