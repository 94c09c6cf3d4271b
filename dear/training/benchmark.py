"""The held-out benchmark as dear-train and dear-eval both set it up: its problems, and the evaluator that grades
a model on them (the same evaluation path, so a run's curve and a later dear-eval agree)."""

from __future__ import annotations

import logging
from dataclasses import asdict

from dear.config.schema import BenchmarkConfig, ConfigError, EvalConfig, TrainConfig
from dear.eval.runner import Evaluator

log = logging.getLogger(__name__)


def eval_problems(settings: TrainConfig | EvalConfig, benchmark: BenchmarkConfig | None = None) -> list:
    """The problems of ``benchmark`` (default ``settings.benchmark``; loaded before any model, so a missing set
    fails at once). A toy benchmark reads the run's toy task."""
    from dear.data.benchmarks import BENCHMARKS, load_benchmark, subset_note

    b = benchmark or settings.benchmark
    options = dict(b.options or {})
    if b.name in BENCHMARKS and BENCHMARKS[b.name].kind == "toy":
        options["task"] = asdict(settings.toy_task)
    seed = settings.seed if b.seed is None else b.seed
    if b.unseen_by is None:
        problems = load_benchmark(b.name, limit=b.limit, seed=seed, **options)
    else:
        problems = unseen_problems(b, seed, options)
    if subset_note(b.name):  # metrics.json and the tables say it too
        log.warning("benchmark %s is an offline subset: %s", b.name, subset_note(b.name))
    return problems


def unseen_problems(b: BenchmarkConfig, seed: int, options: dict) -> list:
    """The first ``b.limit`` distinct problems of ``b`` that model ``b.unseen_by`` was not fine-tuned on (by their
    question's text). Loads grow until enough are found: a load's first problems do not depend on its limit."""
    from dear.config.schema import tune_recipe
    from dear.data.benchmarks import load_benchmark
    from dear.models.tuned import training_problems

    seen = {p.question for p in training_problems(tune_recipe(b.unseen_by, "benchmark.unseen_by"))}
    size, found = max(1, b.limit or 0) * 2, -1
    while True:
        loaded = load_benchmark(b.name, limit=None if b.limit is None else size, seed=seed, **options)
        kept, questions = [], set(seen)
        for p in loaded:
            if p.question not in questions:
                questions.add(p.question)
                kept.append(p)
        if b.limit is None or len(kept) >= b.limit:
            return kept[: b.limit]
        if len(loaded) < size or len(kept) == found:  # the set is spent, or twice the draws found nothing new
            raise ConfigError(
                f"benchmark {b.name} has only {len(kept)} distinct problems that {b.unseen_by} was not tuned on "
                f"among the first {len(loaded)}; lower benchmark.limit={b.limit}"
            )
        size, found = size * 2, len(kept)


def build_evaluator(
    settings: TrainConfig | EvalConfig,
    loaded,
    problems: list,
    *,
    vocab_size: int | None = None,
    kl_prompts: int = 0,
    progress: bool = False,
    teacher=None,
    benchmark: BenchmarkConfig | None = None,
) -> Evaluator:
    """The evaluator of ``problems`` (`eval_problems`) of ``benchmark`` (default ``settings.benchmark``) for the
    `LoadedModel` ``loaded`` and its teacher, if any."""
    b = benchmark or settings.benchmark
    return Evaluator(
        name=b.name,
        problems=problems,
        tokenizer=loaded.tokenizer,
        chat_template=loaded.chat_template,
        template_kwargs=loaded.template_kwargs,
        max_new_tokens=b.max_new_tokens,
        batch_size=settings.eval.batch_size,
        samples=b.samples,
        temperature=b.temperature,
        kl_prompts=kl_prompts,
        vocab_size=vocab_size,
        step=settings.step if isinstance(settings, TrainConfig) else None,
        progress=progress,
        **_teacher_format(loaded, teacher),
    )


def _teacher_format(student, teacher) -> dict:
    """Evaluator arguments for a teacher that reads prompts in its own format (dear/distill/teacher_view.py)."""
    from dear.data.benchmarks import format_prompt
    from dear.distill.teacher_view import prompt_formatter, templates_differ

    if teacher is None or not templates_differ(student, teacher):
        return {}
    return {
        "teacher_format": prompt_formatter(format_prompt, teacher),
        "teacher_tokenizer": teacher.tokenizer,
    }
