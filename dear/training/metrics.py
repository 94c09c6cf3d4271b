"""metrics.json of a training run: the benchmark before and after, the held-out curve and its area, and the step
stats averaged over the run (README.md "The objective"), beside the run's record (`dear.training.records`)."""

from __future__ import annotations

import math
from pathlib import Path

from dear.config.schema import TrainConfig
from dear.data.benchmarks import subset_note
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


def train_metrics(s: TrainConfig, run_dir: Path, module, problems: list, *, steps: int, wall_time_s: float) -> dict:
    """metrics.json of the finished run of ``module`` (a `DistillModule`) on the benchmark's ``problems``."""
    history = module.curve.history
    first, last = history[0], history[-1]
    return run_record(
        s,
        run_dir,
        wall_time_s=wall_time_s,
        extra={
            "steps": steps,
            "sandbox": sandbox_record(problems),
            "benchmarks": {
                s.benchmark.name: {
                    "accuracy_before": first["accuracy"],
                    "accuracy_after": last["accuracy"],
                    "gain": last["accuracy"] - first["accuracy"],
                    "subset": subset_note(s.benchmark.name),  # an offline subset of the published set, or None
                }
            },
            "heldout_reverse_kl": {"before": first.get("heldout_reverse_kl"), "after": last.get("heldout_reverse_kl")},
            "accuracy_auc": accuracy_auc(history),
            "curve": history,
            "mean_step_time_s": module.step_means.mean_seconds(),
            # grad_mass_coverage (README.md "The objective") and kept_share, averaged over the steps
            **module.step_means.means(),
            # HTML pages of what the method selects at the start and the end (dear/distill/selection_pages.py)
            "selection_pages": module.pages.written,
            "skipped_steps": module.guard.skipped,  # non-finite loss, gradient or teacher logits (guards.py)
        },
    )
