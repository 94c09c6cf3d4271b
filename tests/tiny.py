"""A tiny randomly initialised Qwen2 on the toy tokenizer: for tests of layout, not of learning."""

from __future__ import annotations

import torch


def tiny_qwen2(tokenizer, seed: int = 0, hidden_size: int = 16):
    """Two layers, untrained; a wide init keeps the logits far apart, so greedy choices are stable."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        initializer_range=0.5,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()


class PaddedHead(torch.nn.Module):
    """``model`` with ``extra`` padding rows in its head (as Qwen2.5's are padded past the tokenizer), the
    logit ``value`` there: a step must read only the shared vocabulary."""

    def __init__(self, model, extra: int, value: float):
        super().__init__()
        self.inner, self.extra, self.value = model, extra, value

    def forward(self, **kw):
        out = self.inner(**kw)
        pad = torch.full((*out.logits.shape[:-1], self.extra), self.value, dtype=out.logits.dtype)
        out.logits = torch.cat([out.logits, pad], dim=-1)
        return out
