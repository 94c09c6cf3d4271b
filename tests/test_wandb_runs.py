"""W&B: one run per job of a sweep, named after what sets the job apart, grouped by the sweep, always finished.

The runs are read back from the offline run files (``<run dir>/wandb/offline-run-*/run-*.wandb``: wandb's record
log, a LevelDB-style log of protobuf records).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from conftest import TINY_RUN, compose

TINY_WANDB = [o for o in TINY_RUN if not o.startswith("logger=")] + ["logger=wandb", "steps=1"]


def dear_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEAR_OUTPUTS": str(cwd / "outputs")}
    env.pop("HYDRA_FULL_ERROR", None)
    binary = Path(sys.executable).parent / "dear-train"
    return subprocess.run([str(binary), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def wandb_records(path: Path):
    """The protobuf records of an offline run file: 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (checksum, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    block, pos, chunk = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            return
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""


def offline_runs(run_dir: Path) -> list[dict]:
    """Each offline W&B run under ``run_dir``: its name, group, tags, exit code (None: never finished) and the
    number of selection pages logged to it."""
    runs = []
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run, exit_code = None, None
        for r in wandb_records(file):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = {"name": r.run.display_name, "group": r.run.run_group, "tags": sorted(r.run.tags)}
            elif kind == "exit":
                exit_code = r.exit.exit_code
        pages = len(list(file.parent.glob("files/media/html/selection_*.html")))  # dear/training/pages.py
        runs.append({**run, "exit_code": exit_code, "pages": pages})
    return runs


def test_each_job_of_a_sweep_is_its_own_wandb_run(tmp_path, toy_cache):
    proc = dear_train("-m", "method=opd,dear", *TINY_WANDB, f"cache_dir={toy_cache}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    runs = {j.name: offline_runs(j) for j in jobs}
    assert [len(r) for r in runs.values()] == [1, 1], f"one W&B run per job's folder, found {runs}"
    (opd,), (dear,) = runs["0"], runs["1"]
    assert (opd["name"], dear["name"]) == ("dear-opd-s0", "dear-dear-s0")
    assert opd["group"] == dear["group"] == sweep.name  # the sweep's folder
    assert opd["tags"] == ["method=opd", "pair=toy-student<-toy-teacher", "seed=0"]
    assert opd["exit_code"] == dear["exit_code"] == 0  # each finished at its job's end
    assert opd["pages"] == dear["pages"] == 2  # the selection pages of the start and the end, in each job's run


def hydra_job(tmp_path: Path, command: list[str], job: list[str]):
    """Settings and a HydraConfig as job ``job`` (its overrides) of the multirun ``command`` sees them."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from dear.preflight.settings import train_config

    with initialize_config_module(config_module="dear.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=job, return_hydra_config=True)
    sweep_dir = tmp_path / "multirun" / "2026-01-01_00-00-00_abcdef"
    sweep_dir.mkdir(parents=True)
    OmegaConf.save({"hydra": {"overrides": {"task": command}}}, sweep_dir / "multirun.yaml")
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(sweep_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(sweep_dir / "0")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return train_config(cfg)


def test_a_run_is_named_after_what_its_sweep_varies(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from dear.training.loggers import job_identity

    try:
        command = ["model=toy-student", "method.lam=0.1,0.5", "seed=0,1", "steps=3", "++logger.group=grid"]
        s = hydra_job(tmp_path, command, ["model=toy-student", "method.lam=0.5", "seed=1", "steps=3"])
        assert job_identity(s) == ("dear-dear-lam=0.5-s1", "2026-01-01_00-00-00_abcdef")
    finally:
        HydraConfig.instance().cfg = None
    s = compose(["method=opd", "seed=2"])
    from dear.preflight.settings import train_config

    assert job_identity(train_config(s)) == ("dear-opd-s2", None)  # a single run: its method and seed


def test_the_run_is_finished_when_fit_fails(tmp_path):
    import wandb

    from dear.training.loggers import OneRunWandbLogger

    logger = OneRunWandbLogger(project="dear", save_dir=str(tmp_path), offline=True, name="dear-opd-s0")
    assert "anonymous" not in logger._wandb_init  # wandb warns that anonymous=None has no effect
    _ = logger.experiment  # fit's setup starts the run
    logger.finalize("failed")  # Lightning's handler of any exception (KeyboardInterrupt included) in fit
    assert wandb.run is None, "the run is still open: the next job would log into it"
    (run,) = offline_runs(tmp_path)
    assert run["exit_code"] == 1
