"""Training prompts: an endless, seeded stream of prompt strings for the LightningModule.

``data=toy`` draws fresh toy problems (never the held-out ones); any benchmark name
(``data=math500``, ``data=rg-gsm_symbolic``, ...) cycles through that benchmark's prompts in
an order reshuffled each pass by the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset

from dear.data.toy import ToyTask, prompt_text
from dear.schema import DataConfig, ToyTaskConfig


class PromptStream(IterableDataset):
    def __init__(self, draw: Callable[[random.Random], str], seed: int) -> None:
        self.draw, self.seed = draw, seed

    def __iter__(self) -> Iterator[str]:
        rng = random.Random(self.seed)
        while True:
            yield self.draw(rng)


def cycle_draw(prompts: list[str]) -> Callable[[random.Random], str]:
    order: list[str] = []

    def draw(rng: random.Random) -> str:
        if not order:
            order.extend(rng.sample(prompts, len(prompts)))
        return order.pop()

    return draw


def prompt_loader(data_cfg: DataConfig, toy_task: ToyTaskConfig, tokenizer, *, chat_template: bool, batch_size: int,
                  seed: int) -> DataLoader:
    if data_cfg.name == "toy":
        task = ToyTask(toy_task)
        draw = lambda rng: prompt_text(task.sample_train(rng))  # noqa: E731
    else:
        from dear.data.benchmarks import format_prompt, load_benchmark

        problems = load_benchmark(data_cfg.name, limit=data_cfg.limit, seed=seed, **(data_cfg.options or {}))
        draw = cycle_draw([format_prompt(p, tokenizer, chat_template=chat_template) for p in problems])
    return DataLoader(PromptStream(draw, seed), batch_size=batch_size, collate_fn=list)
