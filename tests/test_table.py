"""dear-table (dear/tables/): one grid format, one renderer. Collation of a grid from fabricated run directories
with a hand-computed interval, of the finished runs found under folders (rows: what differs besides the seed),
reuse of finished runs, every one-line error, the paper's grid as a dry run, and (slow) a real joblib sweep
that a second call reuses. The launch itself (one multirun, --no-wait, a launch in flight) is tests/test_grid_launch.py;
tables of several benchmarks and what a row pools, tests/test_grid_tables.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dear.tables import grid as grids
from dear.tables.collate import main
from dear.tables.reproduce import cell, write
from dear.tables.stats import paired, t_quantile

from conftest import ROOT, TINY_RUN

GRID = {
    "name": "fab",
    "overrides": ["logger=csv"],
    "launch": ["hydra/launcher=joblib"],
    "tables": {
        "main": {
            "seeds": 3,
            "baseline": "opd",
            "rows": {"opd": ["method=opd"], "dear": ["method=dear"], "random": ["method=random"]},
        },
        "ratio": {
            "seeds": [0, 1],
            "baseline": "opd",
            "rows": {"opd": ["method=opd"]},
            "overrides": ["method=dear"],
            "sweep": {"method.decision_ratio": [0.1, 0.3]},
            "curve": "method.decision_ratio",
        },
    },
}
ACC = {"opd": [0.5, 0.6, 0.7], "dear": [0.6, 0.8, 0.9], "random": [0.4, 0.5, None]}  # None: not finished


def make_grid(tmp_path, spec=GRID) -> grids.Grid:
    path = tmp_path / "fab.yaml"
    path.write_text(yaml.safe_dump({**spec, "output": str(tmp_path / "tables")}, sort_keys=False))
    return grids.read(path)


def fabricate(grid: grids.Grid, run: grids.Run, accuracy: float) -> None:
    run_dir = grid.run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    curve = [
        {"step": 0, "accuracy": 0.3},
        {"step": 60, "accuracy": (0.3 + accuracy) / 2},
        {"step": 120, "accuracy": accuracy},
    ]
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "status": "complete",
                "seed": run.seed,
                "benchmarks": {"toy": {"accuracy_before": 0.3, "accuracy_after": accuracy, "gain": accuracy - 0.3}},
                "accuracy_auc": accuracy - 0.1,
                "heldout_reverse_kl": {"after": 1.0 - accuracy},
                "grad_mass_coverage": 0.75,
                "kept_share": 0.36,
                "curve": curve,
            }
        )
    )


def fabricate_all(grid):
    for run in grid.runs():
        acc = ACC.get(run.row, [0.55, 0.65, 0.75])[run.seed]
        if acc is not None:
            fabricate(grid, run, acc)
        else:  # an interrupted run: a checkpoint, no metrics.json
            (grid.run_dir(run) / "checkpoints").mkdir(parents=True)
            (grid.run_dir(run) / "checkpoints" / "last.ckpt").write_text("")


class Launcher:
    """``subprocess.Popen`` as dear-table's launch sees it: each command (and how it was started) is kept in
    ``calls``, and ``runs`` (a function: the runs it finishes) happens; its process has ended, with ``returncode``,
    by the time it is waited for."""

    def __init__(self, returncode: int = 0):
        self.returncode, self.calls, self.runs = returncode, [], lambda: None

    def __call__(self, cmd, **kwargs):
        self.calls.append((cmd, kwargs))
        self.runs()
        return self

    pid = 2**22 + 1  # above Linux's pid_max: no process has it, so the launcher is never found alive

    def wait(self) -> int:
        return self.returncode

    def poll(self) -> int:
        return self.returncode


@pytest.fixture
def launcher(monkeypatch) -> Launcher:
    """The launch (one multirun), its process faked."""
    fake = Launcher()
    monkeypatch.setattr(subprocess, "Popen", fake)
    return fake


def no_launch(monkeypatch, why: str) -> None:
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail(why))


def test_t_quantiles_and_a_paired_interval_by_hand():
    for df, ref in [(1, 12.706205), (2, 4.302653), (9, 2.262157), (19, 2.093024)]:
        assert t_quantile(0.975, df) == pytest.approx(ref, abs=1e-6)
    d = paired({0: 0.6, 1: 0.8, 2: 0.9, 3: 1.0}, {0: 0.5, 1: 0.6, 2: 0.7})  # seed 3 has no partner
    # differences 0.1, 0.2, 0.2: mean 1/6, sd √(1/300), half-width 4.302653·sd/√3
    assert d.n == 3 and d.mean == pytest.approx(1 / 6) and d.sd == pytest.approx(math.sqrt(1 / 300))
    assert (d.low, d.high) == pytest.approx((1 / 6 - 0.1434218, 1 / 6 + 0.1434218), abs=1e-6)
    assert d.excludes_zero


def test_collation_from_fabricated_run_directories(tmp_path):
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    text, files = write(grid)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    dear = lines["dear"].split(" | ")
    assert dear[1] == "3/3" and dear[2] == "0.300 ± 0.000" and dear[3] == "0.767 ± 0.153" and dear[4] == "0.467 ± 0.153"
    assert dear[7] == "0.750 ± 0.000" and dear[8] == "0.360 ± 0.000"
    assert dear[9] == "+0.167 [+0.023, +0.310]" and dear[-1].rstrip(" |") == "yes"
    rand = lines["random"].split(" | ")  # two finished seeds paired with opd's: -0.1, -0.1 (sd 0)
    assert rand[1] == "2/3" and rand[9] == "-0.100 [-0.100, -0.100]"
    assert "| method.decision_ratio=0.1 | 2/2 |" in text
    rows = list(csv_rows(grid.output / "fab.csv"))
    (d,) = [r for r in rows if r["table"] == "main" and r["row"] == "dear"]
    assert float(d["diff_accuracy_after_low"]) == pytest.approx(1 / 6 - 0.1434218, abs=1e-5)
    assert d["beats"] == "yes" and d["overrides"] == "method=dear" and d["baseline"] == "opd"
    names = {f.name for f in files}
    assert {"fab.md", "fab.csv", "fab-main-accuracy.png", "fab-ratio-sensitivity.png"} <= names
    assert all(f.stat().st_size > 0 for f in files)


def csv_rows(path: Path):
    import csv

    with path.open() as f:
        yield from csv.DictReader(f)


def test_finished_runs_are_reused_and_interrupted_ones_resumed(tmp_path, launcher, capsys):
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    # shared runs are run once: opd appears in both tables, 3 + 2 seeds -> seeds 0, 1, 2
    assert len(grid.runs()) == 3 * 3 + 2 * 2
    todo = grids.pending(grid)
    assert [(r.row, r.seed) for r in todo] == [("random", 2)]  # the interrupted one only
    launcher.runs = lambda: fabricate(grid, todo[0], 0.6)
    main(["--run", str(tmp_path / "fab.yaml")])
    ((cmd, _),) = launcher.calls  # one dear-train -m for the one unfinished run, into its own directory (it resumes)
    assert cmd[1] == "-m" and f"+grid_run={todo[0].key}" in cmd and "hydra/launcher=joblib" in cmd
    assert "++logger.group=fab" in cmd and f"hydra.sweep.dir={grid.runs_dir}" in cmd
    config = yaml.safe_load((grid.runs_dir / ".launch" / "grid_run" / f"{todo[0].key}.yaml").read_text())
    assert config["defaults"] == [{"override /method": "random"}] and config["seed"] == 2
    assert grid.runs_dir / config["hydra"]["sweep"]["subdir"] == grid.run_dir(todo[0])
    assert "| random | 3/3 |" in capsys.readouterr().out
    assert not (grid.runs_dir / ".launch" / "launcher.json").exists()  # the launcher ended: no launch in flight
    launcher.calls.clear()
    main(["--run", str(tmp_path / "fab.yaml")])
    assert launcher.calls == []  # everything finished: nothing runs again
    # a changed shared override is a different run
    assert grids.read(tmp_path / "fab.yaml", ["steps=5"]).runs()[0].slug != todo[0].slug.replace("random", "opd")
    assert not set(r.slug for r in grids.read(tmp_path / "fab.yaml", ["steps=5"]).runs()) & set(
        r.slug for r in grid.runs()
    )


def test_wandb_runs_are_grouped_by_grid_and_tagged_with_method_and_pair(tmp_path):
    from dear.preflight.settings import train_config
    from dear.training.loggers import build_loggers

    from conftest import compose

    logger = build_loggers(train_config(compose(["method=opd", "++logger.group=toy"])), tmp_path)
    init = logger._wandb_init
    assert init["group"] == "toy" and init["tags"] == ["pair=toy-student<-toy-teacher", "method=opd", "seed=0"]


def table_error(argv: list[str], capsys) -> str:
    """dear-table's refusal: exit 2 and one line on stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dear-table: error: "), err
    return err


ROWS = "tables: {t: {rows: {a: [x=1]}}}\n"
BAD_GRIDS = [
    ("tables: [a\n", "is not valid YAML (line 2)"),
    ("- seed=0\n- seed=1\n", "a grid must map tables to their rows and seeds"),
    ("overrides: [logger=csv]\n", "a grid must map tables to their rows and seeds"),
    ("tables: {}\n", "a grid must map tables to their rows and seeds"),
    ("sweep: {method: [opd, dear]}\n", "a sweep is a table: move sweep: (and its overrides) under tables: <name>:"),
    (ROWS + "launchers: []\n", "unknown keys launchers (a grid has launch, name, output, overrides, tables)"),
    (ROWS + "overrides: logger=csv\n", "overrides must be a list of overrides like method=dear"),
    (ROWS + "launch: hydra/launcher=joblib\n", "launch must be a list of overrides"),
    ("tables: {t: [x=1]}\n", "tables.t must be a mapping with rows or sweep, and seeds"),
    ("tables: {t: {rows: {a: [x=1]}, colour: red}}\n", "tables.t has unknown keys colour"),
    ("tables: {t: {rows: {a: [x=1]}, seeds: 0}}\n", "tables.t.seeds must be a positive count or a list of seeds"),
    ("tables: {t: {rows: {a: [x=1]}, seeds: [-1]}}\n", "tables.t.seeds must be a positive count or a list of seeds"),
    ("tables: {t: {rows: {a: x=1}}}\n", "tables.t.rows.a must be a list of overrides"),
    ("tables: {t: {sweep: {method: opd}}}\n", "tables.t.sweep must map keys to lists of values"),
    ("tables: {t: {seeds: 2}}\n", "tables.t has no rows"),
    ("tables: {t: {rows: {a: [x=1]}, baseline: nope}}\n", "tables.t.baseline must name a row of the table"),
    ("tables: {t: {rows: {a: [x=1]}, baseline: {nope: a}}}\n", "tables.t.baseline must name a row of the table"),
    ("tables: {t: {rows: {a: [x=1]}, curve: x}}\n", "tables.t.curve must be one of its sweep keys"),
    # a row is one run per seed, its overrides a config file's settings that the shared ones leave alone
    ("tables: {t: {rows: {a: ['method=opd,dear']}}}\n", "tables.t.rows.a: method=opd,dear sweeps; a table's rows"),
    ("overrides: [seed=3]\n" + ROWS, "overrides: seed=3 sets the seed; a table's seeds: says them"),
    ("tables: {t: {rows: {a: ['~loss']}}}\n", "tables.t.rows.a: ~loss cannot differ between runs (put it in launch:)"),
    ("tables: {t: {rows: {a: [hydra/launcher=joblib]}}}\n", "hydra/launcher=joblib cannot differ between runs"),
    ("overrides: [method=opd]\ntables: {t: {rows: {a: [method=dear]}}}\n", "tables.t.rows.a sets method, which the"),
    ("tables: {t: {rows: {a: ['x=[1']}}}\n", "tables.t.rows.a: x=[1 is not an override Hydra reads"),
]


@pytest.mark.parametrize("text, says", BAD_GRIDS, ids=[s for _, s in BAD_GRIDS])
def test_a_bad_grid_file_is_one_line_before_anything_runs_or_is_written(tmp_path, capsys, monkeypatch, text, says):
    no_launch(monkeypatch, "a bad grid file started runs")
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    for dry in ([], ["--dry-run"]):
        assert says in table_error(["--run", str(grid), *dry, "--out", "t.md"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no outputs/, no t.md


FLAG = "(overrides are key=value, and only taken with --run)"


def test_the_command_lines_dear_table_refuses(tmp_path, capsys, monkeypatch):
    no_launch(monkeypatch, "a refused command started runs")
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "fab.yaml"
    grid.write_text(yaml.safe_dump({**GRID, "output": str(tmp_path / "tables")}))
    (tmp_path / "empty").mkdir()
    cases = [
        (["--run", str(tmp_path / "none.yaml")], f"no grid file {tmp_path / 'none.yaml'}; give a grid file or a "),
        (
            ["--run", "nope"],
            "no packaged grid nope; choose from: builds, paper, smollm2, toy (or give a grid file's path)",
        ),
        (["--run", str(grid), "outputs/"], "--run takes overrides (key=value) for the grid's runs, not outputs/"),
        (["--run", str(grid), "--seed", "1"], f"unknown arguments --seed {FLAG}"),
        (["--run", str(grid), "--dryrun"], f"unknown arguments --dryrun {FLAG}"),
        (["--run", str(grid), "--dry"], f"unknown arguments --dry {FLAG}"),  # no abbreviations: --dry is not --dry-run
        (["--run", str(grid), "--no"], f"unknown arguments --no {FLAG}"),
        ([str(tmp_path), "--no-wait"], "--no-wait launches a grid's runs: give the grid, e.g. dear-table --run toy"),
        ([str(tmp_path), "--seed", "1"], f"unknown arguments --seed 1 {FLAG}"),
        ([str(tmp_path), "seed=1"], "no folder seed=1 (overrides are only taken with --run)"),
        ([str(tmp_path / "nowhere")], f"no folder {tmp_path / 'nowhere'}; give the folders that hold the runs"),
        ([str(tmp_path / "empty")], f"no finished runs (metrics.json) under {tmp_path / 'empty'}"),
    ]
    for argv, says in cases:
        assert table_error(argv, capsys).startswith(f"dear-table: error: {says}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "fab.yaml"]  # nothing written, nothing launched


def test_a_broken_metrics_file_and_an_unwritable_out_are_one_line(tmp_path, capsys):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "metrics.json").write_text(json.dumps(folder_run("dear", 0, 0.5)))
    (tmp_path / "tables").write_text("a file, not a folder")
    err = table_error([str(tmp_path / "runs"), "--out", str(tmp_path / "tables" / "t.md")], capsys)
    assert "cannot write" in err and (tmp_path / "tables").read_text() == "a file, not a folder"
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "metrics.json").write_text('{"status": "comp')
    err = table_error([str(tmp_path / "runs")], capsys)
    assert f"{tmp_path / 'runs' / 'b' / 'metrics.json'} is not valid JSON" in err and "fix or delete it" in err


def test_failed_runs_are_one_line_after_the_tables_are_written(tmp_path, capsys, monkeypatch):
    grid = make_grid(tmp_path)
    fabricate_all(grid)  # random's seed 2 is unfinished, and its run fails
    monkeypatch.setattr(subprocess, "Popen", Launcher(returncode=1))
    out = tmp_path / "t.md"
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path / "fab.yaml"), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()  # the progress of the grid, then one error line
    assert e.value.code == 2 and err[-1] == (
        "dear-table: error: runs of random did not finish (the tables show what did); run the same command again "
        "to resume them"
    )
    assert "| random | 2/3 |" in out.read_text() and (grid.output / "fab.md").read_text() == out.read_text()


def test_overrides_after_the_grid_file_reach_every_run(tmp_path, launcher, capsys):
    grid = make_grid(tmp_path)
    bigger = grids.read(tmp_path / "fab.yaml", ["steps=5", "++eval.every=2"])
    launcher.runs = lambda: [fabricate(bigger, run, 0.5) for run in bigger.runs()]
    main(["--run", str(tmp_path / "fab.yaml"), "steps=5", "++eval.every=2", "--out", str(tmp_path / "t.md")])
    ((cmd, _),) = launcher.calls  # every run of the grid in one multirun: main's 3 rows x 3 seeds, ratio's 2 x 2
    runs = bigger.runs()
    assert len(runs) == 3 * 3 + 2 * 2 and f"+grid_run={','.join(r.key for r in runs)}" in cmd
    assert "steps=5" in cmd and "++eval.every=2" in cmd
    assert {r.slug for r in runs}.isdisjoint(r.slug for r in grid.runs())  # other settings, other runs
    assert (tmp_path / "t.md").read_text() == capsys.readouterr().out  # --out holds what was printed


def test_a_one_off_sweep_is_a_table(tmp_path):
    spec = {"tables": {"sweep": {"seeds": 2, "sweep": {"method": ["opd", "dear"], "loss.normalize": ["all"]}}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    g = grids.read(path, ["steps=5"])
    assert [(r.row, r.seed) for r in g.runs()] == [
        ("method=opd,loss.normalize=all", 0),
        ("method=dear,loss.normalize=all", 0),
        ("method=opd,loss.normalize=all", 1),
        ("method=dear,loss.normalize=all", 1),
    ]  # seed by seed
    assert g.runs()[0].command_overrides(g.overrides) == ["steps=5", "method=opd", "loss.normalize=all", "seed=0"]


# --- the finished runs found under folders -------------------------------------------------------


def folder_run(method: str, seed: int, after: float, ratio: float | None = None, threads: int = 1) -> dict:
    """A metrics.json as dear-train writes it, trimmed to what the table reads and what tells runs apart."""
    return {
        "status": "complete",
        "seed": seed,
        "config": {
            "seed": seed,
            "cache_dir": f"/cache/{seed}",
            "model": {"name": "toy-student"},
            "teacher": {"name": "toy-teacher"},
            "method": {"name": method, "decision_ratio": ratio},
            "data": {"name": "toy", "options": None},
            "benchmark": {"name": "toy", "limit": None},
            "logger": {"name": "csv", "group": f"g{seed}"},
            "trainer": {"threads": threads, "devices": 1},
        },
        "benchmarks": {"toy": {"accuracy_before": 0.2, "accuracy_after": after, "gain": after - 0.2, "subset": None}},
        "accuracy_auc": after - 0.1,
        "heldout_reverse_kl": {"before": 0.7, "after": 1 - after},
        "grad_mass_coverage": 0.75,
        "kept_share": 0.36,
        "curve": [{"step": 0, "accuracy": 0.2}],
    }


FOLDER_RUNS = {
    "a/0": folder_run("dear", 0, 0.5, ratio=0.2),
    "a/1": folder_run("dear", 1, 0.7, ratio=0.2, threads=2),  # other threads, logger group: the same row
    "b/0": folder_run("dear", 0, 0.4, ratio=0.3),  # another ratio: another row
    "c/0": folder_run("opd", 0, 0.3),
    "c/1": folder_run("opd", 1, 0.4),
    "d/1": folder_run("opd", 1, 0.9),  # the same settings and seed again: left out, and said so
    "e/0": {**folder_run("opd", 2, 0.9), "status": "running"},  # unfinished: left out
}


def test_folder_rows_are_the_runs_that_differ_only_by_seed(tmp_path, capsys):
    for where, run in FOLDER_RUNS.items():
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "metrics.json").write_text(json.dumps(run))
    out = tmp_path / "table.md"
    main([str(tmp_path), "--out", str(out)])
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert lines[0] == f"# finished runs under {tmp_path}"
    assert lines[4] == "## model=toy-student, teacher=toy-teacher, data=toy, benchmark=toy (2 seeds)"
    assert lines[6] == (
        "| row | seeds | accuracy before | accuracy after | gain | accuracy AUC | held-out KL | grad-mass coverage "
        "| kept share |"
    )  # the grid tables' columns; no baseline, so no Δ or beats
    # dear at ratio 0.2: after 0.5, 0.7 (mean 0.6, sd 0.1414); gain 0.3, 0.5; AUC 0.4, 0.6; KL 0.5, 0.3
    assert lines[8:] == [
        "| method=dear, method.decision_ratio=0.2 | 2/2 | 0.200 ± 0.000 | 0.600 ± 0.141 | 0.400 ± 0.141 "
        "| 0.500 ± 0.141 | 0.400 ± 0.141 | 0.750 ± 0.000 | 0.360 ± 0.000 |",
        "| method=dear, method.decision_ratio=0.3 | 1/2 | 0.200 | 0.400 | 0.200 | 0.300 | 0.600 | 0.750 | 0.360 |",
        "| method=opd | 2/2 | 0.200 ± 0.000 | 0.350 ± 0.071 | 0.150 ± 0.071 | 0.250 ± 0.071 | 0.650 ± 0.071 "
        "| 0.750 ± 0.000 | 0.360 ± 0.000 |",
    ]
    assert out.read_text() == printed.out
    assert printed.err.strip().splitlines() == [
        f"dear-table: 1 run(s) repeat the settings and seed of a run found before them and are left out: "
        f"{tmp_path / 'd' / '1' / 'metrics.json'}",
        "dear-table: warning: row method=dear, method.decision_ratio=0.2 pools runs that ran differently besides the "
        "seed (cache_dir, logger.group, trainer.threads differ); give the folders of one kind of run to keep them "
        "apart",
        "dear-table: warning: row method=opd pools runs that ran differently besides the seed (cache_dir, "
        "logger.group differ); give the folders of one kind of run to keep them apart",
    ]


def test_folder_rows_name_the_presets_that_differ_and_the_tables_mark_an_offline_subset(tmp_path, capsys):
    runs = {
        "x": folder_run("dear", 0, 0.5),
        "y": {**folder_run("dear", 0, 0.4), "benchmarks": {"math500": {"accuracy_after": 0.4, "subset": "311 of 500"}}},
    }
    runs["y"]["config"]["benchmark"]["name"] = "math500"
    for where, run in runs.items():
        (tmp_path / where).mkdir()
        (tmp_path / where / "metrics.json").write_text(json.dumps(run))
    main([str(tmp_path)])
    text = capsys.readouterr().out
    assert "## model=toy-student, teacher=toy-teacher, data=toy (1 seeds)" in text
    assert "Benchmark is an offline subset: math500: 311 of 500." in text
    assert "| method=dear, benchmark=math500 | 1/1 | - | 0.400 | - |" in text
    assert "| method=dear, benchmark=toy | 1/1 | 0.200 | 0.500 | 0.300 |" in text


def test_a_cell_is_mean_and_sample_std_over_seeds():
    # mean 0.3; squared deviations 0.04 + 0.01 + 0.09 = 0.14 over n-1 = 2: std √0.07 = 0.2646
    assert cell([0.1, 0.2, 0.6]) == "0.300 ± 0.265"
    assert cell([0.5]) == "0.500"
    assert cell([0.5, None, float("nan")]) == "0.500"
    assert cell([None, float("nan")]) == "-"
    assert cell([0.25, 0.25]) == "0.250 ± 0.000"


PAPER_BENCHMARKS = (
    "math500",
    "minerva",
    "amc23",
    "olympiadbench",
    "aime24",
    "aime25",
    "mbpp-plus",
    "humaneval",
    "apps",
)
EVALUATED = "eval.benchmarks=[" + ",".join(PAPER_BENCHMARKS[1:]) + "]"


def test_the_paper_grid_trains_once_per_pair_method_and_seed(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the packaged grid by name, from any folder
    main(["--run", "paper", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.startswith(("todo", "done"))]
    assert len(runs) == 3 * 4 and lines[-1].startswith("12 runs, 12 to run")
    for pair in ("qwen-1.5b-14b", "qwen-1.5b-qwen3-4b", "qwen3-1.7b-4b"):
        for method in ("offline_kd", "opd", "entropy", "dear"):
            said = f"benchmark=math500 '{EVALUATED}' experiment={pair} method={method} seed=0"
            assert sum(said in r for r in runs) == 1
    g = grids.read(grids.find("paper"))
    assert all(t.baseline == {f"method={m}": "method=opd" for m in ("offline_kd", "entropy", "dear")} for t in g.tables)
    for bench in PAPER_BENCHMARKS:  # every benchmark is a preset
        assert (ROOT / "conf" / "benchmark" / f"{bench}.yaml").is_file()


@pytest.mark.slow
def test_a_joblib_sweep_runs_the_grid_and_a_second_call_reuses_it(tmp_path, toy_cache):
    spec = {
        "name": "tiny",
        "output": str(tmp_path / "tables"),
        "overrides": [*TINY_RUN, "steps=1", f"cache_dir={toy_cache}"],
        "launch": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1"],
        "tables": {"main": {"seeds": 2, "baseline": "opd", "rows": {"opd": ["method=opd"], "dear": ["method=dear"]}}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cmd = [str(Path(sys.executable).parent / "dear-table"), "--run", str(path)]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "joblib" in first.stderr.lower()  # Hydra's joblib launcher ran the jobs
    grid = grids.read(path)
    assert all(grids.finished(grid.run_dir(r)) for r in grid.runs())
    stamps = {r: (grid.run_dir(r) / "metrics.json").stat().st_mtime for r in grid.runs()}
    assert "| dear | 2/2 |" in first.stdout and (tmp_path / "tables" / "tiny.md").is_file()
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and "4 finished, 0 to run" in second.stderr
    assert stamps == {r: (grid.run_dir(r) / "metrics.json").stat().st_mtime for r in grid.runs()}


def test_the_toy_grid_holds_what_issue_11_asks():
    g = grids.read(ROOT / "conf" / "table" / "toy.yaml")
    tables = {t.name: t for t in g.tables}
    main_rows = {r: o for r, o in tables["main"].rows.items()}
    assert len(tables["main"].seeds) >= 20 and set(main_rows) == {
        "opd",
        "offline_kd",
        "sft",
        "entropy",
        "tip",
        "random",
        "dear",
    }
    assert all(len(t.seeds) >= 10 for t in g.tables)
    ablations = [o for o in tables["ablations"].rows.values()]
    assert ("method=dear", "method.boost=multiplicative", "method.evidence_pool=all") in ablations
    for m in ("entropy", "tip", "random", "dear"):
        assert (f"method={m}", "loss.normalize=all") in ablations
    assert tables["decision_ratio"].curve == "method.decision_ratio"
    ratios = [float(r.split("=")[1]) for r in tables["evidence_ratio"].rows if r.startswith("method.")]
    assert min(ratios) == 0.1 and max(ratios) == 0.8
    assert {o[0] for o in tables["pairs"].rows.values()} == {"experiment=toy-s", "experiment=toy-l"}
    assert "hydra/launcher=joblib" in g.launch
    # a run two tables share is one run (opd and dear at seeds 0-9 serve main, ablations and sensitivity)
    assert len(g.runs()) == len({(r.slug, r.seed) for r in g.runs()}) < sum(len(g.runs(t)) for t in g.tables)
