"""``dear-table``: results tables of finished runs, from a grid file (running what it still lacks) or from folders.

    dear-table --run toy                      # the packaged grid (dear/conf/table/toy.yaml), from any folder
    dear-table --run toy steps=5              # ... with overrides added to every run of the grid
    dear-table --run my-grid.yaml             # a grid file of your own
    dear-table --run paper --dry-run          # list every run of a grid and whether it is done
    dear-table --run paper --no-wait          # launch what it lacks in the background; the same command collates later
    dear-table outputs/                       # every finished run (metrics.json) below outputs/

A grid file (`dear.tables.grid`; a one-off sweep is a table with ``sweep:``) says which runs each table
needs; the unfinished ones go to Hydra's launcher as one multirun, and its tables go to ``<output>/<name>.md``,
``.csv`` and plots. While a launch of the grid is still running (``--no-wait``, or another terminal's), the
same command launches nothing and collates what finished. Folders give one table of the finished runs found
below them: a row is the runs whose settings differ only by seed (how a run ran, e.g. its logger or threads,
aside: `HOW_NOT_WHAT`), named by what differs between rows; its seeds are counted once each, and a row whose
runs ran differently (`HOW_NOT_WHAT`, or other versions of the code) says so on stderr. Either way
`dear.tables.reproduce` renders it and prints the markdown; ``--out`` writes that markdown to a file too,
whole or not at all. Errors are one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from dear.errors import DearError
from dear.files import write_text_atomic
from dear.tables import grid as grids
from dear.tables.grid import Table
from dear.tables.reproduce import Row, markdown, run_values, write

# Settings that say how a run ran, not what it is (a trailing dot: the whole section): runs that differ
# only in these and the seed are one row, as a grid's `launch:` is no part of a run's identity.
HOW_NOT_WHAT = ("seed", "cache_dir", "ckpt_path", "logger.", "checkpoint.", "trainer.threads")
NAME = ".name"  # a preset's name (model.name, method.name, ...): rows and tables are named by these
ORDER = {f"{p}{NAME}": i for i, p in enumerate(("model", "teacher", "method", "data", "benchmark"))}  # named so


def load_runs(roots: list[Path]) -> list[tuple[Path, dict]]:
    """Every finished run (a complete metrics.json) below the folders, as (its file, its record)."""
    runs = []
    for root in roots:
        for path in sorted(root.rglob("metrics.json")):
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise DearError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); fix or delete it") from e
            if record.get("status") == "complete" and "benchmarks" in record:
                runs.append((path, record))
    return runs


def settings(run: dict) -> dict[str, str]:
    """A run's identity: its flattened settings (``method.name`` -> ``dear``) less `HOW_NOT_WHAT`, and the
    benchmark its numbers are of."""
    flat = _flatten(run.get("config") or {})
    flat.setdefault(f"benchmark{NAME}", next(iter(run["benchmarks"])))
    return {k: v for k, v in flat.items() if not _how(k)}


def _how(key: str) -> bool:
    """Whether a flattened setting says how a run ran, not what it is (`HOW_NOT_WHAT`)."""
    return any(key == h or (h.endswith(".") and key.startswith(h)) for h in HOW_NOT_WHAT)


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return out


def _differs(key: str, group: list[dict[str, str]]) -> bool:
    return len({s.get(key) for s in group}) > 1


def _differing(group: list[dict[str, str]]) -> tuple[str, ...]:
    """The keys whose values differ between the dicts (a key some lack differs too)."""
    return tuple(k for k in sorted(set().union(*group)) if _differs(k, group))


def labels(identities: list[dict[str, str]]) -> tuple[str, list[tuple[str, ...]]]:
    """What all rows share (the table's name) and, per row, what tells it apart from the others.

    A row shows its method and every preset name that differs between rows (``benchmark=math500``), then
    any other setting that differs between rows of the same presets (``method.decision_ratio=0.1``)."""
    keys = sorted(set().union(*identities))
    names = sorted((k for k in keys if k.endswith(NAME)), key=lambda k: (ORDER.get(k, len(ORDER)), k))
    same_presets = defaultdict(list)
    for s in identities:
        same_presets[tuple(s.get(k) for k in names)].append(s)
    shown = [k for k in names if k == f"method{NAME}" or _differs(k, identities)]
    rows = []
    for s in identities:
        group = same_presets[tuple(s.get(k) for k in names)]
        parts = [f"{k.removesuffix(NAME)}={s.get(k)}" for k in shown]
        parts += [f"{k}={s.get(k)}" for k in keys if k not in names and _differs(k, group)]
        rows.append(tuple(parts))
    shared = [f"{k.removesuffix(NAME)}={identities[0].get(k)}" for k in names if k not in shown]
    return ", ".join(shared) or "runs", rows


def how_it_ran(run: dict) -> dict[str, str]:
    """What a run's record says about how it ran, seed aside: its `HOW_NOT_WHAT` settings and the versions (and
    git commit, where recorded) of the code that ran it."""
    flat = _flatten(run.get("config") or {})
    ran = {k: v for k, v in flat.items() if _how(k) and k != "seed"}
    return ran | _flatten({k: run[k] for k in ("versions", "git") if isinstance(run.get(k), dict)})


def table(runs: list[tuple[Path, dict]]) -> tuple[Table, list[Row], list[Path]]:
    """One table of the runs: a row per identity, one run per seed pooled, rows in name order. Also returns the runs
    left out because they repeat the identity and seed of a run found before them. A row whose runs ran differently
    (`how_it_ran`) names what differs in its ``ran_differently``."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    ran: dict[tuple, list[dict]] = defaultdict(list)
    repeats = []
    for path, run in runs:
        key = tuple(sorted(settings(run).items()))
        seed = run.get("seed", (run.get("config") or {}).get("seed", 0))
        if seed in groups[key]:
            repeats.append(path)
        else:
            groups[key][seed] = run_values(run)
            ran[key].append(how_it_ran(run))
    keys = list(groups)
    name, row_labels = labels([dict(k) for k in keys])
    rows = [
        Row(", ".join(label), label, groups[k], None, {}, ran_differently=_differing(ran[k]))
        for label, k in zip(row_labels, keys)
    ]
    rows.sort(key=lambda r: r.name)
    seeds = tuple(sorted({s for r in rows for s in r.by_seed}))
    return Table(name, {r.name: r.overrides for r in rows}, seeds, {}, None), rows, repeats


def from_folders(roots: list[Path]) -> str:
    """The markdown table of the finished runs below ``roots``."""
    missing = [str(r) for r in roots if not r.is_dir()]
    if [m for m in missing if "=" in m]:
        raise DearError(f"no folder {', '.join(missing)} (overrides are only taken with --run)")
    if missing:
        raise DearError(f"no folder {', '.join(missing)}; give the folders that hold the runs")
    runs = load_runs(roots)
    if not runs:
        raise DearError(f"no finished runs (metrics.json) under {', '.join(map(str, roots))}")
    t, rows, repeats = table(runs)
    if repeats:
        print(
            f"dear-table: {len(repeats)} run(s) repeat the settings and seed of a run found before them and are "
            f"left out: {', '.join(map(str, repeats))}",
            file=sys.stderr,
        )
    for r in rows:
        if r.ran_differently:
            print(
                f"dear-table: warning: row {r.name} pools runs that ran differently besides the seed "
                f"({', '.join(r.ran_differently)} differ); give the folders of one kind of run to keep them apart",
                file=sys.stderr,
            )
    return markdown(f"finished runs under {', '.join(map(str, roots))}", [(t, rows)])


def from_grid(name: str, overrides: list[str], dry_run: bool, wait: bool = True) -> tuple[str | None, list[str]]:
    """Run what the grid lacks and write its tables: (their markdown, the rows whose runs failed). A dry run lists
    the grid's runs instead, and runs and writes nothing (no markdown); so does ``wait=False`` when it launches,
    leaving the launch running. While a launch of the grid runs, nothing is launched and what finished is collated."""
    grid_file = grids.find(name)
    stray = [o for o in overrides if "=" not in o and not o.startswith("~")]
    if stray:
        raise DearError(f"--run takes overrides (key=value) for the grid's runs, not {' '.join(stray)}")
    g = grids.read(grid_file, overrides)
    runs, todo = g.runs(), grids.pending(g)
    if dry_run:
        for run in runs:
            state = "done" if grids.finished(g.run_dir(run)) else "todo"
            print(f"{state}  {g.run_dir(run)}  dear-train {shlex.join(run.command_overrides(g.overrides))}")
        print(f"{len(runs)} runs, {len(todo)} to run; launched with: {' '.join(g.launch) or 'the basic launcher'}")
        return None, []
    launched = _launch(g, len(runs), todo, wait)
    if launched is None:
        return None, []
    failed = list(dict.fromkeys(r.row for r in launched if not grids.finished(g.run_dir(r))))
    text, files = write(g)
    print("wrote " + ", ".join(map(str, files)), file=sys.stderr)
    return text, failed


def _launch(g: grids.Grid, total: int, todo: list[grids.Run], wait: bool) -> list[grids.Run] | None:
    """Launch the grid's unfinished runs unless a launch of the grid is still running: the runs launched and waited
    for (none while another launch runs), or None for a launch left running (``wait=False``)."""
    running = grids.in_flight(g)
    if running:
        busy = sum(str(g.run_dir(r)) in running["runs"] for r in todo)
        waiting = f"; {len(todo) - busy} other(s) wait for it to end" if busy < len(todo) else ""
        print(
            f"{busy} run(s) still in flight (launcher pid {running['pid']}, log: {running['log'] or 'its terminal'})"
            f"{waiting}; launching nothing, collating the {total - len(todo)} finished",
            file=sys.stderr,
        )
        return []
    print(f"{total} runs, {total - len(todo)} finished, {len(todo)} to run", file=sys.stderr)
    if not todo:
        return []
    record = grids.launch(g, todo, wait)
    if wait:
        return todo
    print(
        f"launched {len(todo)} run(s) in the background (pid {record['pid']}); log: {record['log']}; "
        f"collate later with the same command",
        file=sys.stderr,
    )
    return None


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="dear-table", description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("roots", nargs="*", help="folders searched for metrics.json (default: outputs)")
    packaged = ", ".join(grids.packaged_grids())
    parser.add_argument(
        "--run", help=f"a grid: a packaged one's name ({packaged}) or a grid file; run what it lacks, write its tables"
    )
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--dry-run", action="store_true", help="with --run: list the grid's runs, run nothing")
    parser.add_argument(
        "--no-wait", action="store_true", help="with --run: launch in the background; the same command collates later"
    )
    args, extra = parser.parse_known_args(argv)
    try:
        if extra:  # flags argparse does not know (an override is key=value, not a flag)
            raise DearError(f"unknown arguments {' '.join(extra)} (overrides are key=value, and only taken with --run)")
        if args.no_wait and not args.run:
            raise DearError("--no-wait launches a grid's runs: give the grid, e.g. dear-table --run toy --no-wait")
        if args.run:  # positionals after a grid file are overrides of its runs
            text, failed = from_grid(args.run, args.roots, args.dry_run, wait=not args.no_wait)
        else:
            text, failed = from_folders([Path(r) for r in args.roots] or [Path("outputs")]), []
        if text is not None:
            print(text)
            if args.out:
                write_text_atomic(args.out, text + "\n")  # a table is complete or absent, never half-written
        if failed:
            raise DearError(
                f"runs of {', '.join(failed)} did not finish (the tables show what did); run the same "
                f"command again to resume them"
            )
    except DearError as e:
        print(f"dear-table: error: {e}", file=sys.stderr)
        sys.exit(2)
