"""What a method selects, as a picture: an HTML page of the student's rollouts on a few fixed
held-out prompts, each response token coloured by its group (decision / evidence / other; methods
without groups show selected / other) with its entropy ``H_t``, divergence ``D_t`` and weight on hover.

`selection_page` samples, scores and selects exactly as a training step does (`dear.distill.step`), without
gradient and from its own seed, so the page drawn at step 0 and at the end of a run differ only by
what the student learnt. `render` is the pure HTML part.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import torch

from dear import objective
from dear.config.schema import LossConfig, MethodConfig, StepConfig
from dear.distill.rollout import generate
from dear.distill.step import score_step

COLOURS = {"decision": "#f4a261", "evidence": "#2a9d8f", "selected": "#8ecae6", "other": "#f1f1f1"}


@dataclass(frozen=True)
class Token:
    text: str
    group: str  # decision | evidence | selected | other
    entropy: float
    divergence: float
    weight: float


def groups(selection: objective.Selection, mask: torch.Tensor) -> list[list[str]]:
    """Per sequence, the group of each response position in order (decision and evidence first; a
    position with weight > 0 in neither is "selected")."""
    out = []
    for i in range(mask.shape[0]):
        row = []
        for t in mask[i].nonzero().flatten().tolist():
            row.append(
                "decision"
                if selection.decision[i, t]
                else "evidence"
                if selection.evidence[i, t]
                else "selected"
                if selection.weights[i, t] > 0
                else "other"
            )
        out.append(row)
    return out


def render(title: str, prompts: list[str], rows: list[list[Token]]) -> str:
    """A self-contained HTML page: one block per prompt, one span per response token."""
    legend = " ".join(f'<span class="tok" style="background:{c}">{g}</span>' for g, c in COLOURS.items())
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:monospace;max-width:60em;margin:2em auto}.tok{padding:1px 2px;margin:0 1px;"
        "border-radius:3px;white-space:pre}.prompt{color:#666}</style>",
        f"<h2>{html.escape(title)}</h2><p>{legend} (hover a token: entropy H, divergence D, weight w)</p>",
    ]
    for prompt, row in zip(prompts, rows):
        spans = "".join(
            f'<span class="tok {tok.group}" style="background:{COLOURS[tok.group]}" '
            f'title="{tok.group}: H={tok.entropy:.3f} D={tok.divergence:.3f} w={tok.weight:g}">{html.escape(tok.text)}'
            "</span>"
            for tok in row
        )
        parts.append(f'<p><span class="prompt">{html.escape(prompt)}</span><br>{spans}</p>')
    return "\n".join(parts) + "\n"


@torch.no_grad()
def selection_page(
    student,
    teacher,
    tokenizer,
    prompts: list[str],
    method: MethodConfig,
    loss: LossConfig,
    *,
    vocab_size: int | None,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    title: str,
    step: StepConfig | None = None,
) -> str:
    """Sample one response per prompt (seeded, outside the run's random streams), select as a training
    step would (in its micro-batches and logits mode, ``step``), and render the page."""
    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        rollout = generate(student, tokenizer, prompts, n=1, temperature=temperature, max_new_tokens=max_new_tokens).to(
            device
        )
    signals, selection = score_step(
        student,
        teacher,
        rollout,
        method,
        loss,
        vocab_size=vocab_size,
        step=step,
        generator=torch.Generator().manual_seed(seed),
    )
    mask = rollout.target_mask
    rows = []
    for i, row_groups in enumerate(groups(selection, mask)):
        positions = mask[i].nonzero().flatten().tolist()
        rows.append(
            [
                Token(
                    tokenizer.decode([int(rollout.input_ids[i, t + 1])]),
                    g,
                    float(signals.entropy[i, t]),
                    float(signals.divergence[i, t]),
                    float(selection.weights[i, t]),
                )
                for t, g in zip(positions, row_groups)
            ]
        )
    return render(title, prompts, rows)
