"""``dear-table``: collate finished runs into a results table, optionally running the grid first.

    dear-table outputs/                       # every finished run (metrics.json) below outputs/
    dear-table --run conf/table/toy.yaml      # run what the grid still lacks, then write its tables
    dear-table --run conf/table/paper.yaml --dry-run   # list every run of a grid and whether it is done

A grid file either sweeps (``sweep:``, one Hydra multirun, collated into one table of rows that
differ only by seed) or lists tables (``tables:``, a reproduction: `dear.tables.grid` says which runs it
needs and runs only the unfinished ones, `dear.tables.reproduce` writes ``<output>/<name>.md``, ``.csv`` and
plots with paired differences and their 95% intervals).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from dear.data.benchmarks import benchmark_label
from dear.errors import DearError
from dear.files import write_text_atomic

COLUMNS = ("accuracy_before", "accuracy_after", "gain", "accuracy_auc", "kl_after")


def load_runs(roots: list[Path]) -> list[dict]:
    runs = []
    for root in roots:
        for path in sorted(root.rglob("metrics.json")):
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DearError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); fix or delete it") from e
            if record.get("status") == "complete" and "benchmarks" in record:
                runs.append(record)
    return runs


def row_key(run: dict) -> tuple:
    c = run["config"]
    return (
        c["model"]["name"],
        c["teacher"]["name"],
        c["method"]["name"],
        c["loss"]["normalize"],
        next(iter(run["benchmarks"])),
    )


def cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(runs: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[row_key(run)].append(run)
    head = ["student", "teacher", "method", "normalize", "benchmark", "seeds", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups):
        rs = groups[key]
        b = [next(iter(r["benchmarks"].values())) for r in rs]
        cols = {
            "accuracy_before": [x["accuracy_before"] for x in b],
            "accuracy_after": [x["accuracy_after"] for x in b],
            "gain": [x["gain"] for x in b],
            "accuracy_auc": [r["accuracy_auc"] for r in rs],
            "kl_after": [r["heldout_reverse_kl"]["after"] for r in rs],
        }
        shown = [*key[:4], benchmark_label(key[4])]  # an offline subset says so: "math500 (311 of 500)"
        lines.append("| " + " | ".join([*map(str, shown), str(len(rs)), *(cell(cols[c]) for c in COLUMNS)]) + " |")
    return "\n".join(lines)


def read_grid(grid_file: Path) -> dict:
    """The grid file's mapping: ``overrides`` (a list), ``sweep`` (key: list of values), ``output``."""
    try:
        grid = yaml.safe_load(grid_file.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise DearError(f"{grid_file} is not valid YAML{f' (line {where.line + 1})' if where else ''}") from e
    if (
        not isinstance(grid, dict)
        or not isinstance(grid.get("overrides", []), list)
        or not isinstance(grid.get("sweep", {}), dict)
        or not all(isinstance(v, list) for v in grid.get("sweep", {}).values())
    ):
        raise DearError(
            f"{grid_file} must map overrides to a list and sweep to lists of values (see conf/table/toy.yaml)"
        )
    return grid


def run_grid(grid_file: Path, extra: list[str]) -> Path:
    grid = read_grid(grid_file)
    out = Path(grid.get("output", "outputs/tables")) / grid_file.stem
    sweep = [f"{k}={','.join(map(str, v))}" for k, v in grid.get("sweep", {}).items()]
    cmd = [
        str(Path(sys.executable).parent / "dear-train"),
        "-m",
        *grid.get("overrides", []),
        *sweep,
        *extra,
        f"hydra.sweep.dir={out}",
    ]
    print("running:", " ".join(cmd), file=sys.stderr)
    if subprocess.run(cmd).returncode != 0:
        raise DearError(f"the grid {grid_file} did not finish; finished runs stay in {out}")
    return out


def reproduce(grid_file: Path, extra: list[str], dry_run: bool) -> None:
    """A ``tables:`` grid: list its runs (dry run), or run the unfinished ones and write its tables."""
    from dear.tables import grid as grids
    from dear.tables.reproduce import write

    g = grids.read(grid_file, extra)
    runs = g.runs()
    if dry_run:
        for run in runs:
            state = "done" if grids.finished(g.run_dir(run)) else "todo"
            print(f"{state}  {g.run_dir(run)}  dear-train {' '.join(run.command_overrides(g.overrides))}")
        launcher = " ".join(g.launch) or "the basic launcher"
        print(f"{len(runs)} runs, {len(grids.pending(g))} to run; launched with: {launcher}")
        return
    todo = grids.pending(g)
    print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run", file=sys.stderr)
    failed = grids.launch(g, todo)
    text, files = write(g)
    print(text)
    print("wrote " + ", ".join(map(str, files)), file=sys.stderr)
    if failed:
        raise DearError(
            f"runs of {', '.join(failed)} did not finish (the tables show what did); run the same "
            f"command again to resume them"
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dear-table", description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="*", type=Path, help="folders searched for metrics.json (default: outputs)")
    parser.add_argument("--run", type=Path, help="a grid file (conf/table/*.yaml) to run before collating")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--dry-run", action="store_true", help="with --run: list the grid's runs, run nothing")
    args, extra = parser.parse_known_args(argv)
    try:
        roots = list(args.roots)
        if args.run:
            if not args.run.exists():
                raise DearError(f"no grid file {args.run}")
            if "tables" in read_grid(args.run):
                return reproduce(args.run, extra, args.dry_run)
            roots.append(run_grid(args.run, extra))
        elif extra:
            raise DearError(f"unknown arguments {' '.join(extra)} (overrides are only taken with --run)")
        roots = roots or [Path("outputs")]
        missing = [str(r) for r in roots if not r.is_dir()]
        if [m for m in missing if "=" in m]:
            raise DearError(f"no folder {', '.join(missing)} (overrides are only taken with --run)")
        if missing:
            raise DearError(f"no folder {', '.join(missing)}; give the folders that hold the runs")
        runs = load_runs(roots)
        if not runs:
            raise DearError(f"no finished runs (metrics.json) under {', '.join(map(str, roots))}")
    except DearError as e:
        print(f"dear-table: error: {e}", file=sys.stderr)
        sys.exit(2)
    text = table(runs)
    print(text)
    if args.out:
        try:
            write_text_atomic(args.out, text + "\n")  # a table is complete or absent, never half-written
        except DearError as e:
            print(f"dear-table: error: {e}", file=sys.stderr)
            sys.exit(2)
