"""Run untrusted Python programs (model-written code) in a sandbox and grade them without being fooled.

Public API
----------
* :func:`run_program` runs a program under limits and returns an :class:`ExecResult` (passed when
  it exits 0).
* :func:`check_solution` grades a HumanEval/MBPP-style completion against its tests and
  :func:`check_io` a program against input/output cases (LiveCodeBench); both pass only when the
  tests ran to the end (see "Grading" below), never on an exit status.
* :func:`isolation` names the isolation in use: "full", or with ``DEAR_SANDBOX=weak`` possibly
  "namespaces" (no cgroup) or "rlimits".

Grading
-------
A graded run starts two processes in the sandbox: the **checker** (``sandbox/checker.py``) and the
**candidate** (``sandbox/candidate.py``). The candidate runs the model's program from a file that
holds nothing else (no tests) and then answers calls. The checker, started first and made
undumpable before the candidate exists, receives the tests and a random token through a pipe only
it holds, runs the tests with its own builtins (``python -I``, never ``-O``) and calls the
candidate's functions through a pipe; answers come back as plain data (``sandbox/wire.py``), so an
object whose ``__eq__`` is always true arrives as its value. Only the entry point (and what the
prompt defines but could not give the checker) crosses by proxy: a candidate's ``def abs``, ``range``,
``set`` or ``zip`` never reaches the test, which keeps the real builtins. A trusted prompt's helper
functions (HumanEval's ``poly``, ``encode_cyclic``) are the checker's own. After the last check the checker
writes the token to the harness on a pipe of its own, and only a run that delivered the right
token passes. Exiting early (``sys.exit(0)``, ``os._exit(0)``, ``atexit``), patching builtins,
re-executing with ``-O``, reading the program file, killing the checker or replacing a comparison
all end without the token. The price: arguments and results must be plain data (numbers, strings,
bytes, lists, tuples, dicts, sets, ranges, iterators); a test that hands the candidate an object of
its own class fails. Input/output cases are judged as LiveCodeBench judges them (lines, then numbers
as exact decimals), with a tolerance of 1e-6 only where the expected number is a float.

How isolation works
-------------------
Each run spawns ``sandbox/bootstrap.py`` (``python -I -S``, configuration on stdin) in a new session
and process group. Full isolation, the default, is all of:

* **cgroup** (:mod:`dear.eval.cgroup`): the sandbox's own cgroup (v2, or the v1 memory, pids and
  cpu hierarchies) caps the memory of everything in it together, ``memfd`` files, tmpfs and SysV
  shared memory included, at ``memory_mb`` plus 64 MiB for the supervisors, its processes and
  threads at :data:`MAX_PROCESSES` plus a few, and its CPU use at :data:`CPU_CORES` (where the
  machine has a CPU controller); ``RLIMIT_AS`` still caps each process at ``memory_mb``;
* **namespaces** (``unshare(2)`` through ctypes, no setuid helper): user, mount, pid, network, IPC
  and UTS. The pid namespace confines signals and ends every process of the sandbox when the
  program ends; the network namespace has only a loopback that is down (abstract Unix sockets
  of the host are out of reach too); the IPC namespace gets low limits of its own
  (``kernel.shmmax``/``shmall``/``shmmni``, ``msgmax``/``msgmnb``/``msgmni``);
* **its own root** (``pivot_root``): a read-only tmpfs holding only the runtime tree of
  :mod:`dear.eval.runtime` (``/usr`` and the library folders, the interpreter, its standard library
  and, in ``site-packages``, only the packages a program may import: no benchmark data or answer
  key, no test runner, no checkout), copies of the sandbox's programs at ``/run/dear/lib``, a
  size-capped writable working directory at ``/run/dear/work`` (``HOME`` and ``TMPDIR``), a private
  ``/dev`` (``null``, ``zero``, ``full``, ``random``, ``urandom``, its own ``devpts`` instance for
  ptys, a small ``/dev/shm``) and a fresh ``/proc``, whose ``mountinfo`` shows no host path that is
  not the same path inside. The host's home folders, the project checkout, its sockets and FIFOs and
  other sandboxes' files do not exist there;
* **no privileges**: every capability is dropped before exec (``CAP_DAC_READ_SEARCH`` included),
  ``no_new_privs`` is set, and when the caller is root the sandbox's root is an unused high uid so
  ``RLIMIT_NPROC`` applies;
* **seccomp** (``sandbox/seccomp.py``): sockets of any family but ``AF_UNIX``, new namespaces,
  ``ptrace``, mounts, ``io_uring``, BPF and the like are refused, and so are what would reach the
  host through the files it shares or spend the machine's budgets: file locks, ``inotify``,
  ``fanotify`` and ``F_NOTIFY``, Linux AIO;
* **small per-user budgets**: queued signals (:data:`MAX_PENDING_SIGNALS`), POSIX message queues
  (:data:`MAX_MQUEUE_BYTES`) and locked memory (none), which a user namespace's use also adds to the
  caller's own counts.

Always applied: rlimits (CPU seconds, address space, file size, processes, no core dumps), a
minimal environment (nothing inherited; ``MALLOC_ARENA_MAX=2``, so threads are not capped by glibc's
per-thread arenas filling the address space), a wall-clock timeout, capped stdout/stderr, and a kill of
the whole process tree at the end.

Fail closed: when full isolation cannot be built (no user namespaces, no cgroup, an unknown
architecture for the filter), the first run raises :class:`~dear.errors.DearError` in one line
saying why, and is asked again on the next run. ``DEAR_SANDBOX=weak`` opts in to the strongest
isolation that works, with a warning; ``DEAR_SANDBOX=rlimits`` forces the weakest (rlimits, own
session, temp dir, child-subreaper cleanup), which contains runaway loops and stray processes but
not file reads or writes, the network, signals to your processes or fork bombs run as root. Record
:func:`isolation` with a run's results.

Thread safety: every call owns its processes, pipes, directories and cgroup, so calls may run
concurrently from several threads (graders use a thread pool).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import math
import os
import random
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dear.errors import DearError
from dear.eval import cgroup, runtime

__all__ = ["ExecResult", "check_io", "check_solution", "isolation", "run_program"]

logger = logging.getLogger(__name__)

# Per-sandbox process/thread cap; HumanEval code needs one, generous for thread pools.
MAX_PROCESSES = 32
# Largest single file the program may write, and the size of its tmpfs working directory.
MAX_FILE_MB = 16
WORKDIR_TMPFS_MB = 64
# Memory and tasks of the sandbox's supervisors (bootstrap, init, checker), on top of the program's.
SUPERVISOR_MB = 64
SUPERVISOR_TASKS = 8
# CPU cores the whole sandbox may keep busy at once (a cgroup quota), however many threads it starts.
CPU_CORES = 1
# Kernel budgets counted per user and charged to the caller too (a user namespace's counts add up to its
# creator's): queued signals and POSIX message-queue bytes stay small, and no memory may be locked.
MAX_PENDING_SIGNALS = 64
MAX_MQUEUE_BYTES = 64 << 10
# Limits of the sandbox's own IPC namespace: 16 segments, 16 MiB of SysV shared memory in all.
IPC_LIMITS = {
    "shmmni": 16,
    "shmmax": 16 << 20,
    "shmall": (16 << 20) // 4096,
    "msgmni": 16,
    "msgmax": 8192,
    "msgmnb": 16384,
}
# How long a sandbox gets to wind down after SIGTERM before its group is SIGKILLed.
_TERMINATE_GRACE_S = 2.0
# How long to keep draining stdout/stderr after the sandbox has exited.
_DRAIN_GRACE_S = 0.5

_PROGRAM_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROGRAMS = Path(__file__).parent / "sandbox"
_WORK = "/run/dear/work"  # the working directory inside the sandbox's own root


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run.

    ``status`` is "passed" (exit status 0 within limits; for a graded run, the checker's token
    received), "failed" (non-zero exit, or tests that did not run to the end),
    "timeout" (wall-clock limit hit), "killed" (died by a signal, e.g. the CPU or memory
    limit, or stopped for flooding its output) or "error" (the sandbox itself failed).
    ``returncode`` is the exit code, minus the signal number when killed by a signal, or
    ``None`` on timeout/error; ``note`` says why in a few words when not obvious.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class _Mode(enum.Enum):
    """How strongly programs are isolated; see the module docstring."""

    FULL_REMAP = "full, sandbox root mapped to an unused uid"  # the caller is root
    FULL_USERNS = "full, sandbox root mapped to the caller's uid"
    NAMESPACES = "namespaces and own root, but no cgroup: memory and processes bounded per process only"
    PLAIN = "rlimits, own session, subreaper, temp dir"

    @property
    def namespaced(self) -> bool:
        return self is not _Mode.PLAIN

    @property
    def label(self) -> str:
        return {"FULL_REMAP": "full", "FULL_USERNS": "full", "NAMESPACES": "namespaces"}.get(self.name, "rlimits")


# --------------------------------------------------------------------------- harness


def _program_env(workdir: str) -> dict[str, str]:
    """Environment of the program: nothing inherited from the caller (no secrets)."""
    return {
        "PATH": _PROGRAM_ENV_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        # glibc reserves 64 MiB of address space per malloc arena, up to 8 per core: at 1 GiB that left
        # room for 14 threads. Two arenas serve a Python program as well.
        "MALLOC_ARENA_MAX": "2",
    }


def _rlimits(timeout_s: float, memory_mb: int, mode: _Mode) -> dict[str, int]:
    limits = {
        # CPU seconds beyond the wall clock budget can only be a runaway: SIGXCPU.
        "RLIMIT_CPU": math.ceil(timeout_s) + 1,
        "RLIMIT_AS": memory_mb * 1024 * 1024,
        "RLIMIT_FSIZE": MAX_FILE_MB * 1024 * 1024,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 1024,
    }
    if mode.namespaced:
        # Counted per (user namespace, uid), so they bound just this sandbox (and what it adds to the
        # caller's own counts). Outside a user namespace they would count all of the caller's processes,
        # signals and queues, so the fallback skips them.
        limits["RLIMIT_NPROC"] = MAX_PROCESSES
        limits["RLIMIT_SIGPENDING"] = MAX_PENDING_SIGNALS
        limits["RLIMIT_MSGQUEUE"] = MAX_MQUEUE_BYTES
        limits["RLIMIT_MEMLOCK"] = 0
    return limits


def _unused_uid() -> int:
    # A high uid no account uses: the sandbox root becomes it, so RLIMIT_NPROC applies.
    return random.randrange(1 << 24, 1 << 30)


def _binds() -> list[tuple[str, str, str]]:
    """What the sandbox's root shows of the host, read-only: the runtime tree of :mod:`dear.eval.runtime`."""
    return list(runtime.tree())


@dataclass
class _Streams:
    stdout: bytearray
    stderr: bytearray
    status: bytearray
    token: bytearray
    overflow: bool = False


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the bootstrap has exited, without reaping it (its pgid must stay reserved)."""
    try:
        info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # old kernel or Python: poll instead


def _pump(
    proc: subprocess.Popen[bytes], status_r: int, token_r: int | None, deadline: float, cap: int
) -> tuple[_Streams, bool]:
    """Read output until the bootstrap exits, the deadline passes or output overflows.

    Returns the collected streams and whether the deadline passed.
    """
    assert proc.stdout is not None and proc.stderr is not None
    streams = _Streams(bytearray(), bytearray(), bytearray(), bytearray())
    targets = {
        proc.stdout.fileno(): streams.stdout,
        proc.stderr.fileno(): streams.stderr,
        status_r: streams.status,
    }
    if token_r is not None:
        targets[token_r] = streams.token
    pidfd = _pidfd(proc.pid)
    exited_at: float | None = None
    with selectors.DefaultSelector() as selector:
        for fd in targets:
            selector.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and (pidfd is None and _has_exited(proc)):
                    exited_at = now
                open_streams = len(selector.get_map()) - (pidfd is not None and exited_at is None)
                if exited_at is not None and (open_streams == 0 or now > exited_at + _DRAIN_GRACE_S):
                    return streams, False
                if now >= deadline:
                    return streams, True
                wait = deadline - now
                if pidfd is None:
                    wait = min(wait, 0.02)
                for key, _ in selector.select(wait):
                    fd = key.fd
                    if fd == pidfd:
                        exited_at = time.monotonic()
                        selector.unregister(fd)
                        continue
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        selector.unregister(fd)
                        continue
                    buffer = targets[fd]
                    buffer += chunk
                    if fd in (status_r, token_r) and len(buffer) > 4096:
                        del buffer[4096:]  # a status or token line is short
                    elif fd not in (status_r, token_r) and len(buffer) > cap:
                        del buffer[cap:]
                        streams.overflow = True  # stop it now rather than at the timeout
                        return streams, False
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask the bootstrap to kill the sandbox; SIGKILL its process group if it does not."""
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _finish(proc: subprocess.Popen[bytes]) -> None:
    """Kill anything left in the bootstrap's process group, then reap the bootstrap."""
    if proc.returncode is None:
        # The bootstrap is not reaped yet, so its pid (= pgid) cannot have been reused.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. real-time signals
        return str(number)


def _classify(
    streams: _Streams, timed_out: bool, bootstrap_rc: int | None, token: str | None
) -> tuple[str, int | None, str]:
    """(status, returncode, note) from what the bootstrap reported (and, graded, the checker's token)."""
    if timed_out:
        return "timeout", None, "wall-clock limit exceeded"
    if streams.overflow:
        return "killed", None, "output limit exceeded"
    lines = streams.status.decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        kind, _, detail = line.partition(" ")
        if kind == "error":
            return "error", None, detail
        if kind == "exit":
            wait_status = int(detail)
            if os.WIFSIGNALED(wait_status):
                sig = os.WTERMSIG(wait_status)
                return "killed", -sig, f"killed by signal {_signal_name(sig)}"
            code = os.WEXITSTATUS(wait_status)
            if code != 0:
                return "failed", code, ""
            if token is not None and streams.token.decode("ascii", "replace").split() != ["pass", token]:
                return "failed", code, "the tests did not run to the end"
            return "passed", code, ""
    return "error", None, f"sandbox ended without a result (bootstrap status {bootstrap_rc})"


def _run(
    source: str, timeout_s: float, memory_mb: int, max_output_bytes: int, mode: _Mode, job: dict | None = None
) -> ExecResult:
    """Run ``source`` in the sandbox; with a ``job`` (the tests), as a graded run that needs the token."""
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="dear-sandbox-")
    group = None
    fds: list[int] = []
    try:
        if mode in (_Mode.FULL_REMAP, _Mode.FULL_USERNS):
            try:
                group = cgroup.create((memory_mb + SUPERVISOR_MB) << 20, MAX_PROCESSES + SUPERVISOR_TASKS, CPU_CORES)
            except OSError as exc:
                return ExecResult("error", None, "", "", time.monotonic() - start, f"no cgroup: {exc}")
        workdir = os.path.join(base, "work")
        os.mkdir(workdir)
        os.mkdir(os.path.join(base, "root"))
        status_r, status_w = os.pipe()
        fds += [status_r, status_w]
        token = None
        if job is not None:
            token = secrets.token_hex(16)
            job = {**job, "token": token}
            token_r, token_w = os.pipe()
            fds += [token_r, token_w]
        inner = _WORK if mode.namespaced else workdir
        config = {
            "status_fd": status_w,
            "token_fd": token_w if job is not None else None,
            "harness_pid": os.getpid(),
            "isolate": mode.namespaced,
            "remap_uid": _unused_uid()
            if mode in (_Mode.FULL_REMAP,) or (mode is _Mode.NAMESPACES and os.geteuid() == 0)
            else None,
            "cgroup": group.dirs[0].name if group else None,
            "cgroup_controllers": group.controllers if group else [],
            "root": os.path.join(base, "root"),
            "binds": _binds() if mode.namespaced else [],
            "drivers": str(_PROGRAMS),
            "workdir": inner,
            "tmpfs_mb": WORKDIR_TMPFS_MB,
            "ipc_limits": IPC_LIMITS,
            "python": sys.executable,
            "env": _program_env(inner),
            "rlimits": _rlimits(timeout_s, memory_mb, mode),
            "program": source,
            "job": job,
        }
        try:
            proc = subprocess.Popen(
                # The folder is a label for `ps`; everything else comes on stdin.
                [sys.executable, "-I", "-S", str(_PROGRAMS / "bootstrap.py"), base],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=[status_w] + ([token_w] if job is not None else []),
                start_new_session=True,
                cwd=base,
                env={"PATH": _PROGRAM_ENV_PATH, "LANG": "C.UTF-8"},
            )
        except OSError as exc:
            return ExecResult("error", None, "", "", time.monotonic() - start, str(exc))
        finally:
            for fd in (status_w, token_w if job is not None else None):
                if fd is not None:
                    os.close(fd)
                    fds.remove(fd)
        with proc:
            try:
                if group is not None:
                    group.add(proc.pid)  # meanwhile the bootstrap starts; it waits for its configuration
                _send_config(proc, config)
                streams, timed_out = _pump(
                    proc, status_r, token_r if job is not None else None, start + timeout_s, max_output_bytes
                )
                if timed_out or streams.overflow:
                    _stop(proc)
            except OSError as exc:  # the cgroup refused it: nothing ran
                return ExecResult("error", None, "", "", time.monotonic() - start, f"cannot join the cgroup: {exc}")
            finally:
                _finish(proc)
        status, returncode, note = _classify(streams, timed_out, proc.returncode, token)
        return ExecResult(
            status=status,
            returncode=returncode,
            stdout=streams.stdout.decode("utf-8", "replace"),
            stderr=streams.stderr.decode("utf-8", "replace"),
            wall_s=time.monotonic() - start,
            note=note,
        )
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if group is not None:
            group.remove()
        shutil.rmtree(base, ignore_errors=True)


def _send_config(proc: subprocess.Popen[bytes], config: dict) -> None:
    """Hand the bootstrap its configuration (program and tests included) on its stdin, never argv."""
    assert proc.stdin is not None
    data = json.dumps(config).encode("utf-8", "surrogateescape")

    def write() -> None:
        with contextlib.suppress(OSError):
            proc.stdin.write(data)
        with contextlib.suppress(OSError):
            proc.stdin.close()

    if len(data) < 60_000:  # fits the pipe: no thread needed
        write()
    else:
        threading.Thread(target=write, daemon=True).start()


# --------------------------------------------------------------------------- mode choice

_mode: _Mode | None = None
_mode_lock = threading.Lock()


def _probe(mode: _Mode) -> ExecResult:
    """An empty program and a one-check graded run in ``mode``: both must pass."""
    result = _run("", 20.0, 256, 4096, mode)
    if not result.passed:
        return result
    return _run(
        "def f():\n    return 1\n",
        20.0,
        256,
        4096,
        mode,
        job={"kind": "module", "prompt": "", "test": "def check(f):\n    assert f() == 1\n", "entry_point": "f"},
    )


def _select_mode() -> _Mode:
    """The isolation to use, probed with tiny programs; ``DearError`` when policy forbids the only options."""
    policy = os.environ.get("DEAR_SANDBOX", "strict")
    if policy not in ("strict", "weak", "rlimits"):
        raise DearError(f"DEAR_SANDBOX={policy!r} is not a sandbox policy; use strict (default), weak or rlimits")
    if policy == "rlimits":
        warnings.warn(
            "DEAR_SANDBOX=rlimits: sandboxed code runs with rlimits only "
            "(no filesystem, network, memory or process isolation).",
            RuntimeWarning,
            stacklevel=3,
        )
        return _Mode.PLAIN
    reasons = []
    if not sys.platform.startswith("linux"):
        reasons.append(f"{sys.platform} has no Linux namespaces")
        candidates = []
    else:
        no_cgroup = cgroup.unavailable()
        candidates = [] if no_cgroup else [_Mode.FULL_USERNS]
        if no_cgroup:
            reasons.append(no_cgroup)
        elif os.geteuid() == 0:
            candidates.insert(0, _Mode.FULL_REMAP)
        if policy == "weak":
            candidates.append(_Mode.NAMESPACES)
    for candidate in candidates:
        result = _probe(candidate)
        if result.passed:
            if candidate.label != "full":
                warnings.warn(
                    f"DEAR_SANDBOX=weak: sandboxed code runs with {candidate.value} ({'; '.join(reasons)})",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return candidate
        reasons.append(f"{candidate.label} isolation failed: {_reason(result)}")
    if policy == "weak":
        warnings.warn(
            f"DEAR_SANDBOX=weak: sandboxed code runs with rlimits, its own session and a temp dir only, "
            f"and can read files, use the network and signal your processes ({'; '.join(reasons)})",
            RuntimeWarning,
            stacklevel=3,
        )
        return _Mode.PLAIN
    raise DearError(
        f"cannot isolate untrusted code here ({'; '.join(reasons)}); set DEAR_SANDBOX=weak to grade "
        "it with weaker isolation (record dear.eval.code.isolation() with the results)"
    )


def _reason(result: ExecResult) -> str:
    """A few words on why a probe did not pass."""
    last = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    return (result.note or (last[0] if last else "") or result.status)[:300]


def _current_mode() -> _Mode:
    global _mode
    with _mode_lock:
        if _mode is None:
            _mode = _select_mode()  # a DearError leaves it unset: the next run asks again
            logger.info("sandbox isolation: %s", _mode.value)
        return _mode


def isolation() -> str:
    """Name the isolation in use: "full"; with ``DEAR_SANDBOX=weak`` or ``rlimits``, "namespaces" or "rlimits"."""
    return _current_mode().label


# --------------------------------------------------------------------------- public API


def _check_limits(timeout_s: float, memory_mb: int, max_output_bytes: int) -> None:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if memory_mb < 64:
        raise ValueError(f"memory_mb must be at least 64 (Python needs it), got {memory_mb!r}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes!r}")


def run_program(
    source: str,
    timeout_s: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
) -> ExecResult:
    """Run the Python program ``source`` in the sandbox and report how it ended (passed: exit status 0).

    ``timeout_s`` bounds wall-clock time, ``memory_mb`` each process's address space and (with the
    supervisors' 64 MiB) the whole sandbox's memory, and each of stdout/stderr is captured up to
    ``max_output_bytes`` (more stops the program). Not a grade: use :func:`check_solution` or
    :func:`check_io` for that.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, not {type(source).__name__}")
    _check_limits(timeout_s, memory_mb, max_output_bytes)
    return _run(source, timeout_s, memory_mb, max_output_bytes, _current_mode())


def check_solution(
    prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = 10.0, *, memory_mb: int = 1024
) -> ExecResult:
    """Grade a HumanEval-style completion: passed only if ``check(entry_point)`` of ``test`` ran to the end.

    The candidate runs ``prompt + completion`` (its file holds nothing else); the checker runs ``prompt``
    (for its helpers), then ``test`` and ``check(<entry_point>)`` with the candidate's top-level
    functions called through the sandbox's pipe (see the module docstring).
    """
    _check_limits(timeout_s, memory_mb, 64_000)
    job = {"kind": "module", "prompt": prompt, "test": test, "entry_point": entry_point}
    return _run(prompt + completion, timeout_s, memory_mb, 64_000, _current_mode(), job=job)


def check_io(
    source: str,
    cases: list[dict],
    func_name: str | None = None,
    *,
    timeout_s: float | None = None,
    memory_mb: int = 1024,
) -> ExecResult:
    """Run ``source`` against input/output ``cases``; passed only if every case matched, checked by the checker.

    Without ``func_name`` the source is a whole program: each case's ``input`` is its stdin and
    its stdout must match ``output`` line by line, each line identical or the same numbers as exact
    decimals (LiveCodeBench's judge). With ``func_name``, ``Solution().<func_name>(*args)`` is called
    with the input's lines parsed as JSON and must return ``output`` parsed as JSON (a tuple counts as
    a list). Where the expected number is a float, 1e-6 (relative or absolute) is allowed; integers
    compare exactly. The time limit grows with the number of cases.
    """
    if not cases:
        raise ValueError("check_io needs at least one test case")
    timeout = timeout_s if timeout_s is not None else min(60.0, 6.0 + 1.0 * len(cases))
    _check_limits(timeout, memory_mb, 64_000)
    job = {
        "kind": "io",
        "cases": [{"input": c["input"], "output": c["output"]} for c in cases],
        "func": func_name or "",
    }
    return _run(source, timeout, memory_mb, 64_000, _current_mode(), job=job)
