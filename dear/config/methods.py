"""The selector registry: which response tokens a method trains on, as named selections.

A method (``conf/method/<name>.yaml``) names a *selector* and sets its *knobs*. Each selector is one
`Selector` record registered here by name: the knobs it reads with their types (the vocabulary of
`dear.config.types`), whether it reads the student's hidden states, whether it must see a whole step's
rollouts at once, and its function. The schema (`MethodConfig`), the training step and dear-plan read these
records; no other module names a selector. This module imports no torch: a selector's function is named
as ``"module:attribute"`` and imported on first use (a test may register the function object itself).

Adding a selector is one function, one registration and one YAML::

    def select_window(entropy, divergence, hidden, mask, *, generator, decision_ratio, width) -> Selection: ...

    register(Selector("window", select_window, knobs={"decision_ratio": Ratio, "width": Count}))

    # conf/method/window.yaml
    name: window
    selector: window
    divergence: reverse_kl
    decision_ratio: 0.2
    width: 2
    source: student

The function receives the step's per-token signals (`dear.objective.selection.select_tokens` documents the
shapes and the masking it has already done) and every knob by name, and returns a
`dear.objective.Selection`. A selector that reads hidden states declares the knob ``hidden_layer`` (which
student layer): the step reads it to gather those states, and the function is not passed it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dear.config.types import (
    Aggregation,
    Boost,
    Count,
    DecisionMode,
    Direction,
    EvidencePool,
    NonNegative,
    Ratio,
    Scope,
    Similarity,
)
from dear.registry import add, lookup, resolve

HIDDEN_LAYER = "hidden_layer"  # the knob of a selector that reads hidden states: which student layer

Knobs = Mapping[str, Any]


def batch_scope(method: str, knobs: Knobs) -> str | None:
    """Why a selection must see every rollout of a step at once: its top-k is taken over the batch."""
    return "method.scope=batch" if knobs.get("scope") == "batch" else None


def keeps_everything(knobs: Knobs) -> float:
    return 1.0


@dataclass(frozen=True)
class Selector:
    """One selection, declared: its name, function, knobs and needs.

    name: what ``method.selector`` says. function: ``"module:attribute"`` (imported on first use) or the
    function. knobs: each knob's type, as the method file spells it. optional: knobs a method file may
    leave out. nullable: knobs whose null is a setting (e.g. ``window: null``, anywhere). needs_hidden:
    reads the student's hidden states at knob ``hidden_layer``. ranks_across(method name, knobs): why the
    selection must see a whole step's rollouts at once (which micro-batches would split), or None.
    rules(knobs): checks across knobs, each a one-line message or None. loss_share(knobs): the most of a
    step's response positions its weights make the loss compute (dear-plan's estimate).
    """

    name: str
    function: str | Callable[..., Any]
    knobs: Mapping[str, Any] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()
    needs_hidden: bool = False
    ranks_across: Callable[[str, Knobs], str | None] = batch_scope
    rules: tuple[Callable[[Knobs], str | None], ...] = ()
    loss_share: Callable[[Knobs], float] = keeps_everything

    def __post_init__(self) -> None:
        if self.needs_hidden and HIDDEN_LAYER not in self.knobs:
            raise ValueError(f"selector {self.name} needs hidden states, so it must declare the knob {HIDDEN_LAYER}")
        unknown = (self.optional | self.nullable) - set(self.knobs)
        if unknown:
            raise ValueError(f"selector {self.name}: {', '.join(sorted(unknown))} are not among its knobs")

    def select(self) -> Callable[..., Any]:
        """The selection function (imported now if it was named by its module)."""
        return resolve(self.function)

    def hidden_layer(self, knobs: Knobs) -> int | None:
        """Which student layer's hidden states the step gathers for this selection (None: none)."""
        return knobs[HIDDEN_LAYER] if self.needs_hidden else None

    def function_knobs(self, knobs: Knobs) -> dict[str, Any]:
        """The knobs the function is passed: all but ``hidden_layer``, which the step reads."""
        return {k: v for k, v in knobs.items() if k != HIDDEN_LAYER}


SELECTORS: dict[str, Selector] = {}


def register(selector: Selector) -> Selector:
    """Add a selector under its name (a name is registered once)."""
    return add(SELECTORS, selector.name, selector, "selector")


def get(name: str) -> Selector:
    return lookup(SELECTORS, name, "selector", "dear.config.methods")


def names() -> tuple[str, ...]:
    return tuple(SELECTORS)


# ---------------------------------------------------------------------------------------------
# The selectors dear ships (README.md "The objective"); functions in dear/objective/selection.py
# ---------------------------------------------------------------------------------------------


def threshold_needs_h_min(knobs: Knobs) -> str | None:
    if knobs.get("mode") == "threshold" and (knobs.get("h_min") is None or knobs["h_min"] != knobs["h_min"]):
        return f"h_min must be a number (the entropy threshold, nats) when mode='threshold', got {knobs.get('h_min')!r}"
    return None


def decisions_and_evidence(knobs: Knobs) -> float:
    return min(1.0, knobs["decision_ratio"] + knobs["evidence_ratio"])


DECISIONS = {"decision_ratio": Ratio, "mode": DecisionMode, "h_min": float, "scope": Scope}
FUNCTIONS = "dear.objective.selection"

register(Selector("all", f"{FUNCTIONS}:selector_all"))
register(
    Selector(
        "entropy",
        f"{FUNCTIONS}:selector_entropy",
        knobs=DECISIONS,
        optional=frozenset({"h_min"}),
        rules=(threshold_needs_h_min,),
        loss_share=lambda k: k["decision_ratio"] if k["mode"] == "topk" else 1.0,
    )
)
register(
    Selector(
        "dear",
        f"{FUNCTIONS}:selector_dear",
        knobs={
            **DECISIONS,
            "evidence_ratio": Ratio,
            "agg": Aggregation,
            "direction": Direction,
            "window": Count,
            "boost": Boost,
            "lam": NonNegative,
            "confident_only": bool,
            "similarity": Similarity,
            "w_dec": NonNegative,
            "w_evi": NonNegative,
            "w_other": NonNegative,
            HIDDEN_LAYER: int,
            "evidence_pool": EvidencePool,
        },
        optional=frozenset({"h_min", "window"}),
        nullable=frozenset({"window"}),
        needs_hidden=True,
        rules=(threshold_needs_h_min,),
        loss_share=lambda k: 1.0 if k["w_other"] or k["mode"] != "topk" else decisions_and_evidence(k),
    )
)
register(
    Selector(
        "tip",
        f"{FUNCTIONS}:selector_tip",
        knobs={"tip_ratio": Ratio, "scope": Scope},
        ranks_across=lambda method, knobs: f"method={method} (min-max over the batch)",
        loss_share=lambda k: k["tip_ratio"],
    )
)
register(
    Selector(
        "random",
        f"{FUNCTIONS}:selector_random",
        knobs={"decision_ratio": Ratio, "evidence_ratio": Ratio, "scope": Scope, "evidence_pool": EvidencePool},
        loss_share=decisions_and_evidence,
    )
)
