"""Data parallel through Lightning's DDP: two CPU processes (gloo) train one student on different rollouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_RUN


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("micro_batch_size", ["null", "4"])  # 6 rollouts a rank: one pass, or 4 + 2
def test_two_ranks_keep_one_student_while_sampling_their_own_rollouts(tmp_path, toy_cache, micro_batch_size):
    probe, run = tmp_path / "probe", tmp_path / "run"
    probe.mkdir()
    cmd = [
        sys.executable,
        str(ROOT / "tests" / "ddp_probe.py"),
        *TINY_RUN,
        f"cache_dir={toy_cache}",
        "steps=3",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.threads=1",
        f"step.micro_batch_size={micro_batch_size}",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "DEAR_PROBE_DIR": str(probe), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = read_rows(probe / "rank0.jsonl"), read_rows(probe / "rank1.jsonl")
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == [1, 2, 3]
    assert {r["world"] for r in rank0 + rank1} == {2}
    for a, b in zip(rank0, rank1):
        assert a["weights"] == b["weights"]  # gradients averaged: one student after every step
        assert a["prompts"] != b["prompts"] and a["rollout"] != b["rollout"]  # each rank its own share
    assert len({r["weights"] for r in rank0}) == 3  # and it learns: the weights change every step
    # rank 0 alone evaluates and writes: one metrics.json with the whole curve, one exported student
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 and [h["step"] for h in metrics["curve"]] == [0, 1, 2, 3]
    assert (run / "student" / "config.json").is_file()


def test_two_nodes_train_one_student(tmp_path, toy_cache):
    """trainer.num_nodes: two machines of one device each, as SLURM starts them (one dear-train per node, the node's
    rank and the first node's address in the environment), rehearsed as two processes on this one."""
    import socket

    probe, run = tmp_path / "probe", tmp_path / "run"
    probe.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "tests" / "ddp_probe.py"), *TINY_RUN, f"cache_dir={toy_cache}", "steps=3"]
    cmd += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2", "trainer.threads=1"]
    cmd += [f"hydra.run.dir={run}"]  # one run folder on a shared filesystem, as a SLURM job's
    env = {**os.environ, "DEAR_PROBE_DIR": str(probe), "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(port)
    nodes = [
        subprocess.Popen(cmd, env={**env, "NODE_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for r in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0].decode()[-3000:] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    rank0, rank1 = read_rows(probe / "rank0.jsonl"), read_rows(probe / "rank1.jsonl")
    assert {r["world"] for r in rank0 + rank1} == {2}
    for a, b in zip(rank0, rank1, strict=True):
        assert a["weights"] == b["weights"] and a["rollout"] != b["rollout"]
    assert [h["step"] for h in json.loads((run / "metrics.json").read_text())["curve"]] == [0, 1, 2, 3]


def test_more_nodes_than_one_need_a_data_parallel_strategy():
    from dear.config.schema import ConfigError
    from dear.preflight.settings import train_config

    from conftest import TINY_MODELS, compose

    with pytest.raises(ConfigError, match="trainer.num_nodes=2 needs a data-parallel strategy; use trainer=ddp"):
        train_config(compose(TINY_MODELS + ["trainer.num_nodes=2"]), machine=False)


def test_fsdp_with_chunked_logits_is_refused_in_one_line():
    from dear.config.schema import ConfigError
    from dear.preflight.settings import train_config

    from conftest import TINY_MODELS, compose

    with pytest.raises(ConfigError, match=r"trainer=fsdp shards the LM head's weight .* use step.logits=full"):
        train_config(compose(TINY_MODELS + ["trainer=fsdp", "step.logits=chunked"]), machine=False)
    # the settings alone (this machine has no GPU, which the machine check would refuse: tests/test_preflight.py)
    assert train_config(compose(TINY_MODELS + ["trainer=fsdp"]), machine=False).trainer.strategy == "fsdp"


def test_a_sweep_of_data_parallel_runs_is_refused_before_anything_is_written(tmp_path):
    env = {**os.environ, "DEAR_OUTPUTS": str(tmp_path / "outputs")}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dear-train"), "-m", "trainer=ddp", "seed=0,1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dear-train: error: trainer.strategy=ddp starts one process per device by running the command again, "
        "which a local -m sweep cannot do; run each point as its own dear-train, or sweep on SLURM "
        "(hydra/launcher=slurm hydra.launcher.tasks_per_node=<devices>)"
    ]
    assert not (tmp_path / "outputs").exists()
