"""From a composed config to checked, typed settings, and the checks of the machine a run needs, made
before any model loads: one small function each.

`dear.config.schema` says what is allowed; `train_config` / `eval_config` apply it to what Hydra composed and
call the machine checks a run's settings need (the accelerator, the W&B key, the sandbox, the hub). The expensive
probes (the sandbox, the hub) run once per process and value, however many sweep points ask.

The preflight's other half, `dear.preflight.command`, reads the command line (Hydra's parser, the sweep points, the
setup a real student needs), adds the checks of where Hydra writes and launches (`check_outputs`,
`check_launcher`) and composes each run once for `train_config` / `eval_config`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dear.config.presets import benchmarks
from dear.config.schema import (
    BenchmarkConfig,
    ConfigError,
    DataConfig,
    EvalConfig,
    LoggerConfig,
    ModelPreset,
    TrainConfig,
    TrainerConfig,
    load_config,
)
from dear.data.benchmarks import benchmark_runs_code, leaks
from dear.errors import DearError

# Launchers whose jobs run in this machine's processes; any other (slurm) runs them on other machines.
LOCAL_LAUNCHERS = ("basic", "joblib")


def check_accelerator(trainer: TrainerConfig) -> None:
    """A GPU (or MPS) run on a machine whose torch sees none, or fewer devices than asked for."""
    if trainer.accelerator not in ("gpu", "cuda", "mps"):
        return  # cpu, or auto: whatever the machine has
    import torch

    fix = "use trainer=cpu or trainer=auto (the GPU when there is one)"
    if trainer.accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise DearError(f"trainer.accelerator=mps but torch sees no MPS device here; {fix}")
        return
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not found:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DearError(
            f"trainer.accelerator={trainer.accelerator} but torch {torch.__version__} ({build}) sees no CUDA GPU "
            f"here; {fix}, or run where a GPU is visible with a CUDA build of torch"
        )
    if isinstance(trainer.devices, int) and trainer.devices > found:
        raise DearError(
            f"trainer.devices={trainer.devices} but torch sees {found} GPU{'s' * (found > 1)} here; "
            f"set trainer.devices={found} or trainer.devices=auto"
        )


def check_wandb_key(logger: LoggerConfig) -> None:
    """An online W&B run needs an API key, found where wandb looks: WANDB_API_KEY (or an identity token
    file) or a netrc entry for the W&B host (WANDB_BASE_URL's when set)."""
    if logger.name != "wandb" or logger.offline is not False:
        return
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return  # wandb runs offline whatever the logger asks
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    if _netrc_has(host):
        return
    raise DearError(
        f"logger.offline=false needs a W&B API key and none was found (no WANDB_API_KEY, no netrc entry for "
        f"{host}); run `wandb login`, set WANDB_API_KEY, or keep logger.offline=true (`wandb sync` uploads later)"
    )


def _netrc_has(host: str) -> bool:
    """Whether the netrc file wandb reads (NETRC, else ~/.netrc, else ~/_netrc) holds a password for ``host``."""
    import netrc

    path = os.environ.get("NETRC")
    candidates = [Path(path).expanduser()] if path else [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    for file in candidates:
        try:
            creds = netrc.netrc(str(file)).authenticators(host)
        except (OSError, netrc.NetrcParseError):
            continue
        return bool(creds and creds[2])
    return False


def check_sandbox(benchmark: str) -> None:
    """A code benchmark grades in the sandbox of `dear.eval.code`: probe it now, not at the first grading."""
    if not benchmark_runs_code(benchmark):  # known from its registration, before its problems are loaded
        return
    from dear.eval import code

    try:
        code.isolation()  # probes once per process; a failure leaves it unprobed, so each caller sees it
    except (DearError, OSError) as e:
        reason = " ".join(str(e).split())
        raise DearError(f"benchmark={benchmark} runs model-written code, but {reason}") from None


def cached_config(hub_id: str, revision: str | None) -> Path | None:
    """The local Hugging Face cache's ``config.json`` of ``hub_id`` (never downloads), or None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, "config.json", revision=revision)
    except ValueError:  # not a valid repository id
        return None
    return Path(found) if isinstance(found, str) else None


def check_hub_model(preset: ModelPreset, group: str) -> None:
    """A hub preset loads from the local HF cache, or from a hub that answers: check which, before the
    loader spends a minute in retries. Only ``config.json`` is looked for; the loader names what else is missing."""
    if preset.source != "hub" or preset.path:
        return
    from dear.data.benchmarks import HUB_PROBE_TIMEOUT_S, hub_endpoint, hub_reachable, offline_env

    if cached_config(preset.hub_id, preset.revision):
        return
    if offline_env(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):  # the switches huggingface_hub reads
        why = "HF_HUB_OFFLINE=1"
    else:
        endpoint = hub_endpoint()
        if hub_reachable(endpoint):  # one short request per endpoint and process, no retries
            return
        why = f"the hub ({endpoint}) is not reachable (one probe, {HUB_PROBE_TIMEOUT_S:g} s timeout)"
    revision = f" --revision {preset.revision}" if preset.revision else ""
    raise DearError(
        f"{group}={preset.name}: {preset.hub_id} is not in the Hugging Face cache and {why}; download it with "
        f"`hf download {preset.hub_id}{revision}` or set {group}.path=/local/dir/with/weights"
    )


def check_outputs() -> None:
    """Whether Hydra can make run directories under $DEAR_OUTPUTS, or ./outputs (conf/hydra/default.yaml),
    found without making anything there (a refused run writes nothing)."""
    given = os.environ.get("DEAR_OUTPUTS")
    existing = Path(given or "outputs").expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest folder that exists: Hydra would create the rest in it
    where, fix = (
        (f"DEAR_OUTPUTS={given}", "set DEAR_OUTPUTS to a writable folder")
        if given
        else (f"outputs/ in {Path.cwd()}", "run from a writable folder or set DEAR_OUTPUTS=/a/writable/dir")
    )
    if not existing.is_dir():
        raise DearError(f"{where} cannot hold run directories: {existing} is a file, not a folder; {fix}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".dear-probe-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise DearError(f"{where} cannot hold run directories: {existing} is not writable ({reason}); {fix}") from None


def check_launcher(name: str, config_name: str) -> None:
    """``hydra/launcher=<name>`` resolves to an installed launcher (slurm needs the submitit plugin)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module="dear.conf", version_base="1.3"):
            compose(config_name=config_name, overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    except MissingConfigException as e:
        missing = (e.missing_cfg_file or "").rsplit("/", 1)[-1]
        if missing == name:  # no such launcher at all
            raise DearError(
                f"hydra/launcher={name} is not a launcher here; choose from: {', '.join(e.options or [])}"
            ) from None
        if missing.startswith("submitit"):
            raise DearError(
                f"hydra/launcher={name} needs the submitit launcher plugin (hydra-submitit-launcher), which is not "
                f"installed; pip install -e '.[slurm]'"
            ) from None
        raise DearError(
            f"hydra/launcher={name} needs hydra/launcher/{missing}, which no installed Hydra plugin provides; "
            f"install the plugin that does"
        ) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise DearError(f"hydra/launcher={name}: {str(e).strip().splitlines()[0]}") from None


def train_config(cfg: Any, *, machine: bool = True) -> TrainConfig:
    """``dear-train``'s settings, checked: types, ranges, keys, paths, a writable cache and, unless
    ``machine=False`` (the settings only, e.g. for a run on another machine), what this machine must offer."""
    settings = load_config(cfg, TrainConfig)
    evaluated = benchmarks(settings)  # `benchmark` and eval.benchmarks, each resolved and checked
    for benchmark in evaluated:
        check_no_leak(settings.data, benchmark)
    check_writable(settings.cache_dir, "cache_dir")
    if machine:
        check_accelerator(settings.trainer)
        check_wandb_key(settings.logger)
        check_hub_model(settings.model, "model")
        check_hub_model(settings.teacher, "teacher")
        for benchmark in evaluated:
            check_sandbox(benchmark.name)
    return settings


def check_no_leak(data: DataConfig, benchmark: BenchmarkConfig) -> None:
    """Refuse training prompts drawn from the problems the benchmark evaluates (the rule lives with the
    benchmarks' registrations, `dear.data.benchmarks.leaks`)."""
    if leaks(data.name, data.limit, data.options, benchmark.name, benchmark.limit, benchmark.options):
        raise ConfigError(
            f"data={data.name} trains on the problems benchmark={benchmark.name} evaluates; pick training "
            f"prompts from another set (e.g. data=rg-gsm_symbolic, data=math-train)"
        )


def eval_config(cfg: Any, *, machine: bool = True) -> EvalConfig:
    """``dear-eval``'s settings, checked like `train_config`."""
    settings = load_config(cfg, EvalConfig)
    check_writable(settings.cache_dir, "cache_dir")
    if machine:
        check_accelerator(settings.trainer)
        check_hub_model(settings.model, "model")
        check_sandbox(settings.benchmark.name)
    return settings


def check_writable(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there."""
    p = Path(str(path)).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".probe-"):
            pass
    except OSError as e:
        raise DearError(f"{key}={p} is not writable ({e.strerror or e}); set {key}=/a/writable/dir") from None
    return p
