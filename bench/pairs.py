"""The student-teacher pairs the step figures run on, each as the Hydra overrides ``dear-train`` would compose.

- ``toy``: the embedded toy pair (vocabulary 17), with `make bench`'s toy overrides.
- ``smollm2``: ``experiment=smollm2-chain_sum`` (4 prompts x 2 samples, 32 new tokens, rg-chain_sum prompts in
  the chat template) with SmolLM2-135M-Instruct (vocabulary 49,152) as student and as teacher: the experiment's
  own teacher is a fine-tune of the same model, built on first use; its shapes, and so its time, are the same.
- ``qwen151k``: the same experiment with random-weight Qwen2 models at Qwen2.5's vocabulary (151,936; hidden
  256, 2 layers, tied head, as Qwen2.5-1.5B ties it) as student and teacher. They read SmolLM2's tokenizer
  grown to 151,936 ids (added tokens past 49,152), so the prompts are smollm2's token ids and every id the
  student samples is a token: dear compares the whole vocabulary, as it does for Qwen2.5.

SmolLM2 is read from dear's cache (where any run with ``model=smollm2-135m`` converts it); both real-vocabulary
pairs are unavailable without it (qwen151k borrows its tokenizer).
"""

from __future__ import annotations

from pathlib import Path

PAIRS = ("smollm2", "qwen151k")
QWEN_VOCAB = 151936
SMOLLM2 = ["experiment=smollm2-chain_sum", "teacher=smollm2-135m"]
QUICK = ["batch_size=1", "rollout.n=1", "rollout.max_new_tokens=4"]  # tiny shapes for the smoke test
QWEN_SHAPE = {"hidden": 256, "layers": 2}
QWEN_SHAPE_QUICK = {"hidden": 16, "layers": 1}


def default_cache_dir() -> Path:
    """dear's cache folder as ``dear-train`` resolves it (``$DEAR_CACHE`` or ``~/.cache/dear``)."""
    from common import compose

    return Path(compose([]).cache_dir).expanduser()


def smollm2_missing(cache_dir: Path) -> str | None:
    """Why SmolLM2-135M cannot be read from ``cache_dir``, or None when it can."""
    from dear.models.packaged import SMOLLM2_DIRNAME, is_materialized

    if is_materialized(cache_dir / SMOLLM2_DIRNAME):
        return None
    return (
        f"SmolLM2-135M is not in the cache {cache_dir} (any run with model=smollm2-135m converts it there, e.g. "
        f"python -c \"from dear.models.packaged import materialize_smollm2; materialize_smollm2('{cache_dir}')\")"
    )


def build_qwen151k(folder: Path, cache_dir: Path, hidden: int, layers: int) -> dict[str, str]:
    """Save a random-weight Qwen2 student (seed 0) and teacher (seed 1) at V = 151,936 under ``folder``, each
    with SmolLM2's tokenizer grown to V ids; returns ``{"student": path, "teacher": path}``."""
    import torch
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from dear.models.packaged import SMOLLM2_DIRNAME

    tokenizer = AutoTokenizer.from_pretrained(cache_dir / SMOLLM2_DIRNAME)
    tokenizer.add_tokens([f"<|q{i}|>" for i in range(len(tokenizer), QWEN_VOCAB)], special_tokens=True)
    config = qwen2_config(
        QWEN_VOCAB,
        hidden,
        layers,
        head_dim=64,
        context=8192,  # the smollm2-135m preset's context_length, which the run checks
        tie=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    paths = {}
    for seed, role in enumerate(("student", "teacher")):
        torch.manual_seed(seed)
        path = folder / role
        Qwen2ForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[role] = str(path)
    return paths


def qwen2_config(vocab: int, hidden: int, layers: int, *, head_dim: int, context: int, tie: bool, **ids):
    """A small Qwen2 configuration (random weights are drawn from it): ``hidden // head_dim`` heads, no grouping."""
    from transformers import Qwen2Config

    heads = max(1, hidden // head_dim)
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        tie_word_embeddings=tie,
        **ids,
    )


def pair_overrides(pair: str, cache_dir: Path, quick: bool, qwen: dict[str, str] | None = None) -> list[str]:
    """The overrides that compose ``pair`` (``qwen``: `build_qwen151k`'s paths, for qwen151k)."""
    base = [*SMOLLM2, f"cache_dir={cache_dir}"] + (QUICK if quick else [])
    if pair == "smollm2":
        return base
    if pair == "qwen151k":
        if qwen is None:
            raise ValueError("qwen151k needs the folders build_qwen151k made")
        # chunked logits, as dear's real-vocabulary setups ship them (conf/setup/real-math.yaml)
        return base + [f"model.path={qwen['student']}", f"teacher.path={qwen['teacher']}", "step.logits=chunked"]
    raise ValueError(f"unknown pair {pair!r}; one of {', '.join(PAIRS)}")


def load_pair(overrides: list[str]):
    """``(settings, student, teacher, shared vocabulary)`` as ``dear-train`` loads them (method=opd unless the
    overrides name another)."""
    from common import compose

    from dear.models.load import check_compatible, load_model
    from dear.preflight.settings import train_config

    s = train_config(compose(["method=opd", *overrides]))
    student = load_model(s.model, s.cache_dir, s.toy_task, trainable=True, progress=False)
    teacher = load_model(s.teacher, s.cache_dir, s.toy_task, trainable=False, group="teacher", progress=False)
    return s, student, teacher, check_compatible(student, teacher)


def load_tokenizer(s):
    """The student's tokenizer alone (its weights unread), from wherever ``load_model`` would read them."""
    from transformers import AutoTokenizer

    from dear.models.load import resolve_weights

    where, kwargs = resolve_weights(s.model, s.cache_dir, s.toy_task, progress=False)
    return AutoTokenizer.from_pretrained(where, **kwargs)


def step_prompts(s, tokenizer, batch_size: int | None = None) -> list[str]:
    """The first batch of the run's prompt stream, formatted as ``dear-train`` formats them (chat template and all)."""
    from dear.data.prompts import prompt_loader

    loader = prompt_loader(
        s.data,
        s.toy_task,
        tokenizer,
        chat_template=s.model.chat_template,
        template_kwargs=s.model.chat_template_kwargs,
        batch_size=batch_size or s.batch_size,
        seed=s.seed,
    )
    return list(next(iter(loader)))
