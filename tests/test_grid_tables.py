"""dear-table's tables of runs evaluated on several benchmarks (one training run, ``eval.benchmarks``): per benchmark
accuracy after, gain and the difference from the baseline paired by seed, in markdown and CSV, the one-benchmark
tables as they were; and folder tables that pool only seeds: a row per setting, its distinct seeds counted, a warning
when its runs ran differently."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
from test_table import make_grid

from dear.tables import grid as grids
from dear.tables.collate import main
from dear.tables.reproduce import write

SPEC = {
    "name": "multi",
    "overrides": ["logger=csv", "benchmark=math500", "eval.benchmarks=[minerva,amc23]"],
    "tables": {
        "pair": {
            "seeds": 3,
            "baseline": "opd",
            "rows": {"opd": ["method=opd"], "dear": ["method=dear"]},
        }
    },
}
# accuracy after per seed: the curve's benchmark (math500) first, as metrics.json lists them
AFTER = {
    "opd": {"math500": [0.40, 0.50, 0.60], "minerva": [0.10, 0.20, 0.30], "amc23": [0.20, 0.20, 0.20]},
    "dear": {"math500": [0.50, 0.70, 0.80], "minerva": [0.20, 0.20, 0.50], "amc23": [0.10, 0.20, 0.30]},
}
BEFORE = {"math500": 0.3, "minerva": 0.1, "amc23": 0.2}
SUBSETS = {"math500": "311 of 500 problems", "amc23": "the 40 problems of 2023"}


def fabricate(grid: grids.Grid, run: grids.Run, accuracy: dict = AFTER) -> None:
    after = {b: v[run.seed] for b, v in accuracy[run.row].items()}
    benchmarks = {
        b: {"accuracy_before": BEFORE[b], "accuracy_after": a, "gain": a - BEFORE[b], "subset": None}
        for b, a in after.items()
    }
    for b, subset in SUBSETS.items():
        if b in benchmarks:
            benchmarks[b]["subset"] = subset
    record = {
        "status": "complete",
        "seed": run.seed,
        "benchmarks": benchmarks,
        "accuracy_auc": after["math500"] - 0.1,
        "heldout_reverse_kl": {"after": 0.5},
        "grad_mass_coverage": 0.75,
        "kept_share": 0.36,
        "curve": [{"step": 0, "accuracy": 0.3}, {"step": 10, "accuracy": after["math500"]}],
    }
    grid.run_dir(run).mkdir(parents=True)
    (grid.run_dir(run) / "metrics.json").write_text(json.dumps(record))


def lines_of(text: str, heading: str) -> list[str]:
    """The table rows under a markdown heading."""
    at = text.splitlines().index(heading)
    rows = []
    for line in text.splitlines()[at + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_a_run_evaluated_on_several_benchmarks_gives_a_column_per_benchmark(tmp_path):
    grid = make_grid(tmp_path, SPEC)
    for run in grid.runs():
        fabricate(grid, run)
    text, _ = write(grid, with_plots=False)
    # the table of the curve's benchmark, as for one benchmark: dear's math500 after 0.5, 0.7, 0.8
    assert "| dear | 3/3 | 0.300 ± 0.000 | 0.667 ± 0.153 | 0.367 ± 0.153 |" in text
    assert "Accuracy on math500, the benchmark of the held-out curve; every benchmark below." in text
    assert "Benchmark is an offline subset: amc23: the 40 problems of 2023." in text
    assert "Benchmark is an offline subset: math500: 311 of 500 problems." in text
    assert lines_of(text, "### pair: accuracy after, per benchmark") == [
        "| row | math500 | minerva | amc23 |",
        "|---|---|---|---|",
        "| opd | 0.500 ± 0.100 | 0.200 ± 0.100 | 0.200 ± 0.000 |",
        "| dear | 0.667 ± 0.153 | 0.300 ± 0.173 | 0.200 ± 0.100 |",
    ]
    assert (
        lines_of(text, "### pair: gain, per benchmark")[3] == "| dear | 0.367 ± 0.153 | 0.200 ± 0.173 | 0.000 ± 0.100 |"
    )
    # dear - opd by seed: math500 0.1, 0.2, 0.2 (test_table.py by hand); minerva 0.1, 0.0, 0.2 (mean 0.1, sd 0.1,
    # half-width 4.302653 * 0.1 / √3 = 0.2484); amc23 -0.1, 0.0, 0.1
    delta = lines_of(text, "### pair: Δ accuracy after, per benchmark")
    assert delta[2] == "| opd | - | - | - |"  # the baseline itself
    assert delta[3] == "| dear | +0.167 [+0.023, +0.310] | +0.100 [-0.148, +0.348] | +0.000 [-0.248, +0.248] |"
    with (grid.output / "multi.csv").open() as f:
        rows = {r["row"]: r for r in csv.DictReader(f)}
    dear = rows["dear"]
    assert float(dear["minerva_accuracy_after_mean"]) == pytest.approx(0.3)
    assert float(dear["amc23_gain_std"]) == pytest.approx(0.1)
    assert float(dear["minerva_accuracy_before_mean"]) == pytest.approx(0.1)
    assert float(dear["diff_minerva_accuracy_after_low"]) == pytest.approx(
        0.1 - 4.302653 * 0.1 / math.sqrt(3), abs=1e-5
    )
    assert float(dear["diff_accuracy_after_mean"]) == pytest.approx(1 / 6, abs=1e-6)  # the curve's benchmark, as before
    assert rows["opd"]["diff_minerva_accuracy_after_mean"] == ""


# dear-table's CSV columns for runs of one benchmark, as they were before runs had several
ONE_BENCHMARK_CSV = (
    "table,row,overrides,seeds,accuracy_before_mean,accuracy_before_std,accuracy_after_mean,accuracy_after_std,"
    "gain_mean,gain_std,accuracy_auc_mean,accuracy_auc_std,kl_after_mean,kl_after_std,grad_mass_coverage_mean,"
    "grad_mass_coverage_std,kept_share_mean,kept_share_std,diff_accuracy_after_mean,diff_accuracy_after_low,"
    "diff_accuracy_after_high,diff_accuracy_auc_mean,diff_accuracy_auc_low,diff_accuracy_auc_high,baseline,beats"
)


def test_runs_of_one_benchmark_give_the_tables_they_gave(tmp_path):
    grid = make_grid(tmp_path, {**SPEC, "overrides": ["logger=csv"]})
    for run in grid.runs():
        fabricate(grid, run, {row: {"math500": v["math500"]} for row, v in AFTER.items()})
    text, _ = write(grid, with_plots=False)
    assert "per benchmark" not in text and text.splitlines()[-1].startswith("| dear | 3/3 |")
    assert (grid.output / "multi.csv").read_text().splitlines()[0] == ONE_BENCHMARK_CSV


# --- tables of the runs under folders pool only seeds ------------------------------------------------------


def folder_run(seed: int, steps: int = 120, lr: float = 1e-3, ratio: float = 0.2, **ran) -> dict:
    """A metrics.json of a dear run, as dear-train writes its settings; ``ran``: threads, torch (how it ran)."""
    after = 0.4 + 0.1 * seed + steps / 1000
    return {
        "status": "complete",
        "seed": seed,
        "config": {
            "seed": seed,
            "steps": steps,
            "ckpt_path": None,
            "model": {"name": "toy-student"},
            "teacher": {"name": "toy-teacher"},
            "method": {"name": "dear", "decision_ratio": ratio},
            "loss": {"normalize": "selected"},
            "optim": {"lr": lr},
            "data": {"name": "toy"},
            "benchmark": {"name": "toy"},
            "logger": {"name": "csv"},
            "trainer": {"threads": ran.get("threads", 1)},
        },
        "versions": {"python": "3.11.9", "torch": ran.get("torch", "2.5.1")},
        "benchmarks": {"toy": {"accuracy_before": 0.3, "accuracy_after": after, "gain": after - 0.3}},
        "accuracy_auc": after,
        "heldout_reverse_kl": {"after": 0.5},
        "curve": [],
    }


POOLS = {
    "steps4/0": folder_run(0, steps=4),
    "steps300/0": folder_run(0, steps=300),
    "lr/1e-4/0": folder_run(0, lr=1e-4),
    "lr/1e-4/1": folder_run(1, lr=1e-4),
    "ratio/0.1/0": folder_run(0, ratio=0.1),
    "ratio/0.3/0": folder_run(0, ratio=0.3),
    "ratio/0.3/1": folder_run(1, ratio=0.3),
    "default/0": folder_run(0),
    "default/1": folder_run(1),
    "default/2": folder_run(2, threads=4, torch="2.6.0"),  # the same run, but ran otherwise: pooled, and said so
}
# each setting its own row; seeds as many as it has
ROWS = {
    "method=dear, method.decision_ratio=0.2, optim.lr=0.001, steps=4": 1,
    "method=dear, method.decision_ratio=0.2, optim.lr=0.001, steps=300": 1,
    "method=dear, method.decision_ratio=0.2, optim.lr=0.0001, steps=120": 2,
    "method=dear, method.decision_ratio=0.1, optim.lr=0.001, steps=120": 1,
    "method=dear, method.decision_ratio=0.3, optim.lr=0.001, steps=120": 2,
    "method=dear, method.decision_ratio=0.2, optim.lr=0.001, steps=120": 3,
}


def test_a_folder_row_pools_the_seeds_of_one_setting_and_says_when_its_runs_ran_differently(tmp_path, capsys):
    for where, run in POOLS.items():
        (tmp_path / where).mkdir(parents=True)
        (tmp_path / where / "metrics.json").write_text(json.dumps(run))
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1] for line in out.splitlines()[8:]}
    assert rows == {row: f"{n}/3" for row, n in ROWS.items()}  # no row claims more seeds than it has
    assert "| method=dear, method.decision_ratio=0.2, optim.lr=0.001, steps=4 | 1/3 | 0.300 | 0.404 |" in out
    assert err.strip() == (
        "dear-table: warning: row method=dear, method.decision_ratio=0.2, optim.lr=0.001, steps=120 pools runs that "
        "ran differently besides the seed (trainer.threads, versions.torch differ); give the folders of one kind of "
        "run to keep them apart"
    )


def test_a_folder_row_names_a_different_git_commit_and_checkpoint(tmp_path, capsys):
    runs = [folder_run(0), copy.deepcopy(folder_run(1))]
    runs[0]["git"] = {"commit": "abc1234", "dirty": False}
    runs[1]["git"] = {"commit": "def5678", "dirty": False}
    runs[1]["config"]["ckpt_path"] = "/old/last.ckpt"
    for i, run in enumerate(runs):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps(run))
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    assert "| method=dear | 2/2 |" in out
    assert "(ckpt_path, git.commit differ)" in err
