"""dear-table's one renderer: tables of rows over seeds, as markdown, CSV and plots.

A table (`dear.tables.grid.Table`) comes from a grid file (`collate`: each row's runs in the grid's run
folders) or from the finished runs found under folders (`dear.tables.collate`: rows are the runs that
differ only by seed). Each row reports, over its seeds, mean ± std of held-out accuracy before and after
training, the gain, accuracy AUC, held-out reverse KL after, gradient-mass coverage and kept share; and,
when its table names a baseline row, its difference from that row in accuracy and AUC, paired by seed,
with a 95% t-interval (`dear.tables.stats`). A row "beats" its baseline only when the accuracy interval
lies above 0. Accuracy there is on a run's first benchmark (the one its curve follows); runs evaluated on
more (``eval.benchmarks``) add, under the table, accuracy after and gain per benchmark, and the paired
difference from the baseline per benchmark (CSV: ``<benchmark>_accuracy_after_mean``, … columns).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dear.files import write_text_atomic, writing
from dear.tables.grid import Grid, Table, finished
from dear.tables.stats import Paired, mean_std, paired

# (key in a run's values, column title)
METRICS = (
    ("accuracy_before", "accuracy before"),
    ("accuracy_after", "accuracy after"),
    ("gain", "gain"),
    ("accuracy_auc", "accuracy AUC"),
    ("kl_after", "held-out KL"),
    ("grad_mass_coverage", "grad-mass coverage"),
    ("kept_share", "kept share"),
)
PAIRED = (("accuracy_after", "accuracy"), ("accuracy_auc", "AUC"))
PER_BENCHMARK = ("accuracy_before", "accuracy_after", "gain")  # each benchmark's numbers (CSV: all of them)
BENCHMARK_GRIDS = (("accuracy_after", "accuracy after"), ("gain", "gain"))  # markdown (before: the same student's)

Section = tuple[Table, list["Row"]]  # a table and its collated rows, in display order


def run_values(metrics: dict) -> dict:
    """The numbers a table reads from one run's metrics.json: the first benchmark's (the curve's) beside the
    run's, and every benchmark's under ``benchmarks``."""
    name, bench = next(iter(metrics["benchmarks"].items()))
    return {
        "benchmark": name,
        "subset": bench.get("subset"),
        "accuracy_before": bench.get("accuracy_before"),
        "accuracy_after": bench["accuracy_after"],
        "gain": bench.get("gain"),
        "accuracy_auc": metrics.get("accuracy_auc"),
        "kl_after": (metrics.get("heldout_reverse_kl") or {}).get("after"),
        "grad_mass_coverage": metrics.get("grad_mass_coverage"),
        "kept_share": metrics.get("kept_share"),
        "curve": metrics.get("curve", []),
        "benchmarks": {
            b: {**{k: e.get(k) for k in PER_BENCHMARK}, "subset": e.get("subset")}
            for b, e in metrics["benchmarks"].items()
        },
    }


@dataclass
class Row:
    name: str
    overrides: tuple[str, ...]
    by_seed: dict[int, dict]  # seed -> run_values of the finished runs
    baseline: str | None
    diffs: dict[str, Paired]  # metric -> paired difference from the baseline
    bench_diffs: dict[str, Paired] = field(default_factory=dict)  # benchmark -> paired difference in accuracy after
    ran_differently: tuple[str, ...] = ()  # how its pooled runs differ besides the seed (folders' tables)

    def values(self, key: str) -> dict[int, float]:
        return {s: v[key] for s, v in self.by_seed.items()}

    def bench_values(self, bench: str, key: str) -> dict[int, float]:
        """One benchmark's ``key`` per seed, of the seeds evaluated on it."""
        return {s: v["benchmarks"][bench][key] for s, v in self.by_seed.items() if bench in v["benchmarks"]}

    @property
    def beats(self) -> str:
        d = self.diffs.get("accuracy_after")
        if d is None or d.n < 2:
            return ""
        return "yes" if d.low > 0 else "below" if d.high < 0 else "no"


def pair(rows: list[Row]) -> list[Row]:
    """Fill each row's paired differences from its baseline row (by name); returns the rows."""
    by_name = {r.name: r for r in rows}
    for row in rows:
        if row.baseline:
            base = by_name[row.baseline]
            row.diffs = {k: paired(row.values(k), base.values(k)) for k, _ in PAIRED}
            row.bench_diffs = {
                b: paired(row.bench_values(b, "accuracy_after"), base.bench_values(b, "accuracy_after"))
                for b in benchmarks(rows)
            }
    return rows


def benchmarks(rows: list[Row]) -> list[str]:
    """The benchmarks the rows' runs were evaluated on, each run's first (its curve's) leading."""
    return list(dict.fromkeys(b for r in rows for v in r.by_seed.values() for b in v["benchmarks"]))


def collate(grid: Grid, table: Table) -> list[Row]:
    """A grid table's rows, from the finished runs in the grid's run folders."""
    rows = []
    for name, overrides in table.rows.items():
        by_seed = {}
        for run in grid.runs(table):
            run_dir = grid.run_dir(run)
            if run.row == name and finished(run_dir):
                by_seed[run.seed] = run_values(json.loads((run_dir / "metrics.json").read_text()))
        rows.append(Row(name, overrides, by_seed, table.baseline.get(name), {}))
    return pair(rows)


def cell(values: list, digits: int = 3) -> str:
    """Mean ± sample std of the values that are numbers; the mean alone for one, ``-`` for none."""
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    return _fixed(mean, f".{digits}f") if n == 1 else f"{_fixed(mean, f'.{digits}f')} ± {std:.{digits}f}"


def _diff(d: Paired | None) -> str:
    if d is None or d.n == 0:
        return "-"
    if d.n < 2:
        return _fixed(d.mean, "+.3f")
    return f"{_fixed(d.mean, '+.3f')} [{_fixed(d.low, '+.3f')}, {_fixed(d.high, '+.3f')}]"


def _fixed(x: float, spec: str) -> str:
    """``x`` formatted; a value that rounds to zero without a minus sign (a mean of -0.1, 0 and 0.1 is 0.000)."""
    text = format(x, spec)
    return text.replace("-", "+" if "+" in spec else "", 1) if float(text) == 0 else text


def markdown(title: str, sections: list[Section]) -> str:
    """The tables as markdown, under one title."""
    paired_rows = any(r.baseline for _, rows in sections for r in rows)
    legend = "Mean ± std over seeds" + (
        "; Δ: the difference from the baseline row paired by seed, mean [95% t-interval]; beats: yes when "
        "the accuracy interval lies above 0, below when under it."
        if paired_rows
        else "."
    )
    out = [f"# {title}", "", legend, ""]
    for table, rows in sections:
        out += _section(table, rows)
    return "\n".join(out).rstrip("\n")  # printed, or written with one newline at the end


def _section(table: Table, rows: list[Row]) -> list[str]:
    """One table's lines; the Δ and beats columns only when it names a baseline row."""
    base = sorted({r.baseline for r in rows if r.baseline})
    compared = PAIRED if base else ()
    verdict = ["beats"] if base else []
    out = [f"## {table.name} ({len(table.seeds)} seeds{'; baseline ' + ', '.join(base) if base else ''})", ""]
    ends = [(b, e) for r in rows for v in r.by_seed.values() for b, e in v["benchmarks"].items()]
    subsets = sorted({f"{b}: {e['subset']}" for b, e in ends if e["subset"]})
    out += [f"Benchmark is an offline subset: {s}." for s in subsets] + ([""] if subsets else [])
    if len(benchmarks(rows)) > 1:
        curves = ", ".join(dict.fromkeys(v["benchmark"] for r in rows for v in r.by_seed.values()))
        out += [f"Accuracy on {curves}, the benchmark of the held-out curve; every benchmark below.", ""]
    head = ["row", "seeds", *(t for _, t in METRICS), *(f"Δ {t}" for _, t in compared), *verdict]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.name,
            f"{len(r.by_seed)}/{len(table.seeds)}",
            *(cell(list(r.values(k).values())) for k, _ in METRICS),
            *(_diff(r.diffs.get(k)) for k, _ in compared),
            *([r.beats] if verdict else []),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""] + _per_benchmark(table, rows)


def _per_benchmark(table: Table, rows: list[Row]) -> list[str]:
    """Where runs were evaluated on more than one benchmark: a benchmark per column, for accuracy after, the gain
    and (with a baseline) the paired difference in accuracy after."""
    names = benchmarks(rows)
    if len(names) < 2:
        return []
    out = []
    grids = [(title, lambda r, b, k=k: cell(list(r.bench_values(b, k).values()))) for k, title in BENCHMARK_GRIDS]
    if any(r.baseline for r in rows):
        grids.append(("Δ accuracy after", lambda r, b: _diff(r.bench_diffs.get(b))))
    for title, value in grids:
        out += [f"### {table.name}: {title}, per benchmark", "", "| row | " + " | ".join(names) + " |"]
        out += ["|" + "---|" * (len(names) + 1)]
        out += ["| " + " | ".join([r.name, *(value(r, b) for b in names)]) + " |" for r in rows]
        out.append("")
    return out


def csv_text(sections: list[Section]) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["table", "row", "overrides", "seeds"]
    for k, _ in METRICS:
        head += [f"{k}_mean", f"{k}_std"]
    for k, _ in PAIRED:
        head += [f"diff_{k}_mean", f"diff_{k}_low", f"diff_{k}_high"]
    head += ["baseline", "beats"]
    extra = benchmarks([r for _, rows in sections for r in rows])
    extra = extra if len(extra) > 1 else []  # one benchmark: its numbers are the columns above
    for b in extra:
        head += [f"{b}_{k}_{stat}" for k in PER_BENCHMARK for stat in ("mean", "std")]
        head += [f"diff_{b}_accuracy_after_{stat}" for stat in ("mean", "low", "high")]
    w.writerow(head)
    for table, rows in sections:
        for r in rows:
            line = [table.name, r.name, " ".join(r.overrides), len(r.by_seed)]
            for k, _ in METRICS:
                mean, std, _n = mean_std(list(r.values(k).values()))
                line += [_num(mean), _num(std)]
            for k, _ in PAIRED:
                d = r.diffs.get(k)
                line += [_num(d.mean), _num(d.low), _num(d.high)] if d else ["", "", ""]
            line += [r.baseline or "", r.beats]
            for b in extra:
                for k in PER_BENCHMARK:
                    mean, std, _n = mean_std(list(r.bench_values(b, k).values()))
                    line += [_num(mean), _num(std)]
                d = r.bench_diffs.get(b)
                line += [_num(d.mean), _num(d.low), _num(d.high)] if d else ["", "", ""]
            w.writerow(line)
    return buf.getvalue()


def _num(x: float) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.6g}"


def plots(name: str, sections: list[Section], folder: Path) -> list[Path]:
    """Accuracy against step per row (mean and ±std band over seeds) for each table, and accuracy
    after against the swept value for sensitivity tables (``curve:``). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for table, collated in sections:
        rows = [r for r in collated if r.by_seed]
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
        ax.set(xlabel="step", ylabel="held-out accuracy", title=f"{name} {table.name}: accuracy (mean ± std)")
        ax.legend(fontsize=7)
        written.append(_save(fig, folder / f"{name}-{table.name}-accuracy.png"))
        plt.close(fig)
        if table.curve:
            written.append(_sensitivity(name, table, rows, folder))
    return written


def _sensitivity(name: str, table: Table, rows: list[Row], folder: Path) -> Path:
    """Accuracy after against the swept value of ``table.curve``; the other rows as horizontal lines."""
    import matplotlib.pyplot as plt

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
    ax.set(xlabel=table.curve, ylabel="held-out accuracy after", title=f"{name}: {table.name}")
    ax.legend(fontsize=7)
    path = _save(fig, folder / f"{name}-{table.name}-sensitivity.png")
    plt.close(fig)
    return path


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
    sections = [(t, collate(grid, t)) for t in grid.tables]
    text = markdown(f"{grid.name}: reproduction tables", sections)
    md, csv_path = grid.output / f"{grid.name}.md", grid.output / f"{grid.name}.csv"
    write_text_atomic(md, text + "\n")
    write_text_atomic(csv_path, csv_text(sections))
    return text, [md, csv_path, *(plots(grid.name, sections, grid.output) if with_plots else [])]
