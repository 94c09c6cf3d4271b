"""The embedded toy task: add a row of digits by merging adjacent pairs.

A problem is a row of single digits, ``3+8+5+1``. A worked solution rewrites the row one
step at a time, each step replacing one *adjacent* pair by its sum, until one number is left:

    3+8+5+1?3+13+1;16+1;17#17

Every step is a **branch point** (any adjacent pair may go first: a row of ``n`` numbers has
``n-1`` valid next steps, and all orders reach the same answer) followed by an
**intermediate result** that must be computed right (the pair's sum) and copied on. Rows of
3 to 5 digits mix easy and hard problems, so accuracy over a held-out set moves smoothly
rather than in one jump. The final answer follows ``#`` and is graded by exact match.

Training solutions pick each step's pair uniformly at random, so a teacher trained on them by
cross-entropy keeps a calibrated distribution over the valid branches instead of a one-hot.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

QUESTION_END = "?"
STEP_SEP = ";"
ANSWER_SEP = "#"
PAD, EOS = "<pad>", "</s>"
CHARS = list("0123456789+") + [QUESTION_END, STEP_SEP, ANSWER_SEP]


@dataclass(frozen=True)
class ToyTaskConfig:
    min_terms: int = 3
    max_terms: int = 5
    max_digit: int = 9
    held_out: int = 500
    seed: int = 1234  # fixes the held-out split, independent of the run's seed


def prompt_text(terms: list[int]) -> str:
    return "+".join(map(str, terms)) + QUESTION_END


def answer(terms: list[int]) -> str:
    return str(sum(terms))


def worked_solution(terms: list[int], rng: random.Random) -> str:
    """One valid worked solution (with the end-of-text token), branches drawn uniformly."""
    return noisy_solution(terms, rng, slip_rate=0.0)[0]


def noisy_solution(terms: list[int], rng: random.Random, slip_rate: float) -> tuple[str, list[tuple[int, int]]]:
    """A worked solution in which each merge is miscomputed with probability ``slip_rate``.

    Returns the text and the character spans of the slipped sums. Training on such solutions
    with the loss masked on the slips teaches a model to carry on correctly from a row that
    already holds a mistake, which is where a student's own samples take it: a teacher that
    never saw a mistake extrapolates arbitrarily there, and on-policy distillation would copy that.
    """
    row, steps, slips, pos = list(terms), [], [], 0
    while len(row) > 1:
        i = rng.randrange(len(row) - 1)  # the branch: which adjacent pair to merge now
        value = row[i] + row[i + 1]
        slipped = rng.random() < slip_rate
        if slipped:
            value = max(0, value + rng.choice([-2, -1, 1, 2]))
        row[i : i + 2] = [value]
        text = "+".join(map(str, row))
        if slipped:
            start = pos + len("+".join(map(str, row[:i]))) + (1 if i else 0)
            slips.append((start, start + len(str(value))))
        steps.append(text)
        pos += len(text) + len(STEP_SEP)
    return STEP_SEP.join(steps) + ANSWER_SEP + str(row[0]) + EOS, slips


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

    def __init__(self, cfg: ToyTaskConfig = ToyTaskConfig()) -> None:
        if not 2 <= cfg.min_terms <= cfg.max_terms:
            raise ValueError(f"toy task needs 2 <= min_terms <= max_terms, got {cfg.min_terms}, {cfg.max_terms}")
        self.cfg = cfg
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
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=PAD,
                                  padding_side="left")
    tok.save_pretrained(str(out_dir))
    return tok

