"""Console entry points: ``dear-train``, ``dear-eval`` (Hydra apps) and ``dear-table``.

The config tree ships inside the package (``dear/conf``, linked as ``conf/`` at the repo
root), so the installed scripts find it from any working directory. Mistakes a user can make
end the program with one line on stderr and exit status 2; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dear.errors import DearError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "teacher", "method", "data", "benchmark", "trainer", "logger", "experiment", "toy_task", "setup")
OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[a-z_]+)=(?P<value>[^=]*)$")

log = logging.getLogger("dear")

if not OmegaConf.has_resolver("dear_run_id"):
    # A random suffix in run directory names, so two runs started in the same second never share one.
    OmegaConf.register_new_resolver("dear_run_id", lambda: uuid.uuid4().hex[:6], use_cache=True)


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_group_overrides(prog: str, argv: list[str]) -> None:
    """Refuse an unknown preset before Hydra composes anything (its own message spans a page)."""
    for arg in argv:
        m = OVERRIDE.match(arg)
        if not m or m["group"] not in GROUPS or "(" in m["value"] or arg.startswith("~"):
            continue
        known = choices(m["group"])
        for value in filter(None, m["value"].split(",")):
            if value not in known and value != "null":
                fail(prog, f"unknown {m['group']} preset '{value}'; choose from: {', '.join(known)}")


def guarded(prog: str, fn, *args):
    """Run ``fn``; a user's mistake becomes one line and exit status 2."""
    try:
        return fn(*args)
    except DearError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(prog, str(e))


# Hydra's own flags: those that take a value, and those after which nothing runs (no check needed).
_FLAGS_WITH_VALUE = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
}
_FLAGS_NOTHING_RUNS = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
    "--version",
    "--resolve",
    "-p",
    "--package",
}


def user_overrides(argv: list[str]) -> list[str] | None:
    """The config overrides in ``argv`` (Hydra's flags dropped); None when Hydra will run nothing."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _FLAGS_NOTHING_RUNS:
            return None
        if arg in _FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-") and not arg.lstrip("+~").startswith("hydra"):
            out.append(arg)
    return out


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """Override lists that cover every value of every sweep once (the others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = [
        list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()] for o in parsed
    ]
    firsts = [f"{o.get_key_element()}={v[0]}" for o, v in zip(parsed, values)]
    points = [firsts]
    for i, (o, vs) in enumerate(zip(parsed, values)):
        points += [firsts[:i] + [f"{o.get_key_element()}={v}"] + firsts[i + 1 :] for v in vs[1:]]
    return points


def _not_a_key(overrides: list[str], config_name: str, message: str) -> str:
    """Hydra's "Could not override 'a.b'" as one line that lists the keys ``a`` does have."""
    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return message.strip().splitlines()[0]
    key = m[1]
    parent, _, leaf = key.rpartition(".")
    rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
    cfg = _compose(rest, config_name)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if parent == "method":
        from dear.config.schema import MethodConfig

        MethodConfig.keys_for({**OmegaConf.to_container(node, resolve=True), leaf: None})  # raises the one line
    keys = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "none (not a section)"
    return f"{key} is not a setting of {parent or 'the config'}; valid keys: {keys}"


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="dear.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def choose_setup(overrides: list[str]) -> str | None:
    """The setup a run needs but did not name: ``real-math`` for a real student, None to keep the default.

    A run that names ``setup=`` or an ``experiment=`` keeps what it says. A sweep over students of both
    kinds must name its setup.
    """
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if {"setup", "experiment"} & keys:
        return None
    kinds = {"toy" if _student(point).source == "toy" else "real" for point in sweep_points(overrides)}
    if len(kinds) > 1:
        raise DearError(
            "this sweep mixes toy and real students; say which settings it runs with: setup=toy or setup=real-math"
        )
    return "real-math" if kinds == {"real"} else None


def _student(point: list[str]) -> DictConfig:
    """The student a sweep point names, composed from its ``model`` overrides alone: the others may be knobs of
    groups the real setup brings (``data.limit``), which the default config does not have."""
    own = [o for o in point if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == "model"]
    return _compose(own, "train").model


def with_setup(prog: str, argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with ``setup=real-math`` first when the student is a real model and no setup was named,
    and the line that says so (None when nothing was added)."""
    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        setup = choose_setup(overrides)
    except DearError as e:
        fail(prog, str(e))
    except Exception:  # noqa: BLE001  (a bad override: preflight or Hydra reports it in its own words)
        return argv, None
    if setup is None:
        return argv, None
    return [f"setup={setup}", *argv], (
        f"{prog}: the student is a real model, so setup={setup} (data, benchmark, "
        f"trainer, optimisation: conf/setup/{setup}.yaml); setup=toy keeps the toy ones"
    )


def one_process_per_job(settings, sweep: bool):
    """A sweep's jobs each run in one process: Lightning starts DDP/FSDP ranks by running the command again,
    which inside a sweep would start the whole sweep again."""
    if sweep and settings.trainer.strategy != "auto":
        raise DearError(
            f"trainer.strategy={settings.trainer.strategy} starts one process per device by running the command "
            f"again, which a -m sweep cannot do; run each point as its own dear-train"
        )
    return settings


LAUNCHER = re.compile(r"^[+~]{0,2}hydra/launcher=(?P<name>[^=,]+)$")


def launcher_choice(argv: list[str]) -> str | None:
    """The ``hydra/launcher=<name>`` that ``argv`` asks for, if any."""
    names = [m["name"] for m in map(LAUNCHER.match, argv) if m]
    return names[-1] if names else None


def runs_here(argv: list[str]) -> bool:
    """Whether the runs start on this machine; a cluster launcher (slurm) runs them on its nodes, where
    `dear.config.train_config` checks the machine (GPU, sandbox, hub) before any model loads."""
    from dear.preflight import LOCAL_LAUNCHERS

    return (launcher_choice(argv) or "basic") in LOCAL_LAUNCHERS


def preflight(prog: str, config_name: str, argv: list[str], check) -> None:
    """Compose and check the config of every run ``argv`` asks for, before Hydra creates anything.

    A bad value, an unknown key, a missing path, a launcher that is not installed, an unwritable
    outputs folder or a machine that lacks what the run needs (``check``) ends the program here in
    one line, exit status 2, with nothing written.
    """
    overrides = user_overrides(argv)
    if overrides is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from dear.preflight import check_launcher, check_outputs

    try:
        launcher = launcher_choice(argv)
        if launcher:
            check_launcher(launcher, config_name)  # Hydra's own message prints its search path
        check_outputs()  # before Hydra makes the run directory there
    except DearError as e:
        fail(prog, str(e))
    try:
        points = sweep_points(overrides)
    except HydraException as e:
        fail(prog, str(e).strip().splitlines()[0])
    for point in points:
        try:
            check(_compose(point, config_name))
        except (HydraException, OmegaConfBaseException) as e:
            try:
                fail(prog, _not_a_key(point, config_name, str(e)))
            except DearError as one_line:
                fail(prog, str(one_line))
        except DearError as e:
            fail(prog, str(e))


def _number(x: float | None) -> float:
    """A summary value for printing: NaN only when it is missing (0.0 is a value)."""
    return float("nan") if x is None else float(x)


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def _train_app(cfg: DictConfig) -> None:
    from dear.train import train as run_train

    metrics = guarded("dear-train", run_train, cfg, run_dir())
    if metrics is None:  # a data-parallel rank other than 0: rank 0 reports
        return
    for name, b in metrics["benchmarks"].items():
        log.info(
            "student %s on %s: accuracy %.3f -> %.3f (%+.1f points); held-out reverse KL %.4f -> %.4f",
            cfg.model.name,
            name,
            b["accuracy_before"],
            b["accuracy_after"],
            100 * b["gain"],
            _number(metrics["heldout_reverse_kl"]["before"]),
            _number(metrics["heldout_reverse_kl"]["after"]),
        )
    log.info("run directory: %s (metrics.json, config, checkpoints, student/, wandb/)", metrics["run_dir"])
    if metrics.get("selection_pages"):
        log.info("what %s selects (start, end): %s", cfg.method.name, " ".join(metrics["selection_pages"]))


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def _eval_app(cfg: DictConfig) -> None:
    from dear.evaluate import evaluate

    summary = guarded("dear-eval", evaluate, cfg, run_dir())
    log.info(
        "%s on %s: %s",
        cfg.model.name,
        cfg.benchmark.name,
        ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary["metrics"].items()),
    )
    log.info("run directory: %s", summary["run_dir"])


def train() -> None:
    from dear.preflight import train_config

    check_group_overrides("dear-train", sys.argv[1:])
    sys.argv[1:], note = with_setup("dear-train", sys.argv[1:])
    sweep = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    here = runs_here(sys.argv[1:])
    preflight(
        "dear-train", "train", sys.argv[1:], lambda cfg: one_process_per_job(train_config(cfg, machine=here), sweep)
    )
    if note:
        print(note, file=sys.stderr)
    _train_app()


def evaluate() -> None:
    from dear.preflight import eval_config

    check_group_overrides("dear-eval", sys.argv[1:])
    here = runs_here(sys.argv[1:])
    preflight("dear-eval", "eval", sys.argv[1:], lambda cfg: eval_config(cfg, machine=here))
    _eval_app()


def table() -> None:
    from dear.tables.collate import main

    main(sys.argv[1:])
