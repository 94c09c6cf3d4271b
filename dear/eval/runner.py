"""Generate on a benchmark, grade, summarise: the one evaluation path of dear-eval and training.

``Evaluator.evaluate(model)`` returns per-problem records and a summary: ``accuracy`` (pass@1,
the mean correctness over all samples, i.e. avg@k), ``pass@k`` (a problem counts when any of
its ``k`` samples is right) and, when a teacher is given, ``heldout_reverse_kl``: the mean
per-token ``KL(p_student‖p_teacher)`` over the student's own samples on held-out prompts, a
smooth measure of distillation progress that does not wait for answers to flip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dear.config.schema import StepConfig
from dear.data import kinds
from dear.data.benchmarks import Problem, format_prompt
from dear.distill.rollout import generate
from dear.distill.step import rollout_reverse_kl
from dear.distill.teacher_view import teacher_view
from dear.eval.grading import grade
from dear.files import write_json_atomic

log = logging.getLogger(__name__)

# One style for the console's bars (training steps, evaluated problems): what they count, then how far
BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar:24}| {elapsed}<{remaining}, {rate_fmt}{postfix}"


def progress_bar(desc: str, total: int, *, unit: str, initial: int = 0, enabled: bool = True, leave: bool = False):
    """A tqdm bar ``<desc> <done>/<total>`` on stderr, shown only when stderr is a terminal: a log file gets no bar
    (the run's log lines say how far it is)."""
    terminal = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        bar_format=BAR_FORMAT,
        disable=not (enabled and terminal),
        leave=leave,
        dynamic_ncols=True,
        mininterval=0,  # every update drawn: a few per evaluation or step, and the last one always shows
        file=sys.stderr,
    )


@dataclass
class EvalResult:
    summary: dict[str, float]
    records: list[dict] = field(default_factory=list)


@dataclass
class Evaluator:
    name: str
    problems: list[Problem]
    tokenizer: object
    chat_template: bool = False
    template_kwargs: dict | None = None  # the chat template's arguments (e.g. enable_thinking)
    max_new_tokens: int = 256
    batch_size: int = 64
    samples: int = 1  # k responses per problem
    temperature: float = 0.0  # 0: greedy (then samples must be 1)
    kl_prompts: int = 0  # held-out prompts for the on-policy reverse KL (needs a teacher)
    teacher_format: Callable[[Problem], str] | None = None  # the teacher's own prompt format (teacher_view.py)
    teacher_tokenizer: object | None = None
    vocab_size: int | None = None
    step: StepConfig | None = None  # how the held-out KL scores rollouts: the training step's micro-batches and logits
    progress: bool = False  # a bar over the problems generated for, on a terminal
    grade_workers: int = 4
    # Kinds whose record says so (math) are graded in worker processes, where math-verify's signal
    # timeouts bound pathological inputs (they are off on threads: dear/eval/math.py); code runs in
    # its own sandbox processes, so its graders stay on threads.
    grade_in_processes: bool = True

    def __post_init__(self) -> None:
        if self.temperature == 0 and self.samples != 1:
            raise ValueError("greedy evaluation (temperature=0) takes samples=1; set a temperature for k samples")
        self.prompts = [
            format_prompt(p, self.tokenizer, chat_template=self.chat_template, template_kwargs=self.template_kwargs)
            for p in self.problems
        ]

    @torch.no_grad()
    def evaluate(self, model, teacher=None, reuse: Path | None = None) -> EvalResult:
        """Generate, grade and summarise. ``reuse``: a folder of greedy answers kept by `answers_key`; answers a
        model with these very weights already gave here are read back instead of generated again."""
        texts, correct = self._answers(model, reuse)
        k = self.samples
        records, n_right, n_any = [], 0, 0
        for i, problem in enumerate(self.problems):
            ok = correct[i * k : (i + 1) * k]
            n_right += sum(ok)
            n_any += any(ok)
            records.append(
                {
                    "id": problem.id,
                    "prompt": self.prompts[i],
                    "reference": problem.reference,
                    "responses": texts[i * k : (i + 1) * k],
                    "correct": ok,
                }
            )
        n = max(1, len(self.problems))
        summary = {"accuracy": n_right / (n * k), f"pass@{k}": n_any / n}
        if teacher is not None and self.kl_prompts > 0:
            summary["heldout_reverse_kl"] = self.heldout_reverse_kl(model, teacher)
        return EvalResult(summary, records)

    def _answers(self, model, reuse: Path | None) -> tuple[list[str], list[bool]]:
        """Every response (``samples`` per problem, grouped) and whether each is right."""
        kept = None
        if reuse is not None and self.temperature == 0:  # greedy: the same weights give the same answers
            kept = Path(reuse) / f"{self.name}-{self.answers_key(model)}.json"
            if kept.is_file():
                saved = json.loads(kept.read_text())
                log.info("%s: the answers of these weights are kept in %s; not generated again", self.name, kept)
                return saved["responses"], saved["correct"]
        texts = self._generate(model)
        k = self.samples
        correct = self.grade_all([(p, t) for i, p in enumerate(self.problems) for t in texts[i * k : (i + 1) * k]])
        if kept is not None:
            write_json_atomic(kept, {"benchmark": self.name, "responses": texts, "correct": correct})
        return texts, correct

    def answers_key(self, model) -> str:
        """A digest of everything greedy answers depend on: the model's weights, the prompts and references, how
        they are generated (lengths, batch, dtype, device, threads) and the versions of the code that does it."""
        import transformers

        h = hashlib.sha256()
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        settings = {
            "prompts": self.prompts,
            "references": [p.reference for p in self.problems],
            "max_new_tokens": self.max_new_tokens,
            "batch_size": self.batch_size,
            "samples": self.samples,
            "dtype": str(next(model.parameters()).dtype),
            "device": next(model.parameters()).device.type,
            "threads": torch.get_num_threads(),
            "versions": [torch.__version__, transformers.__version__],
            "code": _code_digest(),  # dear's prompting, generation and grading as they are now
        }
        h.update(json.dumps(settings, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def grade_all(self, pairs: list[tuple[Problem, str]]) -> list[bool]:
        """Grade (problem, response) pairs in parallel: math in worker processes, the rest on threads."""
        in_processes = [
            i for i, (p, _) in enumerate(pairs) if self.grade_in_processes and kinds.get(p.kind).grade_in_processes
        ]
        correct = [False] * len(pairs)
        if in_processes:
            try:
                # spawn, not fork: this process holds torch's thread pools, which a fork would copy half-made
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(min(self.grade_workers, len(in_processes)), mp_context=ctx) as pool:
                    chosen = [pairs[i] for i in in_processes]
                    results = pool.map(grade, [p for p, _ in chosen], [t for _, t in chosen], chunksize=16)
                    for i, ok in zip(in_processes, results):
                        correct[i] = bool(ok)
            except (BrokenProcessPool, OSError) as err:
                # e.g. a script without `if __name__ == "__main__":`, which spawned workers re-run
                log.warning(
                    "grading %d answers on threads instead of worker processes (%s); "
                    "math-verify's timeouts are off there",
                    len(in_processes),
                    type(err).__name__,
                )
                in_processes = []
        on_threads = sorted(set(range(len(pairs))) - set(in_processes))
        with ThreadPoolExecutor(self.grade_workers) as pool:  # code graders run subprocesses
            for i, ok in zip(on_threads, pool.map(lambda i: bool(grade(*pairs[i])), on_threads)):
                correct[i] = ok
        return correct

    def _generate(self, model) -> list[str]:
        out: list[str] = []
        greedy = self.temperature == 0
        with progress_bar(f"eval {self.name}", len(self.prompts), unit="problem", enabled=self.progress) as bar:
            for start in range(0, len(self.prompts), self.batch_size):
                prompts = self.prompts[start : start + self.batch_size]
                r = generate(
                    model,
                    self.tokenizer,
                    prompts,
                    n=self.samples,
                    temperature=self.temperature or 1.0,
                    max_new_tokens=self.max_new_tokens,
                    greedy=greedy,
                    share_prefix=True,
                )
                out.extend(r.texts)
                bar.update(len(prompts))
        return out

    def heldout_reverse_kl(self, model, teacher, temperature: float = 1.0) -> float:
        """Mean per-token KL(student‖teacher) over the student's own samples (temperature 1)."""
        total, count = 0.0, 0
        prompts = self.prompts[: self.kl_prompts]
        for start in range(0, len(prompts), self.batch_size):
            r = generate(
                model,
                self.tokenizer,
                prompts[start : start + self.batch_size],
                n=1,
                temperature=temperature,
                max_new_tokens=self.max_new_tokens,
                share_prefix=True,
            )
            seen = None
            if self.teacher_format is not None:  # the teacher reads each prompt in its own format
                batch = self.problems[start : start + len(r.texts)]
                seen = teacher_view(r, [self.teacher_format(p) for p in batch], self.teacher_tokenizer)
            kl_sum, tokens = rollout_reverse_kl(
                model, teacher, r, self.vocab_size, teacher_rollout=seen, step=self.step
            )
            total += kl_sum
            count += tokens
        return total / max(1, count)


def _code_digest() -> str:
    """A digest of dear's own code that turns a model into graded answers: prompts and benchmarks (dear/data),
    generation (dear/distill/rollout.py) and grading (dear/eval)."""
    root = Path(__file__).parents[1]
    h = hashlib.sha256()
    for path in sorted([*root.glob("data/*.py"), root / "distill" / "rollout.py", *root.glob("eval/**/*.py")]):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()
