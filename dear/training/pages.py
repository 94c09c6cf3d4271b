"""The selection pages: ``selection/step_<k>.html``, what the method selects on a few fixed held-out prompts,
drawn at the start and the end of training (`dear.distill.selection_pages`) and logged to W&B."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from dear.distill.selection_pages import selection_page
from dear.files import write_text_atomic

# Held-out prompts drawn in the selection pictures (the first of the benchmark's, fixed for the run).
PICTURE_PROMPTS = 4


class SelectionPages:
    """Draws the pages of a run and keeps their paths (metrics.json's ``selection_pages``)."""

    def __init__(self, heldout_prompts: list[str]) -> None:
        self.prompts = heldout_prompts[:PICTURE_PROMPTS]
        self.written: list[str] = []

    def draw(self, module) -> None:
        """Write the page of ``module``'s current step. Skipped when the teacher reads prompts in its own format
        (no bridge for held-out prompts)."""
        if not self.prompts or module.teacher_prompts is not None:
            return
        cfg, step = module.cfg, int(module.global_step)
        with module.step_precision():
            page = selection_page(
                module.student,
                module.teacher,
                module.tokenizer,
                self.prompts,
                cfg.method,
                cfg.loss,
                vocab_size=module.vocab_size,
                max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature,
                seed=cfg.seed,
                title=f"{cfg.method.name}: what it selects at step {step}",
                step=cfg.step,
            )
        path = Path(module.trainer.default_root_dir) / "selection" / f"step_{step}.html"
        write_text_atomic(path, page)
        self.written.append(str(path))
        if isinstance(module.logger, WandbLogger):
            import wandb

            module.logger.experiment.log({"selection": wandb.Html(page)}, step=step)
