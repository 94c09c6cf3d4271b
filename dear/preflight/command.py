"""The preflight's command-line side: every run ``dear-train`` / ``dear-eval`` asks for, composed once and checked
before Hydra writes anything; a mistake ends the program in one line on stderr, exit status 2, nothing written.

In the order `dear.cli.train` calls them: `take_flag` (``--dry-run``, which Hydra's parser must not see),
`check_group_overrides` (a preset that does not exist), `with_setup` (a real student with no ``setup=`` gets
``setup=real-math``, chosen from the presets' files, not by composing), `resume_in_place` (``ckpt_path=`` a run's
``checkpoints/last.ckpt``: the run goes on in that run's folder), then `preflight`: where Hydra writes and launches,
then each sweep point composed once and handed to `dear.preflight.train_config` / `eval_config`, which check the
settings and this machine (dear/preflight/settings.py); or, with ``--dry-run``, `dry_run`: every run of the sweep
checked and listed, none started. Which words are overrides, and whether Hydra runs the task at all, is asked of
Hydra's own argument parser.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf, open_dict

from dear.config.presets import CONF_DIR, choices
from dear.errors import DearError
from dear.preflight.settings import LOCAL_LAUNCHERS, check_launcher, check_outputs

LOCAL_CONFIG = CONF_DIR / "local" / "default.yaml"  # train.yaml's `optional local`: it may name another student
GROUPS = ("model", "teacher", "method", "data", "benchmark", "trainer", "logger", "experiment", "toy_task", "setup")
OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>[a-z_]+)=(?P<value>[^=]*)$")
LAUNCHER = re.compile(r"^[+~]{0,2}hydra/launcher=(?P<name>[^=,]+)$")


def fail(prog: str, message: str) -> NoReturn:
    """End the program as every user mistake ends it: one line on stderr, exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


# --- the command line, as Hydra's apps read it ----------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """What Hydra's parser reads in a command line."""

    overrides: list[str]  # the config's overrides; Hydra's own (hydra.*, hydra/<group>=) left out
    hydra: list[str]  # Hydra's own overrides (hydra.run.dir=..., hydra/launcher=...)
    overrides_at: int  # where the overrides start in argv: Hydra's parse reads one run of them, after any flags
    launcher: str | None  # the hydra/launcher=<name> asked for, if any
    multirun: bool
    runs: bool  # whether Hydra goes on to run the task (it does not after --cfg, --info, --help ...)


class _ParserEnds(Exception):
    """Hydra's parser would end the program here: --version, a flag it does not know, a bad flag value."""


def _parser_ends(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise _ParserEnds


def read_command(argv: list[str]) -> Command | None:
    """``argv`` read by the parser Hydra's apps use (`hydra._internal.utils.get_args_parser`), so a new Hydra flag
    needs no table here; None where that parser ends the program, which then runs no task.

    Overrides written after one of Hydra's flags are read too: Hydra's own parse refuses them (with its usage),
    but they say what the user meant to run."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.exit = parser.error = _parser_ends  # argparse would sys.exit; Hydra's own parse says why, later
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --version prints before it exits
            args, unknown = parser.parse_known_intermixed_args(argv)
    except _ParserEnds:
        return None
    if unknown:  # a flag Hydra does not know: its parse ends the program
        return None
    launchers = [m["name"] for m in map(LAUNCHER.match, args.overrides) if m]
    return Command(
        overrides=[o for o in args.overrides if not _is_hydra_override(o)],
        hydra=[o for o in args.overrides if _is_hydra_override(o)],
        overrides_at=argv.index(args.overrides[0]) if args.overrides else len(argv),
        launcher=launchers[-1] if launchers else None,
        multirun=args.multirun,
        runs=_runs_the_task(args),
    )


def _runs_the_task(args: argparse.Namespace) -> bool:
    """Whether `hydra._internal.utils._run_hydra` runs the task: --help and --hydra-help print and exit; --cfg,
    --info and --shell-completion print instead; --resolve goes with --cfg (alone it is refused), as does --run with
    --multirun; --experimental-rerun runs a pickled config, which the overrides do not change."""
    prints = args.help or args.hydra_help or args.cfg is not None or args.info is not None or args.shell_completion
    refused = args.resolve or (args.run and args.multirun)
    return not (prints or refused or args.experimental_rerun is not None)


def _is_hydra_override(override: str) -> bool:
    """Hydra's own settings, which composing a run does not read; not ``hydra.searchpath``, which says where config
    groups are (dear-table's generated ``grid_run`` group, dear/tables/grid.py)."""
    key = _key(override)
    return key != "hydra.searchpath" and (key == "hydra" or key.startswith(("hydra.", "hydra/")))


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def user_overrides(argv: list[str]) -> list[str] | None:
    """The config overrides in ``argv`` (Hydra's flags and its own overrides left out); None when Hydra will run
    nothing, so there is nothing to check."""
    command = read_command(argv)
    return command.overrides if command and command.runs else None


def is_sweep(argv: list[str]) -> bool:
    command = read_command(argv)
    return bool(command and command.multirun)


def runs_here(argv: list[str]) -> bool:
    """Whether the runs start on this machine; a cluster launcher (slurm) runs them on its nodes, where
    `dear.preflight.train_config` checks the machine (GPU, sandbox, hub) before any model loads."""
    command = read_command(argv)
    return ((command and command.launcher) or "basic") in LOCAL_LAUNCHERS


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


def every_point(command: Command) -> list[list[str]]:
    """The override lists of every run ``command`` starts, in the order of their job numbers: a multirun's as
    Hydra's basic sweeper splits it (every combination), else the one run's."""
    if not command.multirun:
        return [command.overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(command.overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def take_flag(argv: list[str], flag: str) -> tuple[list[str], bool]:
    """``argv`` without ``flag`` (one of dear's own, which Hydra's parser would refuse), and whether it was there."""
    return [a for a in argv if a != flag], flag in argv


# --- presets and the setup a run needs ------------------------------------------------------------------------


def check_group_overrides(prog: str, argv: list[str]) -> None:
    """Refuse an unknown preset before Hydra composes anything (its own message spans a page)."""
    command = read_command(argv)
    for arg in command.overrides if command else []:  # no command: Hydra's parser says why, and runs nothing
        m = OVERRIDE.match(arg)
        if not m or m["group"] not in GROUPS or "(" in m["value"] or arg.startswith("~"):
            continue
        known = choices(m["group"])
        for value in filter(None, m["value"].split(",")):
            if value not in known and value != "null":
                fail(prog, f"unknown {m['group']} preset '{value}'; choose from: {', '.join(known)}")


def choose_setup(overrides: list[str]) -> str | None:
    """The setup a run needs but did not name: ``real-math`` for a real student, None to keep the default.

    A run that names ``setup=`` or an ``experiment=`` keeps what it says. A sweep over students of both
    kinds must name its setup.
    """
    if {"setup", "experiment"} & {_key(o) for o in overrides}:
        return None
    kinds = {"toy" if student_source(point) == "toy" else "real" for point in sweep_points(overrides)}
    if len(kinds) > 1:
        raise DearError(
            "this sweep mixes toy and real students; say which settings it runs with: setup=toy or setup=real-math"
        )
    return "real-math" if kinds == {"real"} else None


def student_source(point: list[str]) -> str:
    """The ``source`` of the student a sweep point names (toy, hub, smollm2...): a ``model.source=`` override, else
    its preset's file. Read, not composed, so `preflight` composes each point once, with the setup chosen from this.

    A preset whose file does not say (it takes ``source`` from a defaults list), or a local config (which may name
    another student), is composed from the point's ``model`` overrides instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    name, source = _default_student(), None
    for o in OverridesParser.create().parse_overrides(point):
        if o.key_or_group == "model":
            name = o.get_value_element_as_str()
        elif o.key_or_group == "model.source":
            source = o.get_value_element_as_str()
    if source is None and not LOCAL_CONFIG.exists():
        source = OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml").get("source")
    if isinstance(source, str):
        return source
    # the model's group alone: the point's other keys may be knobs of groups the real setup brings (data.limit)
    return compose([o for o in point if _key(o).split(".", 1)[0] == "model"], "train").model.source


@functools.cache
def _default_student() -> str:
    """The ``model`` entry of train.yaml's defaults list."""
    defaults = OmegaConf.load(CONF_DIR / "train.yaml").defaults
    return next(entry["model"] for entry in defaults if isinstance(entry, DictConfig) and "model" in entry)


def with_setup(prog: str, argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with ``setup=real-math`` first among the overrides when the student is a real model and no setup
    was named, and the line that says so (None when nothing was added). Not before a flag: Hydra's parse takes
    the overrides as one run of words, so ``-m model=qwen-1.5b`` must not become ``setup=... -m model=...``."""
    command = read_command(argv)
    if command is None:
        return argv, None
    try:
        setup = choose_setup(command.overrides)
    except DearError as e:
        fail(prog, str(e))
    except Exception:  # noqa: BLE001  (a bad override: preflight or Hydra reports it in its own words)
        return argv, None
    if setup is None:
        return argv, None
    at = command.overrides_at
    return [*argv[:at], f"setup={setup}", *argv[at:]], (
        f"{prog}: the student is a real model, so setup={setup} (data, benchmark, "
        f"trainer, optimisation: conf/setup/{setup}.yaml); setup=toy keeps the toy ones"
    )


# --- a resumed run goes on in its own folder -----------------------------------------------------------------


def resume_in_place(prog: str, argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` with ``hydra.run.dir=<run>`` among the overrides when ``ckpt_path`` is ``<run>/checkpoints/last.ckpt``
    of an unfinished run, so the resumed run writes its metrics.json, curve, pages and checkpoints into the folder
    that holds the steps before; and the line that says where it runs (None when nothing was added).

    Everything else keeps Hydra's new timestamped folder (metrics.json records ``resumed_from``): a ``hydra.run.dir``
    the user gave, a multirun (its jobs live in the sweep's folder, each resuming from the checkpoint), a checkpoint
    that is not a run's ``checkpoints/last.ckpt``, and a finished run, whose results a new run must not overwrite.
    A run folder is one Hydra made (``.hydra/``). A folder this process cannot write to ends the program here."""
    command = read_command(argv)
    if command is None or not command.runs or command.multirun:
        return argv, None
    if any(_key(o) == "hydra.run.dir" for o in command.hydra):
        return argv, None
    run = run_of_checkpoint(command.overrides)
    if run is None:
        return argv, None
    if (run / "metrics.json").is_file():
        return argv, f"{prog}: {run} holds a finished run; this one starts in a new folder"
    try:
        with tempfile.NamedTemporaryFile(dir=run, prefix=".dear-probe-"):
            pass
    except OSError as e:
        fail(
            prog,
            f"cannot resume in {run}: it is not writable ({e.strerror or e}); make it writable, or give "
            f"hydra.run.dir=/another/folder to go on there",
        )
    at = command.overrides_at
    return [*argv[:at], as_override("hydra.run.dir", str(run)), *argv[at:]], (
        f"{prog}: resuming in {run} (the folder of {run / 'checkpoints' / 'last.ckpt'})"
    )


def run_of_checkpoint(overrides: list[str]) -> Path | None:
    """The run folder whose ``checkpoints/last.ckpt`` the ``ckpt_path`` override names, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # preflight reports a bad override in its own words
        return None
    given = [o.value() for o in parsed if o.key_or_group == "ckpt_path"]
    if not given or not isinstance(given[-1], str):
        return None
    ckpt = Path(given[-1]).expanduser().absolute()
    run = ckpt.parent.parent
    if ckpt.name != "last.ckpt" or ckpt.parent.name != "checkpoints" or not ckpt.is_file():
        return None
    return run if (run / ".hydra").is_dir() else None


def as_override(key: str, value: str) -> str:
    """``key=value`` as Hydra's override grammar reads it back: ``value`` as it is where it reads back as itself, else
    quoted (a comma, ``=``, ``#``, ``~``, a quote, a letter beyond ASCII...): a quote, and a run of backslashes before a
    quote or the end, escaped; ``${`` escaped, so OmegaConf does not take it for an interpolation."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    with contextlib.suppress(HydraException):
        if OverridesParser.create().parse_override(f"{key}={value}").value() == value and "${" not in value:
            return f"{key}={value}"
    body = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value.replace("${", "\\${"))
    return f"{key}='{body}'"


# --- composing and checking each run --------------------------------------------------------------------------


def compose(overrides: list[str], config_name: str, *, hydra: bool = False) -> DictConfig:
    """The config Hydra's app ``config_name`` composes from ``overrides`` (its own hydra node left out, unless
    ``hydra``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="dear.conf", version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra)


def not_a_key(overrides: list[str], config_name: str, message: str) -> str:
    """Hydra's "Could not override 'a.b'" as one line that lists the keys ``a`` does have (composing once more:
    only on this way out)."""
    m = re.search(r"Could not override '([^']+)'", message)
    if not m:
        return message.strip().splitlines()[0]
    key = m[1]
    parent, _, leaf = key.rpartition(".")
    rest = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
    cfg = compose(rest, config_name)
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if parent == "method":
        from dear.config.schema import MethodConfig

        MethodConfig.keys_for({**OmegaConf.to_container(node, resolve=True), leaf: None})  # raises the one line
    keys = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "none (not a section)"
    return f"{key} is not a setting of {parent or 'the config'}; valid keys: {keys}"


def one_process_per_job(settings: Any, sweep: bool) -> Any:
    """A local sweep's jobs each run in one process: Lightning starts DDP/FSDP ranks by running the command again,
    which inside a sweep would start the whole sweep again (on SLURM, each job's tasks are its ranks: allowed)."""
    if sweep and settings.trainer.strategy != "auto":
        raise DearError(
            f"trainer.strategy={settings.trainer.strategy} starts one process per device by running the command "
            f"again, which a local -m sweep cannot do; run each point as its own dear-train, or sweep on SLURM "
            f"(hydra/launcher=slurm hydra.launcher.tasks_per_node=<devices>)"
        )
    return settings


def preflight(prog: str, config_name: str, argv: list[str], check: Callable[[DictConfig], Any]) -> None:
    """Compose and check the config of every run ``argv`` asks for, before Hydra creates anything.

    A bad value, an unknown key, a missing path, a launcher that is not installed, an unwritable
    outputs folder or a machine that lacks what the run needs (``check``) ends the program here in
    one line, exit status 2, with nothing written. Each sweep point is composed once.
    """
    command = read_command(argv)
    if command is None or not command.runs or os.environ.get("HYDRA_FULL_ERROR") == "1":
        return
    check_where(prog, config_name, command)
    for point in split_or_fail(prog, lambda: sweep_points(command.overrides)):
        check_point(prog, config_name, point, check)


def dry_run(prog: str, config_name: str, argv: list[str], check: Callable[[DictConfig], Any]) -> None:
    """``--dry-run``: check every run ``argv`` asks for as `preflight` does (every combination of a sweep, not a
    cover), then print one line per run (its overrides and its folder) and their count. Nothing is started or
    written; a mistake ends the program as in `preflight`."""
    command = read_command(argv)
    if command is None:  # a flag Hydra's parser refuses: its own words, as without --dry-run
        from hydra._internal.utils import get_args_parser

        get_args_parser().parse_args(argv)
        sys.exit(2)
    if not command.runs:
        fail(prog, "--dry-run lists the runs a command starts, and with --cfg, --info or --help it starts none")
    check_where(prog, config_name, command)
    points = split_or_fail(prog, lambda: every_point(command))
    jobs = range(len(points)) if command.multirun else [None]
    folders = [check_point(prog, config_name, p, check, hydra=command.hydra, job=j) for p, j in zip(points, jobs)]
    for i, (point, folder) in enumerate(zip(points, folders)):
        print(f"{i:>3}  {shlex.join(point) or '(the defaults)'}  ->  {folder}")
    runs = f"{len(points)} run{'s' * (len(points) != 1)}"
    print(f"{prog} --dry-run: {runs} checked; none started, nothing written")


def check_where(prog: str, config_name: str, command: Command) -> None:
    """The launcher a command asks for is installed, and Hydra can make run directories where it will."""
    try:
        if command.launcher:
            check_launcher(command.launcher, config_name)  # Hydra's own message prints its search path
        check_outputs()  # before Hydra makes the run directory there
    except DearError as e:
        fail(prog, str(e))


def split_or_fail(prog: str, split: Callable[[], list[list[str]]]) -> list[list[str]]:
    """The runs ``split()`` finds in a command line; an override Hydra cannot parse is one line."""
    from hydra.errors import HydraException

    try:
        return split()
    except HydraException as e:
        fail(prog, str(e).strip().splitlines()[0])


def check_point(
    prog: str,
    config_name: str,
    point: list[str],
    check: Callable[[DictConfig], Any],
    *,
    hydra: list[str] | None = None,
    job: int | None = None,
) -> str | None:
    """Compose one sweep point and ``check`` it; a mistake is one line and exit status 2. Given ``hydra`` (the
    command's own Hydra overrides, for `dry_run`), return the folder the point's run writes in (`run_folder`)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if hydra is None:
            check(compose(point, config_name))
            return None
        cfg = compose([*hydra, *point], config_name, hydra=True)
        folder = run_folder(cfg, job)
        with open_dict(cfg):
            del cfg["hydra"]  # what `check` gets is what the run gets
        check(cfg)
        return folder
    except (HydraException, OmegaConfBaseException) as e:
        try:
            fail(prog, not_a_key(point, config_name, str(e)))
        except DearError as one_line:
            fail(prog, str(one_line))
    except DearError as e:
        fail(prog, str(e))


# What a run folder's name holds that is only known when the run starts: conf/hydra/default.yaml's start time and
# random suffix, and a multirun job's number.
AT_START = {r"\$\{now:[^}]*\}": "<time>", r"\$\{dear_run_id:\}": "<id>"}


def run_folder(cfg: DictConfig, job: int | None) -> str:
    """Where the run of ``cfg`` (composed with its hydra node) writes: ``hydra.run.dir``, or ``hydra.sweep.dir``/
    ``subdir`` for job number ``job`` of a multirun, the start time and random suffix shown as ``<time>`` and
    ``<id>``; left unresolved where it does not resolve before a run starts."""
    from omegaconf.errors import OmegaConfBaseException

    where = OmegaConf.to_container(cfg.hydra.run if job is None else cfg.hydra.sweep, resolve=False)
    text = where["dir"] if job is None else f"{where['dir']}/{where['subdir']}"
    text = text.replace("${hydra.job.num}", str(job))
    for pattern, shown in AT_START.items():
        text = re.sub(pattern, shown, text)
    with open_dict(cfg):
        cfg.hydra.run.dir = text  # resolved in the config, as Hydra resolves it (${model.name} in dear-eval's)
    try:
        return str(cfg.hydra.run.dir)
    except OmegaConfBaseException:
        return text
