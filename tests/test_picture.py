"""The picture of what a method selects (dear/distill/selection_pages.py): groups, hover text and escaping."""

from __future__ import annotations

import torch

from dear.distill.selection_pages import Token, groups, render
from dear.objective import Selection


def test_groups_follow_the_selection_and_skip_prompt_and_padding():
    mask = torch.tensor([[False, True, True, True, True], [False, False, True, True, False]])
    decision = torch.tensor([[False, True, False, False, False], [False, False, False, False, False]])
    evidence = torch.tensor([[False, False, False, True, False], [False, False, False, False, False]])
    weights = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    sel = Selection(weights=weights, decision=decision, evidence=evidence)
    assert groups(sel, mask) == [["decision", "other", "evidence", "other"], ["selected", "other"]]


def test_render_colours_tokens_and_escapes_text():
    page = render(
        "dear <step 0>", ["1+2?"], [[Token("<", "decision", 1.25, 0.5, 1.0), Token("3", "other", 0.01, 0.0, 0.0)]]
    )
    assert page.startswith("<!doctype html>") and "dear &lt;step 0&gt;" in page
    assert 'class="tok decision"' in page and 'title="decision: H=1.250 D=0.500 w=1"' in page and ">&lt;</span>" in page
    assert 'class="tok other"' in page and "1+2?" in page
