"""Who writes the responses a step trains on (``method.source``), as one `Rollout` either way.

- ``student``: the student samples (on-policy distillation: opd, dear, ...);
- ``teacher``: the teacher samples from the same prompts (offline KD, the paper's baseline);
- ``reference``: reference solutions, teacher-forced (sft; the toy's worked solutions, branches
  drawn uniformly as the teacher was trained on them).

Whatever the source, `dear.distill.step.distill_step` then runs student and teacher over the same tokens,
so every method shares one step and one evaluation.
"""

from __future__ import annotations

import random

from dear.config.schema import RolloutConfig, ToyTaskConfig
from dear.data.toy import parse_terms, worked_solution
from dear.distill.rollout import Rollout, concat, from_texts, generate


def reference_solutions(prompts: list[str], n: int, task: ToyTaskConfig, *, seed: int, offset: int) -> list[str]:
    """``n`` worked solutions per toy prompt, grouped as `generate` groups samples. Prompt ``offset + j``
    of the run's stream draws its branches from its own seeded generator, so a resumed run draws the same."""
    out = []
    for j, prompt in enumerate(prompts):
        rng = random.Random(f"reference:{seed}:{offset + j}")
        out.extend(worked_solution(parse_terms(prompt), rng, max_chunk=task.max_chunk) for _ in range(n))
    return out


def training_rollout(
    source: str,
    student,
    teacher,
    tokenizer,
    prompts: list[str],
    r: RolloutConfig,
    *,
    task: ToyTaskConfig,
    seed: int,
    offset: int,
) -> Rollout:
    """The responses a step trains on, ``n`` per prompt, from ``source`` (student | teacher | reference).

    ``offset``: how many prompts of the stream came before these (seeds the reference draws)."""
    if source == "reference":
        device = next(student.parameters()).device
        texts = reference_solutions(prompts, r.n, task, seed=seed, offset=offset)
        return from_texts(
            tokenizer, [p for p in prompts for _ in range(r.n)], texts, max_new_tokens=r.max_new_tokens, device=device
        )
    model = teacher if source == "teacher" else student
    per = r.prompts_per_call or len(prompts)  # a bounded KV cache: a few prompts' samples at a time
    parts = [
        generate(
            model,
            tokenizer,
            prompts[start : start + per],
            n=r.n,
            temperature=r.temperature,
            max_new_tokens=r.max_new_tokens,
            cache=r.cache,
            compile=r.compile,
        )
        for start in range(0, len(prompts), per)
    ]
    return concat(parts, tokenizer.pad_token_id)
