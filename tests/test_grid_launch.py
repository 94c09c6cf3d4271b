"""dear-table's launch (dear/tables/grid.py): every unfinished run of a grid as one ``dear-train -m`` over generated
``grid_run`` configs, each composing to what its own command line composed and landing in `Grid.run_dir`, and
passing dear-train's preflight; ``--no-wait`` and a launch in flight; packaged grids by name from any folder. A real
multirun through joblib that a second call reuses is tests/test_table.py's (slow); tests/test_cli.py runs one
through the basic launcher."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from test_table import GRID, Launcher, fabricate_all, make_grid

import dear.preflight.command as command_line
from dear.tables import grid as grids
from dear.tables.collate import main

from conftest import ROOT


def as_its_command_line(grid: grids.Grid, run: grids.Run) -> list[str]:
    """What the run's own ``dear-train`` composed before grids launched as one multirun (dear-train adds the setup
    a real student needs)."""
    overrides = [*grid.overrides, *run.overrides, f"seed={run.seed}", *grid.launch, f"++logger.group={grid.name}"]
    setup = command_line.choose_setup(overrides)
    return [f"setup={setup}"] * bool(setup) + overrides


def through_its_grid_run(cmd: list[str], run: grids.Run) -> list[str]:
    """The overrides of ``run``'s job in the multirun ``cmd``: the sweep over ``grid_run`` at its own option."""
    return [f"+grid_run={run.key}" if o.startswith("+grid_run=") else o for o in cmd[2:]]


def compose(overrides: list[str], return_hydra_config: bool = False):
    """The config dear-train composes from ``overrides`` (with its hydra node, if asked)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    import dear.cli  # noqa: F401  (registers the run-id resolver)

    with initialize_config_module(config_module="dear.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=return_hydra_config)


def config(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose(overrides))


REAL = {
    "name": "real",
    "overrides": ["logger=csv", "eval.benchmarks=[minerva,amc23]"],
    "tables": {
        "t": {
            "seeds": [0, 3],
            "rows": {
                "pair": ["model=qwen-1.5b", "teacher=qwen-7b", "method=opd"],  # a real student: the real-math setup
                "experiment": ["experiment=qwen-1.5b-14b", "method.decision_ratio=0.4", "+method.extra=1e-3"],
                "toy-s": ["experiment=toy-s", "method=dear", "loss.normalize=all", "optim.lr=1e-4", "eval.every=5"],
                "quoted": ["method=dear", "method.name='dear'", "rollout.temperature=${loss.temperature}"],
            },
        }
    },
}


@pytest.mark.parametrize("spec", ["toy", "paper", GRID, REAL], ids=["toy", "paper", "fab", "real"])
def test_each_run_composes_through_its_generated_config_as_through_its_own_command_line(tmp_path, spec):
    """The multirun's job of each run (its ``grid_run`` option and the shared overrides) composes to the config its
    own command line composed, and Hydra puts it in the run's folder, `Grid.run_dir`."""
    grid = grids.read(grids.find(spec)) if isinstance(spec, str) else make_grid(tmp_path, spec)
    grid = grids.Grid(grid.name, tmp_path / "tables", grid.overrides, grid.launch, grid.tables)
    runs = {r.slug: r for r in grid.runs()}.values()  # one seed of each row; the seed itself is checked below
    cmd = grids.launch_command(grid, grid.runs())
    assert cmd[:3] == [cmd[0], "-m", f"hydra.searchpath=[file://{(grid.runs_dir / '.launch').resolve()}]"]
    for run in runs:
        through_grid, expected = config(through_its_grid_run(cmd, run)), config(as_its_command_line(grid, run))
        # the one difference: its W&B run named after its row
        assert (through_grid["logger"].pop("run_name"), expected["logger"].pop("run_name", None)) == (
            grids.wandb_name(run),
            None,
        )
        assert through_grid == expected, run.row
    folder = compose(through_its_grid_run(cmd, run), return_hydra_config=True).hydra.sweep  # where Hydra puts it
    assert Path(folder.dir) / folder.subdir == grid.run_dir(run)
    for run in grid.runs():  # every seed of every row: its own option, its own seed and folder
        said = yaml.safe_load((grid.runs_dir / ".launch" / "grid_run" / f"{run.key}.yaml").read_text())
        assert said["seed"] == run.seed and grid.runs_dir / said["hydra"]["sweep"]["subdir"] == grid.run_dir(run)


def test_a_grid_run_config_says_the_rows_presets_settings_seed_and_folder(tmp_path):
    grid = make_grid(tmp_path, REAL)
    run = next(r for r in grid.runs() if r.row == "experiment" and r.seed == 3)
    text = grids.run_config(grid, run)
    assert text.startswith("# @package _global_\n# real, row experiment: experiment=qwen-1.5b-14b ")
    assert yaml.safe_load(text) == {
        "defaults": [{"override /experiment": "qwen-1.5b-14b"}],
        "method": {"decision_ratio": 0.4, "extra": 0.001},
        "seed": 3,
        "logger": {"run_name": "dear-qwen-1.5b-14b-decision_ratio=0.4-extra=0.001-s3"},
        "hydra": {"sweep": {"subdir": f"{run.slug}/seed_3"}},
    }
    pair = next(r for r in grid.runs() if r.row == "pair")
    assert yaml.safe_load(grids.run_config(grid, pair))["defaults"] == [
        {"override /setup": "real-math"},  # what dear-train adds for a real student with no setup
        {"override /model": "qwen-1.5b"},
        {"override /teacher": "qwen-7b"},
        {"override /method": "opd"},
    ]
    # a list override is one string in a grid, and a folder name with brackets made safe
    assert grids.slug(["logger=csv"], ("eval.benchmarks=[minerva,amc23]",)).startswith(
        "eval.benchmarks=_minerva,amc23_-"
    )


def test_the_one_multirun_passes_dear_trains_preflight(tmp_path):
    """dear-train composes every run of the multirun (its ``grid_run`` option found through the command line's
    ``hydra.searchpath``) and checks it before Hydra starts."""
    from dear.preflight.settings import train_config

    grid = make_grid(tmp_path)
    cmd = grids.launch_command(grid, grid.runs())
    argv = cmd[1:]
    command_line.check_group_overrides("dear-train", argv)
    assert command_line.with_setup("dear-train", argv) == (argv, None)
    checked = []
    command_line.preflight(
        "dear-train", "train", argv, lambda cfg: checked.append((cfg.method.name, cfg.seed)) or train_config(cfg)
    )
    methods = [dict(o.split("=", 1) for o in r.overrides)["method"] for r in grid.runs()]
    assert sorted(checked) == sorted(zip(methods, (r.seed for r in grid.runs())))  # each run composed and checked


def test_the_launcher_runs_the_command_and_is_recorded_while_it_runs(tmp_path, monkeypatch, capsys):
    """A stand-in dear-train (a script that writes its arguments) run for real: the command reaches it word for word
    through the one multirun, and ``launcher.json`` names its pid while it runs and goes when it ends."""
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    said = tmp_path / "said.json"
    record = grid.runs_dir / ".launch" / "launcher.json"
    stand_in = tmp_path / "dear-train"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, pathlib, sys\n"
        f"pathlib.Path({str(said)!r}).write_text(json.dumps([sys.argv[1:], json.loads(pathlib.Path({str(record)!r})"
        f".read_text())]))\n"
    )
    stand_in.chmod(0o755)
    monkeypatch.setattr(grids, "_dear_train", lambda: str(stand_in))
    with pytest.raises(SystemExit):  # the stand-in finishes nothing: random's seed 2 did not finish
        main(["--run", str(tmp_path / "fab.yaml")])
    argv, while_running = json.loads(said.read_text())
    todo = grids.pending(grid)
    assert argv == grids.launch_command(grid, todo)[1:]
    assert while_running["runs"] == [str(grid.run_dir(r)) for r in todo] and while_running["log"] is None
    assert not record.exists()
    assert "runs of random did not finish" in capsys.readouterr().err


def sleeper(tmp_path: Path) -> Path:
    """A stand-in dear-train that runs until ``<tmp>/stop`` appears."""
    script = tmp_path / "dear-train"
    script.write_text(
        f"#!{sys.executable}\nimport pathlib, time\nprint('launched', flush=True)\n"
        f"while not pathlib.Path({str(tmp_path / 'stop')!r}).exists():\n    time.sleep(0.05)\n"
    )
    script.chmod(0o755)
    return script


def test_no_wait_leaves_the_launch_running_and_the_same_command_collates_without_relaunching(
    tmp_path, monkeypatch, capsys
):
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    monkeypatch.setattr(grids, "_dear_train", lambda: str(sleeper(tmp_path)))
    main(["--run", str(tmp_path / "fab.yaml"), "--no-wait", "--out", str(tmp_path / "t.md")])  # exit 0: returns
    out, err = capsys.readouterr()
    record = json.loads((grid.runs_dir / ".launch" / "launcher.json").read_text())
    pid, log = record["pid"], Path(record["log"])
    try:
        assert out == "" and not (tmp_path / "t.md").exists() and not (grid.output / "fab.md").exists()
        assert err.splitlines()[-1] == (
            f"launched 1 run(s) in the background (pid {pid}); log: {log}; collate later with the same command"
        )
        assert os.getsid(pid) == pid  # a session of its own: closing the terminal does not stop it
        assert log.parent == grid.runs_dir / ".launch" and log.name.startswith("launch-")
        assert grids.in_flight(grid) == record
        # while it runs, the same command launches nothing and collates what finished
        monkeypatch.setattr(grids, "launch", lambda *a, **k: pytest.fail("relaunched a grid in flight"))
        main(["--run", str(tmp_path / "fab.yaml")])
        out, err = capsys.readouterr()
        assert err.splitlines()[0] == (
            f"1 run(s) still in flight (launcher pid {pid}, log: {log}); launching nothing, collating the 12 finished"
        )
        assert "| random | 2/3 |" in out and (grid.output / "fab.md").is_file()
        main(["--run", str(tmp_path / "fab.yaml"), "steps=5"])  # other runs of the grid wait for it too
        assert "0 run(s) still in flight" in capsys.readouterr().err
        assert log.read_text().startswith("launched")
    finally:
        (tmp_path / "stop").touch()
        for _ in range(200):
            if grids.in_flight(grid) is None:
                break
            time.sleep(0.05)
    assert grids.in_flight(grid) is None  # ended (unreaped here, a zombie: not in flight either)
    with contextlib.suppress(ChildProcessError):  # subprocess may have reaped it already
        os.waitpid(pid, 0)


def test_a_launch_record_whose_process_is_gone_or_another_does_not_hold_back_the_grid(tmp_path, monkeypatch):
    launcher = Launcher()
    monkeypatch.setattr(subprocess, "Popen", launcher)
    grid = make_grid(tmp_path)
    fabricate_all(grid)
    record = grid.runs_dir / ".launch" / "launcher.json"
    me = {"pid": os.getpid(), "started": grids._started(os.getpid()), "log": None, "runs": [], "command": []}
    for gone in ({**me, "pid": Launcher.pid}, {**me, "started": "1"}, {"pid": "x"}):  # ended; pid reused; broken
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(gone))
        assert grids.in_flight(grid) is None
        launcher.calls.clear()
        with pytest.raises(SystemExit):
            main(["--run", str(tmp_path / "fab.yaml")])
        assert len(launcher.calls) == 1
    record.write_text(json.dumps(me))  # this very process: alive, and started when it says
    assert grids.in_flight(grid) == me


def test_packaged_grids_are_found_by_name_from_any_folder_and_a_path_still_works(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert grids.find("toy") == Path(grids.dear.__file__).parent / "conf" / "table" / "toy.yaml"
    main(["--run", "toy", "--dry-run"])
    by_name = capsys.readouterr().out
    assert by_name.splitlines()[-1].startswith(f"{len(grids.read(grids.find('toy')).runs())} runs")
    main(["--run", str(ROOT / "conf" / "table" / "toy.yaml"), "--dry-run"])
    assert capsys.readouterr().out == by_name
    (tmp_path / "toy").write_text(yaml.safe_dump({"tables": {"mine": {"rows": {"a": ["method=opd"]}}}}))
    assert grids.find("toy") == Path("toy")  # a file of that name here is the user's
    assert not (tmp_path / "outputs").exists()  # a dry run writes nothing


def test_a_dry_run_word_that_is_not_a_flag_launches_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("launched"))
    make_grid(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path / "fab.yaml"), "--dryrun"])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == (
        "dear-table: error: unknown arguments --dryrun (overrides are key=value, and only taken with --run)"
    )
    assert not (tmp_path / "tables").exists()


def test_each_grid_run_has_its_own_wandb_name_after_its_row():
    """A grid's runs are one sweep over generated configs, so dear-train cannot name them from what the sweep
    varies: each run's config names it after its row (logger.run_name), distinct across the grid."""
    for name in ("paper", "toy"):
        runs = grids.read(grids.find(name)).runs()
        assert len({grids.wandb_name(r) for r in runs}) == len(runs)
    paper = grids.read(grids.find("paper")).runs()
    assert grids.wandb_name(next(r for r in paper if r.row == "method=opd")) == "dear-qwen-1.5b-14b-opd-s0"
    toy = grids.read(grids.find("toy")).runs()
    old = next(r for r in toy if r.row.startswith("old score"))
    assert grids.wandb_name(old) == "dear-dear-boost=multiplicative-evidence_pool=all-s0"
