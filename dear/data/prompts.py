"""Training prompts: an endless, seeded stream of prompt strings for the LightningModule.

``data=toy`` draws fresh toy problems (never the held-out ones); any benchmark name
(``data=math500``, ``data=rg-gsm_symbolic``, ...) cycles through that benchmark's prompts in
an order reshuffled each pass by the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset

from dear.config.schema import DataConfig, ToyTaskConfig
from dear.data.toy import ToyTask, prompt_text


class PromptStream(IterableDataset):
    """Prompts drawn one at a time from ``random.Random(seed)``.

    ``start`` prompts are drawn and dropped before the first one is yielded: a run resumed from a
    checkpoint sets it to the number of prompts already trained on, so it continues the stream the
    uninterrupted run would have seen (the DataLoader fetches ahead, so what was drawn is not what
    was trained on; replaying the draws also restores a cycling draw's pass order).
    """

    def __init__(self, make_draw: Callable[[], Callable[[random.Random], str]], seed: int) -> None:
        self.make_draw, self.seed = make_draw, seed
        self.start = 0

    def __iter__(self) -> Iterator[str]:
        """Under data parallelism (``torch.distributed`` initialised) rank r of w takes draws r, r+w, r+2w, …
        of the one seeded stream, so the ranks train on different prompts and together on the stream;
        ``start`` counts this rank's prompts."""
        rank, world = _rank_and_world()
        rng, draw = random.Random(self.seed), self.make_draw()
        for _ in range(self.start * world):
            draw(rng)
        while True:
            for k in range(world):
                prompt = draw(rng)
                if k == rank:
                    yield prompt


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cycle_draw(prompts: list[str]) -> Callable[[], Callable[[random.Random], str]]:
    """A maker of draws that cycle through ``prompts``, reshuffled each pass."""

    def make_draw() -> Callable[[random.Random], str]:
        order: list[str] = []

        def draw(rng: random.Random) -> str:
            if not order:
                order.extend(rng.sample(prompts, len(prompts)))
            return order.pop()

        return draw

    return make_draw


def training_problems(data_cfg: DataConfig, seed: int) -> list:
    """The problems a benchmark-backed data preset draws its prompts from (not for data=toy)."""
    from dear.data.benchmarks import load_benchmark

    return load_benchmark(data_cfg.name, limit=data_cfg.limit, seed=seed, **(data_cfg.options or {}))


def prompt_loader(
    data_cfg: DataConfig,
    toy_task: ToyTaskConfig,
    tokenizer,
    *,
    chat_template: bool,
    template_kwargs: dict | None = None,
    batch_size: int,
    seed: int,
    problems: list | None = None,
) -> DataLoader:
    """The endless, seeded prompt stream; ``problems``: the data preset's problems if already loaded."""
    if data_cfg.name == "toy":
        task = ToyTask(toy_task)
        make_draw = lambda: lambda rng: prompt_text(task.sample_train(rng))  # noqa: E731
    else:
        from dear.data.benchmarks import format_prompt

        problems = problems if problems is not None else training_problems(data_cfg, seed)
        make_draw = cycle_draw(
            [
                format_prompt(p, tokenizer, chat_template=chat_template, template_kwargs=template_kwargs)
                for p in problems
            ]
        )
    return DataLoader(PromptStream(make_draw, seed), batch_size=batch_size, collate_fn=list)
