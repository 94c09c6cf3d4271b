"""The DEAR objective: token signals, token selection and the weighted distillation loss.

README.md "The objective" written as tensor functions, in rooms that read top to bottom like it:

1. `dear.objective.signals`, no grad (`token_entropy`, `token_divergence`, `token_signals`): entropy
   ``H_t`` of ``p = softmax(z_s/τ)``, divergence ``D_t`` to ``q = softmax(z_t/τ)``, argmaxes.
2. `dear.objective.selection` (`select_decisions`, `evidence_similarity`, `score_evidence`,
   `evidence_pool`, `select_evidence`, `select_tip`, `select_random`; the registered selectors and
   `select_tokens`): decisions by entropy, evidence by cosine similarity to the decisions boosted by
   divergence, per-token weights ``w_t``; diagnostics (`selection_stats`).
3. `dear.objective.loss` (`distill_loss`): ``L = Σ w_t ℓ_t / Σ w_t`` with the exact gradient of ``ℓ_t``.

Below them, `dear.objective.chunked` is the memory engineering: the full-vocabulary work in chunks
(`HeadLogits` stands in for logits that never exist whole). The functions take tensors and plain values
(strings, numbers), never config classes.

Conventions shared by every function:

- Logits are ``[B, T, V]`` (``[..., V]`` where stated); ``mask [B, T]`` is True on response
  tokens only. Masked positions are never selected, never enter a statistic, and hold 0 in
  every per-position output.
- Vocabulary: student and teacher heads may be padded to different sizes (Qwen2.5: 151936
  vs 152064 rows). Both are sliced to ``vocab_size`` if given, else to the smaller of the two
  last dims, before anything is computed; padding rows are never compared.
- Memory: full-vocabulary work runs over chunks of positions (`dear.objective.chunked`), so no
  ``[B, T, V]`` temporary is made; ``chunk_size`` overrides the chunk's number of positions. Only
  positions with a nonzero weight enter the loss at all. Wherever logits are taken, `HeadLogits`
  (final hidden states and the LM head's weight) may stand in.
- ``-inf`` logits are allowed: ``0 · log 0 = 0`` everywhere. A divergence that is infinite
  mathematically (e.g. ``KL(p‖q)`` with ``q_v = 0 < p_v``) is returned as ``inf``.
- Ties are broken deterministically: among equal scores the lower position index wins
  (with ``scope="batch"``, the lower flattened index ``i·T + t``, i.e. earlier sequences first).
- Counts are ``⌈ρ·T_i⌉`` with ``T_i = mask[i].sum()`` (the evidence count: ``⌈ρ_e·|pool_i|⌉``, the
  pool being the non-decisions by default, see `evidence_pool`), computed with a 1e-9 slack so
  that a product that is an integer in decimal (0.14·50 = 7.000000000000001) is not bumped up.
"""

from dear.objective.chunked import HeadLogits
from dear.objective.loss import LOSS_KINDS, NORMALIZATIONS, distill_loss
from dear.objective.selection import (
    Selection,
    evidence_pool,
    evidence_similarity,
    score_evidence,
    select_decisions,
    select_evidence,
    select_random,
    select_tip,
    select_tokens,
    selection_stats,
)
from dear.objective.signals import DIVERGENCES, Signals, token_divergence, token_entropy, token_signals

__all__ = [
    "HeadLogits",
    "Signals",
    "Selection",
    "DIVERGENCES",
    "LOSS_KINDS",
    "NORMALIZATIONS",
    "token_entropy",
    "token_divergence",
    "token_signals",
    "select_decisions",
    "evidence_similarity",
    "score_evidence",
    "select_evidence",
    "evidence_pool",
    "select_tip",
    "select_random",
    "select_tokens",
    "distill_loss",
    "selection_stats",
]
