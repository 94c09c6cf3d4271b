"""The toy teacher and student: small Qwen2 models trained from scratch, shipped built with the package.

Every toy preset of conf/model/ ships built in ``dear/models/toy_weights/<key>/`` (a few MB, each file checked against
``MANIFEST.json`` by its sha256 when it is loaded), so a run uses the same toy pair on every machine and builds
nothing. A recipe that is not shipped (a changed preset, ``model.toy.seed=11``) is built on first use and cached under
``cache_dir``; ``python -m dear.models.toy`` (``make toy-weights``) rebuilds what the presets need and ships it.

Both are trained by cross-entropy on worked solutions of the toy task (``dear/data/toy.py``)
whose branches are drawn uniformly, so the teacher learns a calibrated distribution over the
valid next steps. The teacher's learning rate decays to zero (cosine); the student is smaller,
trained for fewer steps at a *constant* learning rate and stopped while it is still learning.
Measured on this task: the default distillation (120 steps, lr 1e-3) takes the constant-rate
student from 0.22 to 0.52-0.58 held-out accuracy, while a prototype student whose schedule had
decayed to zero lost accuracy under the same distillation (0.63 -> 0.54): a student left at the
bottom of a decayed schedule is first knocked out of its minimum by any new optimizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dear.config.schema import ToyModelSpec
from dear.data.toy import (
    ToyTask,
    ToyTaskConfig,
    build_tokenizer,
    noisy_solution,
    prompt_text,
)
from dear.errors import DearError
from dear.models.schedule import lr_factor

log = logging.getLogger(__name__)

TOY_FORMAT_VERSION = 3  # bump when the task, tokenizer or training recipe changes


def spec_key(name: str, spec: ToyModelSpec, task: ToyTaskConfig) -> str:
    blob = json.dumps({"v": TOY_FORMAT_VERSION, "spec": asdict(spec), "task": asdict(task)}, sort_keys=True)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def qwen2_config(spec: ToyModelSpec, tokenizer, max_positions: int = 256):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )


def sft_batch(task: ToyTask, tokenizer, rng: random.Random, batch_size: int, slip_rate: float = 0.0):
    """Right-padded (input_ids, attention_mask, labels); labels cover the solution but not its slips.

    The tokenizer is character-level, so character spans are token spans.
    """
    rows, masks = [], []
    for _ in range(batch_size):
        terms = task.sample_train(rng)
        p = tokenizer.encode(prompt_text(terms), add_special_tokens=False)
        text, slips = noisy_solution(terms, rng, slip_rate, max_chunk=task.cfg.max_chunk)
        s = tokenizer.encode(text, add_special_tokens=False)
        learn = [False] * len(p) + [True] * len(s)
        for a, b in slips:
            learn[len(p) + a : len(p) + b] = [False] * (b - a)
        rows.append(p + s)
        masks.append(learn)
    width = max(map(len, rows))
    ids = torch.full((batch_size, width), tokenizer.pad_token_id)
    labels = torch.full((batch_size, width), -100)
    attention = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (row, learn) in enumerate(zip(rows, masks)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, : len(row)] = torch.where(torch.tensor(learn), torch.tensor(row), -100)
        attention[i, : len(row)] = 1
    return ids, attention, labels


def train_toy_model(name: str, spec: ToyModelSpec, task: ToyTask, tokenizer, progress: bool = True):
    # Its own random stream: building a model on first use must not shift the run's sampling.
    with torch.random.fork_rng():
        return _train_toy_model(name, spec, task, tokenizer, progress)


def _train_toy_model(name: str, spec: ToyModelSpec, task: ToyTask, tokenizer, progress: bool):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(spec.seed)
    rng = random.Random(spec.seed)
    model = Qwen2ForCausalLM(qwen2_config(spec, tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_factor(max(1, spec.train_steps // 20), spec.train_steps, spec.schedule)
    )
    model.train()
    bar = tqdm(range(spec.train_steps), desc=f"building {name}", disable=not progress, leave=False)
    for _ in bar:
        ids, attn, labels = sft_batch(task, tokenizer, rng, spec.batch_size, spec.slip_rate)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


SHIPPED = Path(__file__).parent / "toy_weights"  # the built toy presets, one folder per key, and MANIFEST.json
SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "dear_toy.json",
)


def ensure_toy_model(
    name: str,
    spec: ToyModelSpec,
    task_cfg: ToyTaskConfig,
    cache_dir: str | Path,
    progress: bool = True,
    shipped: bool = True,
) -> Path:
    """The folder of the toy model ``name``: the shipped build of its recipe (checked), else the one in the cache,
    trained and cached first if needed. ``shipped=False`` passes over the shipped builds."""
    key = spec_key(name, spec, task_cfg)
    if shipped and (SHIPPED / key / "config.json").exists():
        return check_shipped(SHIPPED / key)
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / key
    if (target / "config.json").exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    except OSError as e:
        raise CacheNotWritable(
            f"cannot write the toy-model cache at {cache_dir} ({e.strerror}); set cache_dir=/a/writable/dir"
        ) from e
    try:
        log.info("Building toy model %s (%s) in %s", name, spec, target)
        tokenizer = build_tokenizer(tmp)
        model = train_toy_model(name, spec, ToyTask(task_cfg), tokenizer, progress=progress)
        model.save_pretrained(str(tmp))
        (tmp / "dear_toy.json").write_text(json.dumps({"name": name, "spec": asdict(spec), "task": asdict(task_cfg)}))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same model first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists() and tmp != target:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class CacheNotWritable(DearError):
    """The cache directory cannot be created or written."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_shipped(folder: Path) -> Path:
    """A shipped toy model's folder, once each of its files matches MANIFEST.json's sha256."""
    try:
        expected = json.loads((SHIPPED / "MANIFEST.json").read_text())[folder.name]
    except (OSError, ValueError, KeyError):
        raise DearError(
            f"the shipped toy model {folder.name} is not in {SHIPPED / 'MANIFEST.json'}; reinstall dear"
        ) from None
    for file, digest in expected.items():
        if not (folder / file).is_file() or _sha256(folder / file) != digest:
            raise DearError(
                f"the shipped toy model {folder.name} does not match its manifest ({file}); reinstall dear, or rebuild "
                f"the shipped toy models with `make toy-weights`"
            )
    return folder


def presets() -> list:
    """Every toy preset of conf/model/, as `ModelPreset`."""
    from omegaconf import OmegaConf

    from dear.config.presets import CONF_DIR
    from dear.config.schema import ModelPreset, load

    found = []
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # as Hydra reads it (3e-3 a number)
        if data.get("source") == "toy":
            found.append(load(ModelPreset, data, "model."))
    return found


def ship(cache_dir: str | Path) -> list[str]:
    """Put a build of every toy preset (from ``cache_dir``, trained there first if missing) in `SHIPPED`, write its
    MANIFEST.json and drop shipped builds no preset uses; returns the keys shipped."""
    task = ToyTaskConfig()
    manifest = {}
    for preset in presets():
        built = ensure_toy_model(preset.name, preset.toy, task, cache_dir, shipped=False)
        shutil.rmtree(SHIPPED / built.name, ignore_errors=True)
        (SHIPPED / built.name).mkdir(parents=True)
        for file in SHIPPED_FILES:
            shutil.copy2(built / file, SHIPPED / built.name / file)
        manifest[built.name] = {file: _sha256(SHIPPED / built.name / file) for file in SHIPPED_FILES}
    for stale in SHIPPED.iterdir():
        if stale.is_dir() and stale.name not in manifest:
            shutil.rmtree(stale)
    (SHIPPED / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return sorted(manifest)


if __name__ == "__main__":  # python -m dear.models.toy [cache_dir]: (re)build and ship every toy preset
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key in ship(sys.argv[1] if len(sys.argv) > 1 else "~/.cache/dear"):
        print(f"shipped {SHIPPED / key}")
