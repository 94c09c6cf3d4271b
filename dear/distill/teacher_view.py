"""A teacher that shares the student's token ids but not its chat template.

On-policy distillation compares the two models token id by token id, so both must read the same
response ids. The prompt is another matter: a teacher trained with its own chat template (Qwen3-4B
teaching Qwen2.5-1.5B) should see the question the way it was trained to. So the teacher scores the
student's response tokens after the prompt re-encoded with the teacher's own template:

    student: [pad pad <student prompt>] [response ids ........] [pad]
    teacher: [pad <teacher prompt .....>] [response ids ........] [pad]

Both rows hold the same ``R`` response columns; only where they start differs (``P`` for the
student, ``P'`` for the teacher). `teacher_view` builds the teacher's rows; `align_to_student`
moves the teacher's logits back to the student's columns, so everything after it is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dear.distill.rollout import Rollout, encode_prompts, position_ids


def templates_differ(student: Any, teacher: Any) -> bool:
    """Whether the two `LoadedModel`s format a prompt differently (chat template on/off, or its text)."""

    def fmt(m: Any) -> tuple[bool, str | None, dict]:
        if not m.chat_template:
            return False, None, {}
        return True, getattr(m.tokenizer, "chat_template", None), dict(getattr(m, "template_kwargs", None) or {})

    return fmt(student) != fmt(teacher)


def teacher_view(rollout: Rollout, teacher_prompts: list[str], tokenizer) -> Rollout:
    """The rollout's response ids after ``teacher_prompts`` (one per row) encoded by the teacher's tokenizer.

    Prompts are left-padded, so every response starts at the teacher's prompt width ``P'``; the
    response columns, their mask and their padding are the student's own.
    """
    if len(teacher_prompts) != rollout.input_ids.shape[0]:
        raise ValueError(
            f"need one teacher prompt per rollout row, got {len(teacher_prompts)} for {rollout.input_ids.shape[0]}"
        )
    enc = encode_prompts(tokenizer, teacher_prompts, rollout.input_ids.device)  # [B, P']
    p = rollout.prompt_width
    response = rollout.input_ids[:, p:]  # [B, R]
    keep = rollout.attention_mask[:, p:]
    input_ids = torch.cat([enc["input_ids"], response], dim=1)  # [B, P' + R]
    attention_mask = torch.cat([enc["attention_mask"], keep], dim=1)
    response_mask = torch.cat(
        [torch.zeros_like(enc["input_ids"], dtype=torch.bool), rollout.response_mask[:, p:]], dim=1
    )
    return Rollout(
        input_ids, attention_mask, position_ids(attention_mask), response_mask, enc["input_ids"].shape[1], rollout.texts
    )


def align_to_student(
    teacher_logits: Tensor, student: Rollout, teacher: Rollout, start: int = 0, teacher_start: int = 0
) -> Tensor:
    """Teacher logits ``[B, P'+R-1, V]`` (column t predicts token t+1) moved to the student's columns.

    Returns ``[B, P+R-1, V]`` whose response-predicting columns ``P-1 … P+R-2`` hold the teacher's
    columns ``P'-1 … P'+R-2``; the prompt columns (never in the target mask) hold zeros. With ``start`` and
    ``teacher_start`` both sides hold only their columns from there on (``[B, P'+R-1-teacher_start, V]`` in,
    ``[B, P+R-1-start, V]`` out); when both start at their responses no zeros are made.
    """
    p, q = student.prompt_width - start, teacher.prompt_width - teacher_start
    r = student.input_ids.shape[1] - student.prompt_width
    if p == 1 and q == 1:
        return teacher_logits[:, :r]
    out = teacher_logits.new_zeros(teacher_logits.shape[0], p + r - 1, teacher_logits.shape[-1])
    out[:, p - 1 :] = teacher_logits[:, q - 1 : q - 1 + r]
    return out


def prompt_formatter(format_prompt: Callable[..., str], model: Any) -> Callable[[Any], str]:
    """``problem -> the model's prompt text``: ``format_prompt`` bound to a `LoadedModel`'s tokenizer and template."""
    return lambda problem: format_prompt(
        problem, model.tokenizer, chat_template=model.chat_template, template_kwargs=model.template_kwargs
    )


@dataclass
class TeacherPrompts:
    """How the teacher reads the training prompts: each student prompt text -> the teacher's text."""

    by_student_prompt: dict[str, str]
    tokenizer: Any  # the teacher's

    @classmethod
    def for_problems(cls, problems: list, student: Any, teacher: Any) -> TeacherPrompts:
        """The map for ``problems`` formatted by the student's and the teacher's `LoadedModel`."""
        from dear.data.benchmarks import format_prompt

        student_text, teacher_text = prompt_formatter(format_prompt, student), prompt_formatter(format_prompt, teacher)
        return cls({student_text(p): teacher_text(p) for p in problems}, teacher.tokenizer)

    def view(self, rollout: Rollout, prompts: list[str], n: int) -> Rollout:
        """`teacher_view` of a rollout sampled ``n`` times per prompt (rows grouped by prompt)."""
        try:
            texts = [self.by_student_prompt[p] for p in prompts for _ in range(n)]
        except KeyError as e:
            raise ValueError(f"no teacher format for the training prompt {str(e)[:60]}...") from None
        return teacher_view(rollout, texts, self.tokenizer)
