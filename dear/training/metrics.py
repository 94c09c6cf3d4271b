"""metrics.json of a training run: the benchmark before and after, the held-out curve and its area, and the step
stats averaged over the run (README.md "The objective"), beside the run's record (`dear.training.records`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dear.config.schema import TrainConfig
from dear.data.benchmarks import subset_note
from dear.files import write_text_atomic
from dear.training.records import run_record, sandbox_record

# Step stats averaged over the run into metrics.json, under these names (the tables read them).
RUN_MEANS = {"train/grad_mass_coverage": "grad_mass_coverage", "train/selected_frac": "kept_share"}


class StepMeans:
    """Σ and count over the run of the step stats metrics.json averages (they travel in checkpoints), and the
    time of each step this process ran."""

    def __init__(self) -> None:
        self.sums: dict[str, list] = {key: [0.0, 0] for key in RUN_MEANS}
        self.seconds: list[float] = []

    def add(self, stats: dict[str, float], seconds: float) -> None:
        self.seconds.append(seconds)
        for key in RUN_MEANS:
            if key in stats:  # absent when not finite
                self.sums[key] = [self.sums[key][0] + stats[key], self.sums[key][1] + 1]

    def means(self) -> dict[str, float | None]:
        """The run averages: the gradient-mass coverage and the kept share."""
        return {
            name: (self.sums[key][0] / self.sums[key][1] if self.sums[key][1] else None)
            for key, name in RUN_MEANS.items()
        }

    def mean_seconds(self) -> float:
        return sum(self.seconds) / max(1, len(self.seconds))

    def state_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.sums.items()}

    def load_state_dict(self, sums: dict[str, list]) -> None:
        self.sums.update({k: list(v) for k, v in sums.items()})


def accuracy_auc(history: list[dict], key: str = "accuracy") -> float:
    """Area under the accuracy-vs-step curve, normalised by the steps covered (a mean accuracy)."""
    pts = sorted((h["step"], h[key]) for h in history if key in h)
    if len(pts) < 2 or pts[-1][0] == pts[0][0]:
        return pts[-1][1] if pts else math.nan
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def train_metrics(
    s: TrainConfig, run_dir: Path, module, problems: dict[str, list], *, steps: int, wall_time_s: float
) -> dict:
    """metrics.json of the finished run of ``module`` (a `DistillModule`) on each benchmark's ``problems``
    (benchmark name -> its problems; the curve's benchmark first)."""
    history = module.curve.history
    first, last = history[0], history[-1]
    ends = {
        **module.curve.ends,
        s.benchmark.name: {"before": first, "after": last},
    }  # the curve's: its first, last rows
    return run_record(
        s,
        run_dir,
        wall_time_s=wall_time_s,
        extra={
            "steps": steps,
            "sandbox": sandbox_record([p for ps in problems.values() for p in ps]),
            # one entry per benchmark evaluated (`benchmark` first, then eval.benchmarks)
            "benchmarks": {name: _benchmark_entry(name, ends[name]) for name in problems},
            "heldout_reverse_kl": {"before": first.get("heldout_reverse_kl"), "after": last.get("heldout_reverse_kl")},
            "accuracy_auc": accuracy_auc(history),
            "curve": history,
            "mean_step_time_s": module.step_means.mean_seconds(),
            # grad_mass_coverage (README.md "The objective") and kept_share, averaged over the steps
            **module.step_means.means(),
            # HTML pages of what the method selects at the start and the end (dear/distill/selection_pages.py)
            "selection_pages": module.pages.written,
            # each benchmark's last evaluation, problem by problem (`write_responses`)
            "responses": {name: f"responses/{name}.jsonl" for name in module.curve.records},
            "skipped_steps": module.guard.skipped,  # non-finite loss, gradient or teacher logits (guards.py)
        },
    )


def _benchmark_entry(name: str, ends: dict[str, dict]) -> dict:
    before, after = ends.get("before") or {}, ends["after"]
    return {
        "accuracy_before": before.get("accuracy"),
        "accuracy_after": after["accuracy"],
        "gain": after["accuracy"] - before["accuracy"] if before else None,
        "subset": subset_note(name),  # an offline subset of the published set, or None
    }


def write_responses(run_dir: Path, records: dict[str, list[dict]]) -> None:
    """Each benchmark's last evaluation, one problem a line (prompt, reference, responses, correct), in
    ``responses/<benchmark>.jsonl``: what a reader checks a score against."""
    for name, rows in records.items():
        write_text_atomic(run_dir / "responses" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
