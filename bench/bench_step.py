"""Time one training step per method on the embedded default, side by side on the same batch.

    python bench/bench_step.py [--repeats 20] [--methods opd dear ...] [overrides ...]

One rollout batch is sampled once (same prompts, same samples for every method); then each
method's step (student forward with hidden states, teacher forward, signals, selection, loss,
backward) is timed in interleaved rounds, so drift on a shared machine hits all methods alike.
The rollout itself (identical for every method) is timed separately. Reported: median ms per
step and the ratio to the first method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["opd", "dear", "entropy", "tip", "random"])
    args, overrides = parser.parse_known_args()

    from dear.config import train_config
    from dear.data.prompts import prompt_loader
    from dear.models import check_compatible, load_model
    from dear.rollout import generate
    from dear.step import distill_step

    from conftest import compose  # the same composition dear-train uses

    s = train_config(compose(overrides))
    torch.manual_seed(0)
    torch.set_num_threads(s.trainer.threads or 2)
    student = load_model(s.model, s.cache_dir, s.toy_task, trainable=True)
    teacher = load_model(s.teacher, s.cache_dir, s.toy_task, trainable=False, group="teacher")
    vocab = check_compatible(student, teacher)
    prompts = next(
        iter(prompt_loader(s.data, s.toy_task, student.tokenizer, chat_template=False, batch_size=s.batch_size, seed=0))
    )
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
    methods = {m: train_config(compose(overrides + [f"method={m}"])) for m in args.methods}

    def step(method: str) -> float:
        """The training step dear-train runs (dear.step.distill_step), forward and backward, timed."""
        settings = methods[method]
        start = time.perf_counter()
        loss, _ = distill_step(
            student.model,
            teacher.model,
            rollout,
            settings.method,
            settings.loss,
            vocab_size=vocab,
            generator=torch.Generator().manual_seed(0),
            step=settings.step,
        )  # runs backward too
        student.model.zero_grad(set_to_none=True)
        return 1000 * (time.perf_counter() - start)

    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for m in args.methods:  # warm-up
        step(m)
    for _ in range(args.repeats):
        for m in args.methods:
            times[m].append(step(m))
    base = statistics.median(times[args.methods[0]])
    print(
        f"batch: {rollout.input_ids.shape[0]} sequences x {rollout.input_ids.shape[1]} tokens, "
        f"{int(mask.sum())} response tokens; rollout (shared) {rollout_ms:.0f} ms; torch threads "
        f"{torch.get_num_threads()}; {args.repeats} interleaved rounds"
    )
    print(f"{'method':<16}{'median ms/step':>16}{'ratio':>8}   (step without the rollout)")
    for m in args.methods:
        med = statistics.median(times[m])
        print(f"{m:<16}{med:>16.1f}{med / base:>8.2f}")


if __name__ == "__main__":
    main()
