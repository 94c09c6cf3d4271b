"""Grid files (``conf/table/*.yaml``): which runs a table needs, where each lives, and launching the ones
not finished yet. This is dear-table's one grid format; `dear.tables.reproduce` renders what the runs give.

A grid file names the overrides every run shares, how runs are launched, and its tables; a table
has rows (a name and the overrides that make it, or a ``sweep:`` whose every combination is a row) and
seeds::

    name: toy
    output: outputs/tables           # tables: <output>/<name>.md/.csv/*.png; runs: <output>/<name>/runs/
    overrides: [logger=csv]          # part of every run
    launch: [hydra/launcher=joblib]  # how runs are launched, not what they are (not in a run's identity)
    tables:
      main:
        seeds: 20                    # 0 … 19 (or a list)
        baseline: opd                # differences are paired by seed against this row (or a mapping row: baseline)
        rows: {opd: [method=opd], dear: [method=dear]}
      decision_ratio:
        seeds: 10
        overrides: [method=dear]     # prefix of the swept rows
        sweep: {method.decision_ratio: [0.1, 0.3]}   # rows "method.decision_ratio=0.1", …
        curve: method.decision_ratio # plotted as a sensitivity curve against this key

A one-off sweep is a table too: ``tables: {sweep: {seeds: 2, sweep: {method: [opd, dear]}}}`` (a
``sweep:`` at the top of the file is refused with that hint).

A run is identified by its overrides (the shared ones and its row's, seed aside): it lives in
``runs/<slug>/seed_<s>``, so two tables that need the same run share it, and a run whose directory
holds a finished ``metrics.json`` is never run again. An interrupted run resumes from its own
``checkpoints/last.ckpt`` (dear/train.py), so re-running the grid resumes the reproduction.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from dear.errors import DearError


@dataclass(frozen=True)
class Run:
    row: str  # the row's name in its table
    overrides: tuple[str, ...]  # the row's overrides (shared ones excluded), seed excluded
    seed: int
    slug: str  # folder of the row's runs under runs/

    def command_overrides(self, shared: list[str]) -> list[str]:
        return [*shared, *self.overrides, f"seed={self.seed}"]


@dataclass(frozen=True)
class Table:
    name: str
    rows: dict[str, tuple[str, ...]]  # row name -> overrides, in display order
    seeds: tuple[int, ...]
    baseline: dict[str, str]  # row -> the row it is paired against
    curve: str | None  # the override key a sensitivity curve is plotted against


@dataclass(frozen=True)
class Grid:
    name: str
    output: Path
    overrides: list[str]
    launch: list[str]
    tables: list[Table]

    @property
    def runs_dir(self) -> Path:
        return self.output / self.name / "runs"

    def run_dir(self, run: Run) -> Path:
        return self.runs_dir / run.slug / f"seed_{run.seed}"

    def runs(self, table: Table | None = None) -> list[Run]:
        """Every run of one table (or of all, each once), in table and row order."""
        seen, out = set(), []
        for t in [table] if table else self.tables:
            for row, overrides in t.rows.items():
                for seed in t.seeds:
                    run = Run(row, overrides, seed, slug(self.overrides, overrides))
                    if (run.slug, seed) not in seen or table:
                        seen.add((run.slug, seed))
                        out.append(run)
        return out


def slug(shared: list[str], overrides: tuple[str, ...]) -> str:
    """A readable, filesystem-safe folder name for a row, unique to its overrides and the shared ones."""
    readable = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", ",".join(overrides))[:80] or "defaults"
    digest = hashlib.sha1(json.dumps([list(shared), list(overrides)]).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def _fail(grid_file: Path, message: str) -> DearError:
    return DearError(f"{grid_file}: {message} (see conf/table/toy.yaml)")


def _str_list(grid_file: Path, where: str, value) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float, bool)) for v in value):
        raise _fail(grid_file, f"{where} must be a list of overrides like method=dear")
    return [str(v) for v in value]


def _table(grid_file: Path, name: str, spec) -> Table:
    if not isinstance(spec, dict):
        raise _fail(grid_file, f"tables.{name} must be a mapping with rows or sweep, and seeds")
    unknown = set(spec) - {"rows", "sweep", "overrides", "seeds", "baseline", "curve"}
    if unknown:
        raise _fail(grid_file, f"tables.{name} has unknown keys {', '.join(sorted(unknown))}")
    seeds = spec.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail(grid_file, f"tables.{name}.seeds must be a positive count or a list of seeds")
    rows: dict[str, tuple[str, ...]] = {}
    for row, overrides in (spec.get("rows") or {}).items():
        rows[str(row)] = tuple(_str_list(grid_file, f"tables.{name}.rows.{row}", overrides))
    prefix = _str_list(grid_file, f"tables.{name}.overrides", spec.get("overrides"))
    sweep = spec.get("sweep") or {}
    if not isinstance(sweep, dict) or not all(isinstance(v, list) and v for v in sweep.values()):
        raise _fail(grid_file, f"tables.{name}.sweep must map keys to lists of values")
    for combo in itertools.product(*sweep.values()) if sweep else ():
        pairs = [f"{k}={v}" for k, v in zip(sweep, combo)]
        rows[",".join(pairs)] = tuple(prefix + pairs)
    if not rows:
        raise _fail(grid_file, f"tables.{name} has no rows")
    base = spec.get("baseline")
    if isinstance(base, str):
        base = {row: base for row in rows if row != base}
    base = base or {}
    if not isinstance(base, dict) or any(b not in rows or r not in rows for r, b in base.items()):
        raise _fail(grid_file, f"tables.{name}.baseline must name a row of the table (or map rows to rows)")
    curve = spec.get("curve")
    if curve is not None and curve not in sweep:
        raise _fail(grid_file, f"tables.{name}.curve must be one of its sweep keys")
    return Table(str(name), rows, tuple(seeds), dict(base), curve)


GRID_KEYS = {"name", "output", "overrides", "launch", "tables"}


def read(grid_file: Path, overrides: list[str] = ()) -> Grid:
    """A grid file as a `Grid`; ``overrides`` (the command line's) join the shared ones."""
    try:
        spec = yaml.safe_load(grid_file.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise DearError(f"{grid_file} is not valid YAML{f' (line {where.line + 1})' if where else ''}") from e
    if isinstance(spec, dict) and "sweep" in spec:
        raise _fail(grid_file, "a sweep is a table: move sweep: (and its overrides) under tables: <name>:")
    if not isinstance(spec, dict) or not isinstance(spec.get("tables"), dict) or not spec["tables"]:
        raise _fail(grid_file, "a grid must map tables to their rows and seeds")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise _fail(grid_file, f"unknown keys {', '.join(sorted(unknown))} (a grid has {', '.join(sorted(GRID_KEYS))})")
    tables = [_table(grid_file, name, t) for name, t in spec["tables"].items()]
    return Grid(
        name=str(spec.get("name", grid_file.stem)),
        output=Path(spec.get("output", "outputs/tables")),
        overrides=_str_list(grid_file, "overrides", spec.get("overrides")) + list(overrides),
        launch=_str_list(grid_file, "launch", spec.get("launch")),
        tables=tables,
    )


def finished(run_dir: Path) -> bool:
    """Whether a run directory holds a finished run (a complete metrics.json)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def pending(grid: Grid) -> list[Run]:
    return [run for run in grid.runs() if not finished(grid.run_dir(run))]


def launch(grid: Grid, runs: list[Run]) -> list[str]:
    """Run the given runs: one ``dear-train -m`` per row over its seeds (jobs run in parallel under a
    parallel launcher such as ``hydra/launcher=joblib``). Returns the rows whose sweep failed."""
    by_row: dict[str, list[Run]] = {}
    for run in runs:
        by_row.setdefault(run.slug, []).append(run)
    failed = []
    for row_slug, rs in by_row.items():
        seeds = ",".join(str(r.seed) for r in rs)
        cmd = [
            str(Path(sys.executable).parent / "dear-train"),
            "-m",
            *grid.overrides,
            *rs[0].overrides,
            f"seed={seeds}",
            *grid.launch,
            f"++logger.group={grid.name}",  # one W&B group per grid
            f"hydra.sweep.dir='{grid.runs_dir / row_slug}'",
            "hydra.sweep.subdir=seed_${seed}",
        ]  # quoted: = ,
        print(f"running {len(rs)} run(s) of {rs[0].row}:", " ".join(cmd), file=sys.stderr, flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(rs[0].row)
    return failed
