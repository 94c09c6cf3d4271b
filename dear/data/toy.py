"""The embedded toy task: add a row of digits as a chain of running totals.

A problem is a row of single digits, ``3+8+5+1+6``. A worked solution walks the row from left
to right; each step takes the next **one or two** digits, adds them to the running total and
writes the new total, until the row is used up:

    3+8+5+1+6?3+8=11;+5=16;+1+6=23#23

Every step is a **branch point** (take one digit or two: both are valid, and all choices reach
the same answer) followed by an **intermediate result** that must be computed right (the new
total). Rows of 3 to 6 digits mix easy and hard problems, so accuracy over a held-out set
moves smoothly rather than in one jump. The final answer follows ``#`` and is graded by exact
match.

Training solutions choose each step's size uniformly, so a teacher trained on them by
cross-entropy keeps a calibrated distribution over the branches instead of a one-hot. A step
only ever reads the last total and the next digits of the prompt, so a student's slip does
not scramble the rest of its solution: the teacher can go on scoring every later step.
(An earlier version of this task rewrote the whole row at every step; there a slip left rows
that no longer matched the prompt, and distilling on them lowered the student's accuracy.)
"""

from __future__ import annotations

import random
from pathlib import Path

from dear.config.schema import ToyTaskConfig

__all__ = ["ToyTask", "ToyTaskConfig", "answer", "build_tokenizer", "grade", "noisy_solution", "prompt_text"]

QUESTION_END = "?"
STEP_SEP = ";"
ANSWER_SEP = "#"
EQUALS = "="
PAD, EOS = "<pad>", "</s>"
CHARS = list("0123456789+") + [QUESTION_END, STEP_SEP, ANSWER_SEP, EQUALS]


def prompt_text(terms: list[int]) -> str:
    return "+".join(map(str, terms)) + QUESTION_END


def answer(terms: list[int]) -> str:
    return str(sum(terms))


def worked_solution(terms: list[int], rng: random.Random, max_chunk: int = 2) -> str:
    """One valid worked solution (with the end-of-text token), branches drawn uniformly."""
    return noisy_solution(terms, rng, slip_rate=0.0, max_chunk=max_chunk)[0]


def noisy_solution(
    terms: list[int], rng: random.Random, slip_rate: float, max_chunk: int = 2
) -> tuple[str, list[tuple[int, int]]]:
    """A worked solution in which each running total is miscomputed with probability ``slip_rate``.

    Returns the text and the character spans of the slipped totals; later steps add on to the
    total as written. Training on such solutions with the loss masked on the slips teaches a
    model to carry on from a total that already holds a mistake, which is where a student's own
    samples take it: a teacher that never saw a mistake extrapolates arbitrarily there, and
    on-policy distillation would copy that.
    """
    i, total, steps, slips, pos = 0, 0, [], [], 0
    while i < len(terms):
        size = rng.randint(1, min(max_chunk, len(terms) - i))  # the branch: how many digits now
        chunk = terms[i : i + size]
        i += size
        total += sum(chunk)
        head = ("+" if steps else "") + "+".join(map(str, chunk)) + EQUALS
        if rng.random() < slip_rate:
            total = max(0, total + rng.choice([-2, -1, 1, 2]))
            slips.append((pos + len(head), pos + len(head) + len(str(total))))
        step = head + str(total)
        steps.append(step)
        pos += len(step) + len(STEP_SEP)
    return STEP_SEP.join(steps) + ANSWER_SEP + str(total) + EOS, slips


def final_answer(response: str) -> str | None:
    """The text after the last answer marker, up to the end-of-text token; None if absent."""
    response = response.split(EOS)[0]
    if ANSWER_SEP not in response:
        return None
    return response.rsplit(ANSWER_SEP, 1)[1].strip()


def grade(response: str, reference: str) -> bool:
    return final_answer(response) == reference.strip()


def parse_terms(prompt: str) -> list[int]:
    return [int(x) for x in prompt.rstrip(QUESTION_END).split("+")]


class ToyTask:
    """Procedural problems with a held-out split fixed by ``cfg.seed``."""

    def __init__(self, cfg: ToyTaskConfig | None = None) -> None:
        cfg = cfg or ToyTaskConfig()
        self.cfg = cfg  # its ranges were checked when it was built (dear/config/schema.py)
        rng = random.Random(cfg.seed)
        held: dict[str, list[int]] = {}
        while len(held) < cfg.held_out:
            terms = self._draw(rng)
            held.setdefault(prompt_text(terms), terms)
        self.held_out: list[list[int]] = list(held.values())
        self._held_keys = set(held)

    def _draw(self, rng: random.Random) -> list[int]:
        n = rng.randint(self.cfg.min_terms, self.cfg.max_terms)
        return [rng.randint(1, self.cfg.max_digit) for _ in range(n)]

    def sample_train(self, rng: random.Random) -> list[int]:
        """A training problem, never one of the held-out ones."""
        while True:
            terms = self._draw(rng)
            if prompt_text(terms) not in self._held_keys:
                return terms


def build_tokenizer(out_dir: str | Path):
    """A character-level Hugging Face tokenizer for the toy task, saved to ``out_dir``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=PAD, padding_side="left"
    )
    tok.save_pretrained(str(out_dir))
    return tok
