"""Collate a reproduction grid (`dear.tables.grid`) into its tables: markdown, CSV and plots.

Each row reports, over its seeds, mean ± std of held-out accuracy after training, accuracy AUC,
held-out reverse KL after, gradient-mass coverage and kept share; and its difference from the
table's baseline row in accuracy and AUC, paired by seed, with a 95% t-interval (`dear.tables.stats`).
A row "beats" its baseline only when the accuracy interval lies above 0.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

from dear.files import write_text_atomic, writing
from dear.tables.grid import Grid, Table, finished
from dear.tables.stats import Paired, mean_std, paired

# (key in a run's values, column title)
METRICS = (
    ("accuracy_after", "accuracy after"),
    ("accuracy_auc", "accuracy AUC"),
    ("kl_after", "held-out KL"),
    ("grad_mass_coverage", "grad-mass coverage"),
    ("kept_share", "kept share"),
)
PAIRED = (("accuracy_after", "accuracy"), ("accuracy_auc", "AUC"))


def run_values(metrics: dict) -> dict:
    """The numbers a table reads from one run's metrics.json."""
    name, bench = next(iter(metrics["benchmarks"].items()))
    return {
        "benchmark": name,
        "subset": bench.get("subset"),
        "accuracy_after": bench["accuracy_after"],
        "accuracy_auc": metrics.get("accuracy_auc"),
        "kl_after": (metrics.get("heldout_reverse_kl") or {}).get("after"),
        "grad_mass_coverage": metrics.get("grad_mass_coverage"),
        "kept_share": metrics.get("kept_share"),
        "curve": metrics.get("curve", []),
    }


@dataclass
class Row:
    name: str
    overrides: tuple[str, ...]
    by_seed: dict[int, dict]  # seed -> run_values of the finished runs
    baseline: str | None
    diffs: dict[str, Paired]  # metric -> paired difference from the baseline

    def values(self, key: str) -> dict[int, float]:
        return {s: v[key] for s, v in self.by_seed.items()}

    @property
    def beats(self) -> str:
        d = self.diffs.get("accuracy_after")
        if d is None or d.n < 2:
            return ""
        return "yes" if d.low > 0 else "below" if d.high < 0 else "no"


def collate(grid: Grid, table: Table) -> list[Row]:
    rows: dict[str, Row] = {}
    for name, overrides in table.rows.items():
        by_seed = {}
        for run in grid.runs(table):
            run_dir = grid.run_dir(run)
            if run.row == name and finished(run_dir):
                by_seed[run.seed] = run_values(json.loads((run_dir / "metrics.json").read_text()))
        rows[name] = Row(name, overrides, by_seed, table.baseline.get(name), {})
    for row in rows.values():
        if row.baseline:
            base = rows[row.baseline]
            row.diffs = {k: paired(row.values(k), base.values(k)) for k, _ in PAIRED}
    return list(rows.values())


def _cell(values: dict[int, float], digits: int = 3) -> str:
    mean, std, n = mean_std(list(values.values()))
    if n == 0:
        return "-"
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _diff(d: Paired | None) -> str:
    if d is None or d.n == 0:
        return "-"
    if d.n < 2:
        return f"{d.mean:+.3f}"
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def markdown(grid: Grid, collated: dict[str, list[Row]]) -> str:
    out = [
        f"# {grid.name}: reproduction tables",
        "",
        "Mean ± std over seeds; Δ: the difference from the baseline row paired by seed, mean [95% "
        "t-interval]; beats: yes when the accuracy interval lies above 0, below when under it.",
        "",
    ]
    for table in grid.tables:
        rows = collated[table.name]
        base = sorted({r.baseline for r in rows if r.baseline})
        out += [f"## {table.name} ({len(table.seeds)} seeds{'; baseline ' + ', '.join(base) if base else ''})", ""]
        head = ["row", "seeds", *(t for _, t in METRICS), *(f"Δ {t}" for _, t in PAIRED), "beats"]
        subsets = sorted({f"{v['benchmark']}: {v['subset']}" for r in rows for v in r.by_seed.values() if v["subset"]})
        out += [f"Benchmark is an offline subset: {s}." for s in subsets] + ([""] if subsets else [])
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [
                r.name,
                f"{len(r.by_seed)}/{len(table.seeds)}",
                *(_cell(r.values(k)) for k, _ in METRICS),
                *(_diff(r.diffs.get(k)) for k, _ in PAIRED),
                r.beats,
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def csv_text(grid: Grid, collated: dict[str, list[Row]]) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "row", "overrides", "seeds"]
    for k, _ in METRICS:
        head += [f"{k}_mean", f"{k}_std"]
    for k, _ in PAIRED:
        head += [f"diff_{k}_mean", f"diff_{k}_low", f"diff_{k}_high"]
    w.writerow(head + ["baseline", "beats"])
    for table in grid.tables:
        for r in collated[table.name]:
            line = [table.name, r.name, " ".join(r.overrides), len(r.by_seed)]
            for k, _ in METRICS:
                mean, std, _n = mean_std(list(r.values(k).values()))
                line += [_num(mean), _num(std)]
            for k, _ in PAIRED:
                d = r.diffs.get(k)
                line += [_num(d.mean), _num(d.low), _num(d.high)] if d else ["", "", ""]
            w.writerow(line + [r.baseline or "", r.beats])
    return buf.getvalue()


def _num(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.6g}"


def plots(grid: Grid, collated: dict[str, list[Row]], folder: Path) -> list[Path]:
    """Accuracy against step per row (mean and ±std band over seeds) for each table, and accuracy
    after against the swept value for sensitivity tables (``curve:``). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for table in grid.tables:
        rows = [r for r in collated[table.name] if r.by_seed]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in rows:
            steps, mean, std = _curve(r)
            (line,) = ax.plot(steps, mean, label=r.name)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set(xlabel="step", ylabel="held-out accuracy", title=f"{grid.name} {table.name}: accuracy (mean ± std)")
        ax.legend(fontsize=7)
        written.append(_save(fig, folder / f"{grid.name}-{table.name}-accuracy.png"))
        plt.close(fig)
        if table.curve:
            swept = sorted(
                (r for r in rows if r.name.startswith(f"{table.curve}=")),
                key=lambda r: float(r.name.split("=", 1)[1].split(",")[0]),
            )  # a row named key=x is at x
            xs = [float(r.name.split("=", 1)[1].split(",")[0]) for r in swept]
            stats = [mean_std(list(r.values("accuracy_after").values())) for r in swept]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.errorbar(
                xs,
                [m for m, _, _ in stats],
                yerr=[0 if math.isnan(s) else s for _, s, _ in stats],
                marker="o",
                capsize=3,
                label=table.curve,
            )
            for r in rows:
                if r not in swept:
                    m, _, _ = mean_std(list(r.values("accuracy_after").values()))
                    ax.axhline(m, linestyle="--", linewidth=1, label=r.name)
            ax.set(xlabel=table.curve, ylabel="held-out accuracy after", title=f"{grid.name}: {table.name}")
            ax.legend(fontsize=7)
            written.append(_save(fig, folder / f"{grid.name}-{table.name}-sensitivity.png"))
            plt.close(fig)
    return written


def _curve(row: Row) -> tuple[list[int], list[float], list[float]]:
    """Steps evaluated by every seed, with the mean and std of accuracy over the seeds."""
    curves = [{p["step"]: p["accuracy"] for p in v["curve"] if "accuracy" in p} for v in row.by_seed.values()]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    stats = [mean_std([c[s] for c in curves]) for s in steps]
    return steps, [m for m, _, _ in stats], [0.0 if math.isnan(s) else s for _, s, _ in stats]


def _save(fig, path: Path) -> Path:
    """Save a figure so that ``path`` is either its previous self or complete."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp"
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
        tmp.replace(path)
    return path


def write(grid: Grid, with_plots: bool = True) -> tuple[str, list[Path]]:
    """Collate every table; write ``<output>/<name>.md``, ``.csv`` and the plots. Returns (markdown, files)."""
    collated = {t.name: collate(grid, t) for t in grid.tables}
    text = markdown(grid, collated)
    md, csv_path = grid.output / f"{grid.name}.md", grid.output / f"{grid.name}.csv"
    write_text_atomic(md, text)
    write_text_atomic(csv_path, csv_text(grid, collated))
    return text, [md, csv_path, *(plots(grid, collated, grid.output) if with_plots else [])]
