"""The selector registry (dear/config/methods.py): adding a selector is one function, one registration and
one method file, here all three in this test file alone, and everything else (schema, step, training, the
micro-batch refusal, dear-plan) follows from the registration."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from dear.config import methods
from dear.config.schema import ConfigError, LossConfig, MethodConfig, load
from dear.config.types import Count, Ratio
from dear.objective import Selection, select_decisions, select_tokens

from conftest import TINY_MODELS, TINY_RUN, compose


def select_window(entropy, divergence, hidden, mask, *, generator=None, decision_ratio, width) -> Selection:
    """Decisions (the top entropy share) and every response token within ``width`` positions of one, weight 1."""
    decision = select_decisions(entropy, mask, ratio=decision_ratio)
    spread = torch.nn.functional.max_pool1d(decision.float()[:, None], 2 * width + 1, stride=1, padding=width)
    chosen = (spread[:, 0] > 0) & mask
    return Selection(weights=chosen.float(), decision=decision, evidence=chosen & ~decision)


WINDOW = methods.Selector("window", select_window, knobs={"decision_ratio": Ratio, "width": Count})
# What conf/method/window.yaml would hold.
WINDOW_FILE = {
    "name": "window",
    "selector": "window",
    "divergence": "reverse_kl",
    "decision_ratio": 0.2,
    "width": 1,
    "source": "student",
}


@pytest.fixture
def window(monkeypatch):
    monkeypatch.setitem(methods.SELECTORS, "window", WINDOW)  # registered for this test only
    return WINDOW


def with_method(overrides: list[str], method: dict):
    """The config dear-train composes with ``overrides`` and a method file holding ``method``."""
    cfg = compose(overrides)
    cfg.method = OmegaConf.create(method)
    return cfg


def test_a_selector_registered_here_trains_end_to_end(tmp_path, toy_cache, window):
    from dear.train import train

    cfg = with_method(TINY_RUN + [f"cache_dir={toy_cache}"], WINDOW_FILE)
    metrics = train(cfg, tmp_path)
    assert metrics["steps"] == 2 and metrics["config"]["method"]["selector"] == "window"
    # decisions are 20% of the response; with their neighbours the loss reads more, but not everything
    assert 0.2 < metrics["kept_share"] < 1.0


def test_the_new_selection_is_decisions_and_their_neighbours(window):
    entropy = torch.tensor([[0.1, 0.2, 3.0, 0.3, 0.1, 0.2, 0.1, 0.4, 0.0, 0.0]])
    mask = torch.tensor([[True] * 8 + [False] * 2])
    sel = select_tokens(
        "window", {"decision_ratio": 0.125, "width": 1}, entropy=entropy, divergence=entropy, hidden=None, mask=mask
    )
    assert sel.decision.nonzero()[:, 1].tolist() == [2]  # ⌈0.125·8⌉ = 1 decision: the top entropy
    assert sel.weights.nonzero()[:, 1].tolist() == [1, 2, 3]


def test_the_schema_checks_a_new_selectors_knobs_in_one_line(window):
    assert load(MethodConfig, WINDOW_FILE, "method.").width == 1
    cases = [
        ({"width": -1}, "method.width must be an integer >= 0, got -1"),
        ({"lam": 1.0}, "method.lam is not a knob of method=window (selector window does not read it)"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load(MethodConfig, {**WINDOW_FILE, **change}, "method.")
    with pytest.raises(ConfigError, match="method is missing method.width"):
        load(MethodConfig, {k: v for k, v in WINDOW_FILE.items() if k != "width"}, "method.")


def test_a_selector_that_ranks_across_the_batch_refuses_micro_batches(monkeypatch):
    from dear.preflight.settings import train_config

    across = methods.Selector(
        "window", select_window, knobs=WINDOW.knobs, ranks_across=lambda name, knobs: f"method={name} (a test)"
    )
    monkeypatch.setitem(methods.SELECTORS, "window", across)
    cfg = with_method(TINY_MODELS + ["step.micro_batch_size=2"], WINDOW_FILE)
    with pytest.raises(ConfigError, match=r"method=window \(a test\) ranks tokens across all"):
        train_config(cfg, machine=False)
    monkeypatch.setitem(methods.SELECTORS, "window", WINDOW)
    train_config(cfg, machine=False)


def test_hidden_states_reach_the_selectors_that_declare_them_and_only_those(monkeypatch, tmp_path):
    """The step gathers the student's states at the knob hidden_layer for a selector that needs them."""
    from dear.data.toy import build_tokenizer
    from dear.distill.rollout import generate
    from dear.distill.step import select_step

    from tiny import tiny_qwen2

    seen = {}

    def remember(entropy, divergence, hidden, mask, *, generator=None, **knobs):
        seen["hidden"] = hidden
        return Selection(weights=mask.float(), decision=torch.zeros_like(mask), evidence=torch.zeros_like(mask))

    reads = methods.Selector("reads", remember, knobs={"hidden_layer": int}, needs_hidden=True)
    blind = methods.Selector("blind", remember)
    monkeypatch.setitem(methods.SELECTORS, "reads", reads)
    monkeypatch.setitem(methods.SELECTORS, "blind", blind)
    tok = build_tokenizer(tmp_path)
    student = tiny_qwen2(tok).eval()
    torch.manual_seed(0)
    rollout = generate(student, tok, ["1+2?", "3+4+5?"], n=1, temperature=1.0, max_new_tokens=8)
    loss = LossConfig(kind="reverse_kl", normalize="selected", temperature=1.0, beta=0.5)
    common = {"divergence": "reverse_kl", "source": "student"}
    with torch.no_grad():
        states = student(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            position_ids=rollout.position_ids,
            output_hidden_states=True,
        ).hidden_states
    method = load(MethodConfig, {"name": "reads", "selector": "reads", "hidden_layer": 1, **common}, "method.")
    select_step(student, student, rollout, method, loss, vocab_size=None, grad=False)
    assert seen["hidden"] is not None
    mask = rollout.target_mask  # the prompt's columns are never computed (never targets): zeros there
    assert seen["hidden"].shape == states[1][:, :-1].shape
    torch.testing.assert_close(seen["hidden"][mask], states[1][:, :-1][mask])
    method = load(MethodConfig, {"name": "blind", "selector": "blind", **common}, "method.")
    select_step(student, student, rollout, method, loss, vocab_size=None, grad=False)
    assert seen["hidden"] is None


def test_each_shipped_selector_takes_exactly_the_knobs_it_declares():
    for spec in methods.SELECTORS.values():
        params = inspect.signature(spec.select()).parameters
        keywords = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"generator"}
        assert keywords == set(spec.knobs) - {methods.HIDDEN_LAYER}, spec.name


def test_a_selector_that_needs_hidden_states_must_say_which_layer():
    with pytest.raises(ValueError, match="must declare the knob hidden_layer"):
        methods.Selector("x", select_window, knobs={"decision_ratio": Ratio}, needs_hidden=True)
    with pytest.raises(ValueError, match="already registered"):
        methods.register(methods.Selector("dear", select_window))


def test_the_plan_reads_what_a_selector_declares(monkeypatch):
    """dear-plan's loss share and hidden states come from the registration, not from the selector's name."""
    from dear.plan import workload
    from dear.preflight.settings import train_config

    declared = methods.Selector(
        "window",
        select_window,
        knobs={**WINDOW.knobs, "hidden_layer": int},
        needs_hidden=True,
        loss_share=lambda knobs: 2 * knobs["decision_ratio"],
    )
    monkeypatch.setitem(methods.SELECTORS, "window", declared)
    s = train_config(with_method(TINY_MODELS, {**WINDOW_FILE, "hidden_layer": -1}), machine=False)
    w = workload(s, prompt_tokens=16, gpu=False)
    assert w.selected_share == pytest.approx(0.4) and w.hidden_states
    monkeypatch.setitem(methods.SELECTORS, "window", WINDOW)  # undeclared: every position, no hidden states
    w = workload(train_config(with_method(TINY_MODELS, WINDOW_FILE), machine=False), prompt_tokens=16, gpu=False)
    assert w.selected_share == 1.0 and not w.hidden_states


def test_the_registry_and_the_schema_import_no_torch():
    code = "import sys, dear.config.methods, dear.config.schema; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_method_reads_its_knobs_as_attributes_and_records_them_flat():
    m = load(MethodConfig, {**dict(compose(["method=tip"]).method)}, "method.")
    assert (m.tip_ratio, m.scope) == (0.5, "sequence")
    with pytest.raises(AttributeError):
        m.decision_ratio  # noqa: B018  (tip does not read it)
    assert m.record() == {**dict(compose(["method=tip"]).method)}
