"""Sampling from the student, and the token layout every later stage reads.

One interface: ``generate(model, tokenizer, prompts, ...) -> Rollout``. The Hugging Face
``generate`` backend is the only engine today; another engine (vLLM, SGLang) only has to
return the same ``Rollout``.

Layout: prompts are left-padded, responses right-padded, so a batch is ``[B, L]`` with every
response starting at column ``P`` (the padded prompt width). ``response_mask`` is True on the
sampled tokens up to and including the first end-of-text token: never on the prompt, never on
padding. Position ids count only real tokens, matching what ``generate`` used. With
``share_prefix`` the tokens every prompt starts with (a chat template's system turn, an
instruction) come first, computed once, and each prompt's padding sits between them and its own part.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, L] prompt (left-padded) + response (right-padded)
    attention_mask: torch.Tensor  # [B, L] 1 on real tokens (prompt and response)
    position_ids: torch.Tensor  # [B, L]
    response_mask: torch.Tensor  # [B, L] bool, True on response tokens
    prompt_width: int  # P: responses start at this column
    texts: list[str]  # decoded responses (special tokens dropped)

    @property
    def target_mask(self) -> torch.Tensor:
        """[B, L-1] bool: True where logits[:, t] predict a response token input_ids[:, t+1]."""
        return self.response_mask[:, 1:]

    def rows(self, sl: slice) -> Rollout:
        """The rollouts ``sl`` of the batch (a micro-batch), at the batch's full width."""
        return Rollout(
            self.input_ids[sl],
            self.attention_mask[sl],
            self.position_ids[sl],
            self.response_mask[sl],
            self.prompt_width,
            self.texts[sl],
        )

    def to(self, device) -> Rollout:
        return Rollout(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.response_mask.to(device),
            self.prompt_width,
            self.texts,
        )


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_prompts(tokenizer, prompts: list[str], device) -> dict:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    greedy: bool = False,
    cache: str = "dynamic",
    compile: bool = False,
    share_prefix: bool = False,
) -> Rollout:
    """Sample ``n`` responses per prompt (grouped: prompt i's samples are rows i*n … i*n+n-1).

    ``cache``: the KV cache Hugging Face generation keeps: ``dynamic`` (grows per token), ``static``
    (preallocated for the whole length, what ``torch.compile`` needs) or ``auto`` (static on a GPU).
    ``compile``: with a static cache on a GPU, generation compiles the model's forward once per shape.
    ``share_prefix``: the prompts' common first tokens are run once and their keys and values copied to every row
    (with the dynamic cache), so prefill costs only each prompt's own tokens; the answers are the same up to
    floating-point rounding (evaluation uses it: a chat template's system turn is half a short prompt).
    """
    device = next(model.parameters()).device
    if cache == "auto":
        cache = "static" if device.type == "cuda" else "dynamic"
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be one of auto, dynamic, static; got {cache!r}")
    fast = {"cache_implementation": "static", "disable_compile": not compile} if cache == "static" else {}
    rows = [p for p in prompts for _ in range(n)]
    shared = share_prefix and cache == "dynamic" and len(rows) > 1
    enc = None if shared else encode_prompts(tokenizer, rows, device)
    was_training = model.training
    model.eval()
    # no_grad as a block, not a decorator: mutmut (`make mutate`) leaves decorated functions alone
    try:
        with torch.no_grad():
            if shared:  # the rows are encoded once, around their common prefix
                enc, fast = _prefilled(model, tokenizer, rows, device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else temperature,
                top_p=None,
                top_k=None,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **fast,
            )  # [B, P + new]
    finally:
        model.train(was_training)
    width = enc["input_ids"].shape[1]
    response = out[:, width:]
    # Keep tokens up to and including the first end-of-text; generate pads the rest.
    is_eos = response == tokenizer.eos_token_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    keep = ~after_eos  # [B, new]
    response = response.masked_fill(~keep, tokenizer.pad_token_id)
    input_ids = torch.cat([enc["input_ids"], response], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], keep.long()], dim=1)
    response_mask = torch.cat([torch.zeros_like(enc["input_ids"], dtype=torch.bool), keep], dim=1)
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    return Rollout(input_ids, attention_mask, position_ids(attention_mask), response_mask, width, texts)


def _prefilled(model, tokenizer, rows: list[str], device) -> tuple[dict, dict]:
    """``rows`` encoded as ``[common prefix | padding | own tokens]`` and ``generate``'s arguments for a cache that
    holds the prefix's keys and values for every row (run once, copied). No common prefix: plain left padding."""
    from transformers import DynamicCache

    ids = [tokenizer(r, add_special_tokens=False).input_ids for r in rows]
    shortest = min(len(x) for x in ids)
    p = 0
    while p < shortest - 1 and all(x[p] == ids[0][p] for x in ids):  # each row keeps one token of its own
        p += 1
    if p == 0:
        return encode_prompts(tokenizer, rows, device), {}
    width = max(len(x) for x in ids) - p
    input_ids = torch.full((len(ids), p + width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    input_ids[:, :p] = torch.tensor(ids[0][:p])
    attention_mask[:, :p] = 1
    for i, x in enumerate(ids):
        input_ids[i, p + width - (len(x) - p) :] = torch.tensor(x[p:])
        attention_mask[i, p + width - (len(x) - p) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    kv = DynamicCache(config=model.config)
    # the cache's argument: `cache` in newer transformers, `past_key_values` (deprecated there) before
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    model(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p], use_cache=True, **{name: kv})
    kv.batch_repeat_interleave(len(ids))
    return {"input_ids": input_ids, "attention_mask": attention_mask}, {name: kv}


def concat(parts: list[Rollout], pad_token_id: int) -> Rollout:
    """Rollouts of separate `generate` calls as one batch, in the same layout: prompts left-padded to the widest
    prompt, responses right-padded to the longest response (padding is masked out and never a target)."""
    if len(parts) == 1:
        return parts[0]
    width = max(r.prompt_width for r in parts)
    length = max(r.input_ids.shape[1] - r.prompt_width for r in parts)

    def pad(x: torch.Tensor, r: Rollout, value) -> torch.Tensor:
        left, right = width - r.prompt_width, length - (x.shape[1] - r.prompt_width)
        return torch.nn.functional.pad(x, (left, right), value=value)

    input_ids = torch.cat([pad(r.input_ids, r, pad_token_id) for r in parts])
    attention_mask = torch.cat([pad(r.attention_mask, r, 0) for r in parts])
    response_mask = torch.cat([pad(r.response_mask, r, False) for r in parts])
    texts = [t for r in parts for t in r.texts]
    return Rollout(input_ids, attention_mask, position_ids(attention_mask), response_mask, width, texts)


def from_texts(tokenizer, prompts: list[str], responses: list[str], *, max_new_tokens: int, device) -> Rollout:
    """A rollout of given responses (teacher-forced), in `generate`'s layout: ``responses[k]`` follows
    ``prompts[k]`` (repeat a prompt for several responses). Each response is tokenized as written
    (an end-of-text token in the text becomes the end-of-text id) and cut to ``max_new_tokens``."""
    enc = encode_prompts(tokenizer, prompts, device)
    ids = [tokenizer(r, add_special_tokens=False).input_ids[:max_new_tokens] for r in responses]
    width = max(1, max(len(x) for x in ids))
    response = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    keep = torch.zeros(len(ids), width, dtype=torch.bool, device=device)
    for k, x in enumerate(ids):
        response[k, : len(x)] = torch.tensor(x, dtype=torch.long, device=device)
        keep[k, : len(x)] = True
    input_ids = torch.cat([enc["input_ids"], response], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], keep.long()], dim=1)
    response_mask = torch.cat([torch.zeros_like(enc["input_ids"], dtype=torch.bool), keep], dim=1)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)  # the token lists: no copy back from the device
    return Rollout(
        input_ids, attention_mask, position_ids(attention_mask), response_mask, enc["input_ids"].shape[1], texts
    )
