"""The vocabulary of settings: numeric ranges and the choices a setting may take, shared by the schema
(`dear.config.schema`), the selector registry (`dear.config.methods`) and the tensor code that computes each
choice (`dear.objective`). No torch, no config classes: a name here is a type, nothing more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``low <= x <= high`` (``low < x`` when ``open_low``); finite unless said."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a number"
        if self.high < math.inf and self.low > -math.inf:
            return f"{kind} in [{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.low > -math.inf:
            op = ">" if self.open_low else ">="
            return f"{kind} {op} {_fmt(self.low)}" if integer else f"a finite number {op} {_fmt(self.low)}"
        return kind

    def holds(self, x: float) -> bool:
        above = x > self.low if self.open_low else x >= self.low
        return above and x <= self.high and math.isfinite(x)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


Ratio = Annotated[float, Range(0.0, 1.0)]
NonNegative = Annotated[float, Range(0.0)]
Positive = Annotated[float, Range(0.0, open_low=True)]
Count = Annotated[int, Range(0)]  # 0, 1, 2, ...
PositiveInt = Annotated[int, Range(1)]

Source = Literal["student", "teacher", "reference"]  # who writes the responses trained on (dear/distill/sources.py)
Divergence = Literal["reverse_kl", "forward_kl", "jsd", "logratio"]  # the signal D_t
LossKind = Literal["reverse_kl", "forward_kl", "jsd", "pg", "ce"]  # the per-token loss ℓ_t (ce: sft)
Normalization = Literal["selected", "all", "sequence"]
Boost = Literal["normalized", "multiplicative", "additive", "none"]  # the evidence score's form
EvidencePool = Literal["remaining", "all"]  # the evidence count: a share of the non-decisions, or of all
DecisionMode = Literal["topk", "threshold"]  # decisions: the top share by entropy, or entropy above h_min
Scope = Literal["sequence", "batch"]  # where a top-k count is taken and ranked
Aggregation = Literal["max", "mean"]  # relevance: the best or the mean similarity to the decisions
Direction = Literal["both", "before", "after"]  # which decisions a token may look to
Similarity = Literal["cosine", "none"]  # none: every allowed decision counts as equally similar
Schedule = Literal["cosine", "constant"]
