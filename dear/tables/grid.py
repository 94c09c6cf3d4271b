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
``sweep:`` at the top of the file is refused with that hint). The grids shipped in the package
(dear/conf/table/) are found by name from any folder: ``dear-table --run toy``.

A run is identified by its overrides (the shared ones and its row's, seed aside): it lives in
``runs/<slug>/seed_<s>``, so two tables that need the same run share it, and a run whose directory
holds a finished ``metrics.json`` is never run again. An interrupted run resumes from its own
``checkpoints/last.ckpt`` (dear/train.py), so re-running the grid resumes the reproduction. A row is one
run per seed: its overrides sweep nothing, leave the seed to ``seeds:``, and set no key the shared
overrides set (the shared ones would win).

Launching: every unfinished run goes to Hydra's launcher at once, as one ``dear-train -m``. Its rows differ in
more than one key, which a Cartesian sweep cannot say, so each run becomes a generated config,
``runs/.launch/grid_run/<key>.yaml`` (its row's presets as ``defaults:`` overrides, its settings, its seed and
its folder as ``hydra.sweep.subdir``), and the multirun sweeps over them::

    dear-train -m hydra.searchpath=[file://<runs>/.launch] +grid_run=<key>,<key>,... <shared overrides>
        <launch> ++logger.group=<grid name> hydra.sweep.dir=<runs>

(`launch_command`). dear-train's preflight composes and checks each of its runs (the command line's
``hydra.searchpath`` included) before Hydra starts any. The launcher's pid is kept in ``runs/.launch/launcher.json``
while it runs: a second ``dear-table --run`` of the grid launches nothing then, and collates what finished.

``--no-wait`` starts that launcher in its own session, its output in ``runs/.launch/launch-<time>.log``, and
returns at once; the same command, later, collates what finished. With a cluster launcher
(``launch: [hydra/launcher=slurm]``) this is the way to run a grid: the multirun submits the jobs and waits
for them on the login node, where it outlives the shell that started it, and a requeued job finds its
generated config again (a run's key names its identity, so relaunching rewrites the same files).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

import dear
from dear.config.presets import CONF_DIR, run_name
from dear.errors import DearError
from dear.files import write_text_atomic, writing

PACKAGED = Path(dear.__file__).parent / "conf" / "table"  # the grids shipped with dear, found by name
LAUNCH = ".launch"  # under runs/: the generated grid_run group, the launcher's record and its logs


@dataclass(frozen=True)
class Run:
    row: str  # the row's name in its table
    overrides: tuple[str, ...]  # the row's overrides (shared ones excluded), seed excluded
    seed: int
    slug: str  # folder of the row's runs under runs/

    def command_overrides(self, shared: list[str]) -> list[str]:
        return [*shared, *self.overrides, f"seed={self.seed}"]

    @property
    def key(self) -> str:
        """The run's option in the generated ``grid_run`` group: its identity (the slug's digest) and seed."""
        return f"{self.slug.rsplit('-', 1)[-1]}_seed{self.seed}"


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
        """Every run of one table (or of all, each once), table by table, seed by seed, in row order: a grid
        stopped part way has whole seeds, every row's run of a seed, to pair."""
        seen, out = set(), []
        for t in [table] if table else self.tables:
            for seed in t.seeds:
                for row, overrides in t.rows.items():
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


def packaged_grids() -> list[str]:
    """The names of the grids shipped in dear/conf/table/."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))


def find(name: str) -> Path:
    """A grid file: the path given, or the packaged grid of that name (``toy`` -> dear/conf/table/toy.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = packaged_grids()
    if name in packaged:
        return PACKAGED / f"{name}.yaml"
    if "/" in name or name.endswith((".yaml", ".yml")):
        raise DearError(f"no grid file {name}; give a grid file or a packaged grid: {', '.join(packaged)}")
    raise DearError(f"no packaged grid {name}; choose from: {', '.join(packaged)} (or give a grid file's path)")


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
    grid = Grid(
        name=str(spec.get("name", grid_file.stem)),
        output=Path(spec.get("output", "outputs/tables")),
        overrides=_str_list(grid_file, "overrides", spec.get("overrides")) + list(overrides),
        launch=_str_list(grid_file, "launch", spec.get("launch")),
        tables=tables,
    )
    _check_overrides(grid_file, grid)
    return grid


def _check_overrides(grid_file: Path, grid: Grid) -> None:
    """Each run of the grid is one run: no override sweeps or sets the seed, and a row's overrides are settings a
    config file can hold (its generated ``grid_run`` config) that the shared overrides leave alone."""
    shared = [_parsed(grid_file, "overrides", o) for o in grid.overrides]
    for o in shared:
        _one_run(grid_file, "overrides", o)
    for table in grid.tables:
        for row, overrides in table.rows.items():
            where = f"tables.{table.name}.rows.{row}"
            for o in (_parsed(grid_file, where, text) for text in overrides):
                _one_run(grid_file, where, o)
                key = o.key_or_group
                if o.is_delete() or key == "hydra" or key.startswith(("hydra.", "hydra/")):
                    raise _fail(grid_file, f"{where}: {o.input_line} cannot differ between runs (put it in launch:)")
                if key in {s.key_or_group for s in shared}:
                    raise _fail(grid_file, f"{where} sets {key}, which the shared overrides set for every run")


def _parse(override: str):
    """One override as Hydra's parser reads it (a ``hydra.core.override_parser.types.Override``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override)


def _parsed(grid_file: Path, where: str, override: str):
    """`_parse`, its refusal one line that names where the grid file says it."""
    from hydra.errors import HydraException

    try:
        return _parse(override)
    except HydraException as e:
        raise _fail(grid_file, f"{where}: {override} is not an override Hydra reads ({str(e).splitlines()[0]})") from e


def _one_run(grid_file: Path, where: str, o) -> None:
    if o.is_sweep_override():
        raise _fail(grid_file, f"{where}: {o.input_line} sweeps; a table's rows (or its sweep:) say each run")
    if o.key_or_group == "seed":
        raise _fail(grid_file, f"{where}: {o.input_line} sets the seed; a table's seeds: says them")


def finished(run_dir: Path) -> bool:
    """Whether a run directory holds a finished run (a complete metrics.json)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def pending(grid: Grid) -> list[Run]:
    return [run for run in grid.runs() if not finished(grid.run_dir(run))]


# --- launching ------------------------------------------------------------------------------------------------


def _dear_train() -> str:
    return str(Path(sys.executable).parent / "dear-train")


def _quoted(value: str) -> str:
    """A string as Hydra's override grammar reads it: quoted where it holds more than letters, digits and ``_./:-``
    (a row's folder holds = and ,)."""
    if re.fullmatch(r"[\w./:-]+", value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def run_config(grid: Grid, run: Run) -> str:
    """The generated ``grid_run/<key>.yaml`` of one run: its row's presets as ``defaults:`` overrides (and the
    setup a real student needs, as dear-train picks it), its row's settings, its seed and its folder."""
    defaults, values = [], {}
    for o in map(_parse, run.overrides):  # read() has checked them
        if "." not in o.key_or_group and (CONF_DIR / o.key_or_group).is_dir():  # a preset: model=qwen-1.5b
            group = o.key_or_group + (f"@{o.package}" if o.package else "")
            defaults.append({f"{'' if o.is_add() else 'override '}/{group}": o.value()})
        else:
            *parents, leaf = o.key_or_group.split(".")
            node = values
            for parent in parents:
                node = node.setdefault(parent, {})
            node[leaf] = o.value()
    setup = _setup((*grid.overrides, *run.overrides))
    if setup:
        defaults.insert(0, {"override /setup": setup})
    config = {"defaults": defaults, **values, "seed": run.seed}
    config.setdefault("logger", {})["run_name"] = wandb_name(run)  # read by logger=wandb only
    config["hydra"] = {"sweep": {"subdir": f"{run.slug}/seed_{run.seed}"}}  # the run's folder: Grid.run_dir
    note = f"# {grid.name}, row {run.row}: {shlex.join(run.command_overrides([]))} (written by dear-table)\n"
    return "# @package _global_\n" + note + yaml.safe_dump(config, sort_keys=False)


def wandb_name(run: Run) -> str:
    """The run's W&B name after its row's settings (`dear.config.presets.run_name`): ``dear-qwen-1.5b-14b-opd-s0``."""
    return run_name([(o.key_or_group, str(o.value())) for o in map(_parse, run.overrides)], run.seed)


@functools.cache
def _setup(overrides: tuple[str, ...]) -> str | None:
    """The setup dear-train would add to a run with these overrides (`dear.preflight.command.choose_setup`)."""
    from dear.preflight.command import choose_setup

    try:
        return choose_setup(list(overrides))
    except Exception:  # noqa: BLE001  (a bad override: dear-train's preflight reports it in its own words)
        return None


def launch_command(grid: Grid, runs: list[Run]) -> list[str]:
    """The one ``dear-train -m`` that runs ``runs``: a sweep over their generated ``grid_run`` configs, written here."""
    group = grid.runs_dir / LAUNCH / "grid_run"
    for run in runs:
        write_text_atomic(group / f"{run.key}.yaml", run_config(grid, run))
    return [
        _dear_train(),
        "-m",
        f"hydra.searchpath=[{_quoted('file://' + str(group.parent.resolve()))}]",
        f"+grid_run={','.join(run.key for run in runs)}",
        *grid.overrides,
        *grid.launch,
        f"++logger.group={grid.name}",  # one W&B group per grid
        f"hydra.sweep.dir={_quoted(str(grid.runs_dir))}",
    ]


def launch(grid: Grid, runs: list[Run], wait: bool = True) -> dict:
    """Hand ``runs`` to the launcher as one multirun (`launch_command`), recorded in ``runs/.launch/launcher.json``
    while it runs; wait for it, or
    (``wait=False``) leave it running in its own session with its output in a log. Returns its record."""
    cmd = launch_command(grid, runs)
    print(f"running {len(runs)} run(s):", shlex.join(cmd), file=sys.stderr, flush=True)
    folder = grid.runs_dir / LAUNCH
    with writing(folder):  # where the record goes: writable before anything starts
        folder.mkdir(parents=True, exist_ok=True)
    log = None if wait else folder / f"launch-{time.strftime('%Y%m%d-%H%M%S')}.log"
    proc = subprocess.Popen(cmd) if wait else _detached(cmd, log)
    record = {
        "pid": proc.pid,
        "started": _started(proc.pid),
        "log": str(log) if log else None,
        "runs": [str(grid.run_dir(run)) for run in runs],
        "command": cmd,
    }
    write_text_atomic(folder / "launcher.json", json.dumps(record, indent=1) + "\n")
    if wait:
        try:
            proc.wait()
        finally:
            if proc.poll() is not None:
                (folder / "launcher.json").unlink(missing_ok=True)
    return record


def _detached(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` started in a session of its own (a closed terminal does not stop it), its output in ``log``."""
    with writing(log):
        out = log.open("ab")
    with out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def in_flight(grid: Grid) -> dict | None:
    """The record of the grid's launcher while its process is alive (`launch`), else None."""
    try:
        record = json.loads((grid.runs_dir / LAUNCH / "launcher.json").read_text())
        pid = int(record["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, and someone else's: a pid reused by another user's process shows in its start time
    started = _started(pid)
    return record if started == record.get("started") and started != "zombie" else None


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), which a later process given the same pid
    does not share; "zombie" for one that ended unreaped; None where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)": state is field 3, starttime field 22
    return "zombie" if fields[0] in ("Z", "X") else fields[19]
