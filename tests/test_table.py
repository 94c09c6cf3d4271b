"""Reproduction tables (dear/tables/grid.py, dear/tables/reproduce.py, dear/tables/stats.py, dear-table): collation from
fabricated run directories with a hand-computed interval, reuse of finished runs, the paper's grid as a
dry run, and (slow) a real joblib sweep that a second call reuses."""

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
from dear.tables.reproduce import write
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
                "benchmarks": {"toy": {"accuracy_after": accuracy}},
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
    assert dear[1] == "3/3" and dear[2] == "0.767 ± 0.153" and dear[5] == "0.750 ± 0.000" and dear[6] == "0.360 ± 0.000"
    assert dear[7] == "+0.167 [+0.023, +0.310]" and dear[-1].rstrip(" |") == "yes"
    rand = lines["random"].split(" | ")  # two finished seeds paired with opd's: -0.1, -0.1 (sd 0)
    assert rand[1] == "2/3" and rand[7] == "-0.100 [-0.100, -0.100]"
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


def test_finished_runs_are_reused_and_interrupted_ones_resumed(tmp_path, monkeypatch, capsys):
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    # shared runs are run once: opd appears in both tables, 3 + 2 seeds -> seeds 0, 1, 2
    assert len(grid.runs()) == 3 * 3 + 2 * 2
    todo = grids.pending(grid)
    assert [(r.row, r.seed) for r in todo] == [("random", 2)]  # the interrupted one only
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    main(["--run", str(tmp_path / "fab.yaml")])
    (cmd,) = calls  # one dear-train -m for the one unfinished run, into its own directory (it resumes there)
    assert cmd[1] == "-m" and "method=random" in cmd and "seed=2" in cmd and "hydra/launcher=joblib" in cmd
    assert "++logger.group=fab" in cmd
    assert f"hydra.sweep.dir='{grid.runs_dir / todo[0].slug}'" in cmd and "hydra.sweep.subdir=seed_${seed}" in cmd
    assert "| dear |" in capsys.readouterr().out
    fabricate(grid, todo[0], 0.6)
    calls.clear()
    main(["--run", str(tmp_path / "fab.yaml")])
    assert calls == []  # everything finished: nothing runs again
    # a changed shared override is a different run
    assert grids.read(tmp_path / "fab.yaml", ["steps=5"]).runs()[0].slug != todo[0].slug.replace("random", "opd")
    assert not set(r.slug for r in grids.read(tmp_path / "fab.yaml", ["steps=5"]).runs()) & set(
        r.slug for r in grid.runs()
    )


def test_wandb_runs_are_grouped_by_grid_and_tagged_with_method_and_pair(tmp_path):
    from dear.preflight import train_config
    from dear.training.runs import build_loggers

    from conftest import compose

    logger = build_loggers(train_config(compose(["method=opd", "++logger.group=toy"])), tmp_path)
    init = logger._wandb_init
    assert init["group"] == "toy" and init["tags"] == ["method=opd", "pair=toy-student<-toy-teacher"]


def test_bad_grid_files_are_one_line(tmp_path, capsys):
    bad = {**GRID, "tables": {"main": {"seeds": 2, "baseline": "nope", "rows": {"opd": ["method=opd"]}}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as e:
        main(["--run", str(path), "--dry-run"])
    assert e.value.code == 2
    assert "baseline must name a row of the table" in capsys.readouterr().err


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


def test_the_paper_grid_as_a_dry_run(capsys):
    main(["--run", str(ROOT / "conf" / "table" / "paper.yaml"), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if line.startswith(("todo", "done"))]
    assert len(runs) == 3 * 4 * 9 and lines[-1].startswith("108 runs")
    for pair in ("qwen-1.5b-14b", "qwen-1.5b-qwen3-4b", "qwen3-1.7b-4b"):
        for method in ("offline_kd", "opd", "entropy", "dear"):
            for bench in PAPER_BENCHMARKS:
                assert sum(f"experiment={pair} method={method} benchmark={bench} seed=0" in r for r in runs) == 1
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
