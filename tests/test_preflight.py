"""Every late failure a GPU user would meet is one line before any model loads (dear/preflight/settings.py, the schema).

Each case runs ``dear-train``/``dear-eval`` in this process with Hydra's app replaced by a stub: a refusal must
exit 2 with exactly one line on stderr naming the fix, before the app (and with it any model loading or run
directory) starts. Where the check reads the machine (CUDA, the W&B key, the sandbox, the hub, the launcher
plugin), its inputs are patched both ways, so the same command is also seen to pass.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dear import cli
from dear.errors import DearError
from dear.eval import code

from conftest import compose

TOY_CODE = ["benchmark=humaneval", "benchmark.max_new_tokens=48"]  # the toy pair on a code benchmark


class Cli:
    """``dear-train``/``dear-eval`` in this process; ``started`` lists the Hydra apps that were reached."""

    def __init__(self, monkeypatch, capsys, tmp_path: Path):
        self.monkeypatch, self.capsys, self.outputs = monkeypatch, capsys, tmp_path / "outputs"
        monkeypatch.setenv("DEAR_OUTPUTS", str(self.outputs))
        monkeypatch.setenv("DEAR_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        self.started: list[str] = []
        monkeypatch.setattr(cli, "_train_app", lambda: self.started.append("dear-train"))
        monkeypatch.setattr(cli, "_eval_app", lambda: self.started.append("dear-eval"))

    def call(self, tool: str, *args: str) -> None:
        self.monkeypatch.setattr(sys, "argv", [tool, *args])
        (cli.train if tool == "dear-train" else cli.evaluate)()

    def refused(self, tool: str, *args: str) -> str:
        """The one error line; nothing started, nothing written under DEAR_OUTPUTS."""
        self.capsys.readouterr()
        self.started.clear()
        with pytest.raises(SystemExit) as stop:
            self.call(tool, *args)
        assert stop.value.code == 2
        lines = self.capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), lines
        assert not self.started, "Hydra's app started after a refusal"
        assert not self.outputs.exists(), "a refused run wrote under DEAR_OUTPUTS"
        return lines[0]

    def accepted(self, tool: str, *args: str) -> None:
        self.started.clear()
        self.call(tool, *args)
        assert self.started == [tool]


@pytest.fixture
def run(monkeypatch, capsys, tmp_path) -> Cli:
    return Cli(monkeypatch, capsys, tmp_path)


def see_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


# --- 1. a GPU trainer where torch sees no CUDA ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, args",
    [
        ("dear-train", ["trainer=gpu"]),
        ("dear-train", ["trainer.accelerator=cuda"]),
        ("dear-train", ["trainer=fsdp"]),
        ("dear-train", ["trainer=ddp", "trainer.accelerator=gpu"]),
        ("dear-eval", ["trainer=gpu"]),
    ],
)
def test_a_gpu_trainer_without_cuda_is_refused(run, monkeypatch, tool, args):
    see_gpus(monkeypatch, 0)
    line = run.refused(tool, *args)
    assert "sees no CUDA GPU" in line and "trainer=cpu" in line, line
    see_gpus(monkeypatch, 1)
    run.accepted(tool, *args)


def test_more_gpus_than_torch_sees_is_refused(run, monkeypatch):
    see_gpus(monkeypatch, 2)
    line = run.refused("dear-train", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=4")
    assert "trainer.devices=4 but torch sees 2 GPUs" in line and "trainer.devices=auto" in line, line
    run.accepted("dear-train", "trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2")


# --- 2. a toy model paired with a real one -------------------------------------------------------------------


def test_a_toy_model_paired_with_a_real_one_is_refused(run):
    line = run.refused("dear-train", "model=qwen-1.5b")
    assert "model=qwen-1.5b is a real model but teacher=toy-teacher is a toy one" in line, line
    assert "teacher=qwen-14b" in line and "experiment=qwen-1.5b-7b" in line, line
    line = run.refused("dear-train", "teacher=qwen-7b")
    assert "teacher=qwen-7b is a real model but model=toy-student is a toy one" in line, line
    assert "model=qwen-1.5b" in line and "experiment=qwen-1.5b-7b" in line, line
    line = run.refused("dear-train", "model=llama-1b")  # no experiment pairs it: the line says where to look
    assert "name a real teacher that shares its tokenizer (teacher=<preset>, conf/teacher/)" in line, line
    # a pair of one kind passes the rule (the machine's checks aside)
    from dear.preflight.settings import train_config

    assert train_config(compose(["model=qwen-1.5b", "teacher=qwen-7b"]), machine=False).teacher.name == "qwen-7b"


# --- 3. an online W&B run without an API key ----------------------------------------------------------------


def test_online_wandb_without_a_key_is_refused(run, monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    line = run.refused("dear-train", "logger.offline=false")
    assert "needs a W&B API key" in line and "api.wandb.ai" in line, line
    assert "wandb login" in line and "WANDB_API_KEY" in line and "logger.offline=true" in line, line
    run.accepted("dear-train", "logger.offline=true")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    run.accepted("dear-train", "logger.offline=false")
    monkeypatch.delenv("WANDB_API_KEY")
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    run.accepted("dear-train", "logger.offline=false")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # a key for another host does not count
    assert "wandb.example.com" in run.refused("dear-train", "logger.offline=false")


# --- 4. a code benchmark whose sandbox cannot be built -------------------------------------------------------


def test_a_code_benchmark_probes_the_sandbox_first(run, monkeypatch):
    monkeypatch.delenv("DEAR_SANDBOX", raising=False)
    monkeypatch.setattr(code, "_mode", None)  # not probed yet in this process
    monkeypatch.setattr(code.cgroup, "unavailable", lambda: None)
    probes = []

    def probe(result):
        return lambda mode: probes.append(mode) or code.ExecResult(result, None, "", "", 0.0, note="no user namespaces")

    monkeypatch.setattr(code, "_probe", probe("error"))
    line = run.refused("dear-train", *TOY_CODE)
    assert "benchmark=humaneval runs model-written code, but cannot isolate untrusted code here" in line, line
    assert "no user namespaces" in line and "DEAR_SANDBOX=weak" in line, line
    assert "humaneval" in run.refused("dear-eval", *TOY_CODE)
    monkeypatch.setattr(code, "_probe", probe("passed"))
    probes.clear()
    run.accepted("dear-train", "-m", *TOY_CODE, "seed=0,1,2")
    assert len(probes) == 1, "the sandbox is probed once, not once per sweep point"
    run.accepted("dear-eval", *TOY_CODE)
    assert len(probes) == 1


# --- 5. run directories that cannot be made -----------------------------------------------------------------


def test_an_unwritable_outputs_folder_is_refused(run, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DEAR_OUTPUTS", str(blocker / "outputs"))
    line = run.refused("dear-train")
    assert f"DEAR_OUTPUTS={blocker / 'outputs'} cannot hold run directories" in line, line
    assert "is a file, not a folder; set DEAR_OUTPUTS to a writable folder" in line, line
    assert "dear-eval: error: DEAR_OUTPUTS=" in run.refused("dear-eval")
    monkeypatch.delenv("DEAR_OUTPUTS")  # the default, outputs/ in the working folder
    work = tmp_path / "work"
    work.mkdir()
    (work / "outputs").write_text("a file where the folder goes")
    monkeypatch.chdir(work)
    line = run.refused("dear-train", "seed=1")
    assert f"outputs/ in {work} cannot hold run directories" in line and "set DEAR_OUTPUTS=" in line, line
    fresh = tmp_path / "not" / "yet" / "there"
    monkeypatch.setenv("DEAR_OUTPUTS", str(fresh))
    run.accepted("dear-train")
    assert not (tmp_path / "not").exists(), "the check made the folder it checked"


# --- 6. a launcher whose plugin is not installed ------------------------------------------------------------


def test_the_slurm_launcher_without_its_plugin_says_how_to_install_it(run, monkeypatch):
    from hydra.core.config_store import ConfigStore

    sweep = ["-m", "hydra/launcher=slurm", "seed=0,1"]
    line = run.refused("dear-train", *sweep)
    assert "hydra-submitit-launcher" in line and "pip install -e '.[slurm]'" in line, line
    assert "choose from: basic, joblib, slurm" in run.refused("dear-train", "-m", "hydra/launcher=nope", "seed=0,1")
    run.accepted("dear-train", "-m", "hydra/launcher=joblib", "seed=0,1")
    # with the plugin installed (its config registered as hydra-submitit-launcher does), the same sweep passes,
    # and the GPU it asks for is checked on the nodes that run it, not on this machine
    monkeypatch.setitem(ConfigStore.instance().repo["hydra"]["launcher"], "submitit_slurm.yaml", None)  # undone after
    ConfigStore.instance().store(group="hydra/launcher", name="submitit_slurm", node={"_target_": "a.Launcher"})
    see_gpus(monkeypatch, 0)
    run.accepted("dear-train", *sweep, "trainer=gpu")
    run.refused("dear-train", "-m", "hydra/launcher=joblib", "seed=0,1", "trainer=gpu")
    # a sweep of data-parallel runs: each SLURM job's tasks are its ranks; a local sweep would start itself again
    run.accepted("dear-train", *sweep, "trainer=ddp", "trainer.num_nodes=2")
    assert "a local -m sweep cannot do" in run.refused("dear-train", "-m", "seed=0,1", "trainer=ddp")


# --- 7. a hub model that is neither cached nor reachable ----------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cache_config(hub_cache: Path, repo_id: str) -> None:
    """What `hf download` leaves in the cache, as far as ``try_to_load_from_cache`` looks: a snapshot's config.json."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


REAL_PAIR = ["model=qwen-1.5b", "teacher=qwen-7b"]


@pytest.fixture
def hub_cache(monkeypatch, tmp_path) -> Path:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_an_uncached_hub_model_offline_is_refused_at_once(run, hub_cache):
    line = run.refused("dear-train", *REAL_PAIR)
    assert "model=qwen-1.5b: Qwen/Qwen2.5-1.5B-Instruct is not in the Hugging Face cache and HF_HUB_OFFLINE=1" in line
    assert "`hf download Qwen/Qwen2.5-1.5B-Instruct`" in line and "model.path=" in line, line
    cache_config(hub_cache, "Qwen/Qwen2.5-1.5B-Instruct")
    line = run.refused("dear-train", *REAL_PAIR)
    assert "teacher=qwen-7b: Qwen/Qwen2.5-7B-Instruct" in line and "teacher.path=" in line, line
    assert "dear-eval: error: model=qwen-7b" in run.refused("dear-eval", "model=qwen-7b")
    cache_config(hub_cache, "Qwen/Qwen2.5-7B-Instruct")
    run.accepted("dear-train", *REAL_PAIR)
    run.accepted("dear-eval", "model=qwen-7b")


def test_an_uncached_hub_model_with_no_hub_is_refused_in_seconds(run, monkeypatch, hub_cache):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    t0 = time.monotonic()
    line = run.refused("dear-train", *REAL_PAIR)
    assert time.monotonic() - t0 < 10
    assert f"is not in the Hugging Face cache and the hub ({endpoint}) is not reachable" in line, line
    assert "`hf download Qwen/Qwen2.5-1.5B-Instruct`" in line and "model.path=" in line, line
    # a hub that answers (here, a server on loopback) lets the loader fetch what is not cached
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        run.accepted("dear-train", *REAL_PAIR)
    finally:
        server.shutdown()
        server.server_close()


# --- 8. a response length beyond a model's context ----------------------------------------------------------


@pytest.mark.parametrize(
    "tool, args, says, fix",
    [
        (
            "dear-train",
            ["rollout.max_new_tokens=100000"],
            "rollout.max_new_tokens=100000 is more than model.context_length=256",
            "set rollout.max_new_tokens below 256",
        ),
        (
            "dear-train",
            ["benchmark.max_new_tokens=300"],
            "benchmark.max_new_tokens=300 is more than model.context_length=256",
            "set benchmark.max_new_tokens below 256",
        ),
        (
            "dear-train",
            ["rollout.max_new_tokens=200", "teacher.context_length=150"],
            "rollout.max_new_tokens=200 is more than teacher.context_length=150",
            "set rollout.max_new_tokens below 150",
        ),
        (
            "dear-eval",
            ["benchmark.max_new_tokens=1000"],
            "benchmark.max_new_tokens=1000 is more than model.context_length=256",
            "set benchmark.max_new_tokens below 256",
        ),
    ],
)
def test_a_response_longer_than_the_context_is_refused(run, tool, args, says, fix):
    line = run.refused(tool, *args)
    assert says in line and fix in line, line


def test_a_response_that_fits_the_context_passes(run):
    run.accepted("dear-train", "rollout.max_new_tokens=256", "benchmark.max_new_tokens=256")
    run.accepted("dear-eval", "benchmark.max_new_tokens=256")


# --- the same checks guard dear.train.train and dear.evaluate.evaluate called from Python ----------------------


def test_train_and_evaluate_check_the_machine_before_loading_a_model(monkeypatch, tmp_path, hub_cache):
    import dear.evaluate
    import dear.train

    def no_loading(*args, **kwargs):
        pytest.fail("a model was loaded before the machine was checked")

    monkeypatch.setattr(dear.train, "load_model", no_loading)
    monkeypatch.setattr(dear.evaluate, "load_model", no_loading)
    monkeypatch.setattr(dear.train, "eval_problems", no_loading)
    monkeypatch.setattr(dear.evaluate, "eval_problems", no_loading)
    see_gpus(monkeypatch, 0)
    cache = f"cache_dir={tmp_path / 'cache'}"
    with pytest.raises(DearError, match="sees no CUDA GPU"):
        dear.train.train(compose(["trainer=gpu", cache]), tmp_path)
    with pytest.raises(DearError, match="sees no CUDA GPU"):
        dear.evaluate.evaluate(compose(["trainer=gpu", cache], "eval"), tmp_path)
    with pytest.raises(DearError, match="not in the Hugging Face cache"):
        dear.train.train(compose([*REAL_PAIR, "setup=real-math", "trainer=cpu", cache]), tmp_path)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(DearError, match="needs a W&B API key"):
        dear.train.train(compose(["logger.offline=false", cache]), tmp_path)
