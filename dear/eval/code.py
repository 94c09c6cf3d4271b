"""Run untrusted Python programs (model-written code) in a sandbox and grade them HumanEval-style.

Public API
----------
* :func:`run_program` runs a program under limits and returns an :class:`ExecResult`.
* :func:`check_solution` builds the HumanEval program (prompt + completion + test +
  ``check(entry_point)``) and runs it.
* :func:`isolation` names the isolation level in use ("namespaces" or "rlimits").

How isolation works
-------------------
Each call spawns a small bootstrap (``python -I -S -c _BOOTSTRAP``) in a new session and
process group. On Linux the bootstrap creates new user, mount, pid, network, IPC and UTS
namespaces with ``unshare(2)`` (through ctypes: no setuid helpers, works unprivileged):

* **pid namespace**: the program cannot see or signal anything outside it (``kill -9 -1``,
  ``os.kill(os.getppid(), ...)`` and ``os.killpg`` only reach the sandbox). Its init is the
  bootstrap, which exits as soon as the program does; the kernel then kills every process
  left in the namespace, daemonised grandchildren included.
* **mount namespace**: every mount is remounted read-only; a size-capped tmpfs is mounted
  on the working directory (the only writable place, discarded afterwards), a small tmpfs on
  ``/dev/shm`` and a fresh ``/proc`` for the pid namespace.
* **network namespace**: only a loopback device that is down, so no connection succeeds.
* **user namespace / privileges**: before exec the program's capability bounding set is
  emptied and ``no_new_privs`` set, so it cannot remount anything writable; any namespace it
  creates itself copies the mounts as locked. Fork bombs are bounded by ``RLIMIT_NPROC``,
  which Linux counts per user namespace and uid but never enforces for host uid 0. So when
  the caller is root the sandbox's root is mapped to an unused high uid (written by a helper
  that stays in the parent namespace), host root is mapped in as uid 1 and the program keeps
  only ``CAP_DAC_READ_SEARCH``, enough to read a Python installed under ``/root``.

Always applied: rlimits (CPU seconds, address space, file size, processes, no core dumps),
a minimal environment (nothing inherited; ``HOME`` and ``TMPDIR`` are the working directory,
``PYTHONDONTWRITEBYTECODE=1``), a temporary working directory removed afterwards, a
wall-clock timeout, capped stdout/stderr, and a kill of the whole process tree at the end.

Fallback: where namespaces are unavailable (not Linux, or user namespaces disabled), a
``RuntimeWarning`` is issued once and programs run with rlimits, their own session, a
temporary working directory and a child-subreaper bootstrap that kills every descendant at
the end. That contains runaway loops and stray processes, but not file writes, the network,
signals to the caller's other processes, or fork bombs run as root. Set
``DEAR_SANDBOX_NAMESPACES=0`` to force the fallback.

Thread safety: every call owns its processes, pipes and directories, so calls may run
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

__all__ = ["ExecResult", "check_io", "check_solution", "isolation", "run_program"]

logger = logging.getLogger(__name__)

# Per-sandbox process/thread cap; HumanEval code needs one, generous for thread pools.
MAX_PROCESSES = 32
# Largest single file the program may write, and the size of its tmpfs working directory.
MAX_FILE_MB = 16
WORKDIR_TMPFS_MB = 64
# How long a sandbox gets to wind down after SIGTERM before its group is SIGKILLed.
_TERMINATE_GRACE_S = 2.0
# How long to keep draining stdout/stderr after the sandbox has exited.
_DRAIN_GRACE_S = 0.5

_PROGRAM_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run.

    ``status`` is "passed" (exit status 0 within limits), "failed" (non-zero exit),
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

    REMAP = "namespaces, sandbox root mapped to an unused uid"  # the caller is root
    USERNS = "namespaces, sandbox root mapped to the caller's uid"
    PLAIN = "rlimits, own session, subreaper, temp dir"  # the fallback


# --------------------------------------------------------------------------- bootstrap
# Runs as `python -I -S -c _BOOTSTRAP <json config>`; kept dependency-free (stdlib only)
# because it starts for every program. It reports to the harness on a dedicated status pipe:
# "exit <wait status>" for the program, or "error <message>" if the sandbox cannot be built.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, signal, sys

CFG = json.loads(sys.argv[1])
STATUS_FD = CFG["status_fd"]
LIBC = ctypes.CDLL(None, use_errno=True)
for name, argtypes in (("mount", [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]),
                       ("unshare", [ctypes.c_int]),
                       ("prctl", [ctypes.c_int] + [ctypes.c_ulong] * 4)):
    if hasattr(LIBC, name):  # Linux-only calls; the fallback copes without them
        getattr(LIBC, name).argtypes = argtypes

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
CAP_DAC_READ_SEARCH = 2
OPTION_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}


def report(line):
    try:
        os.write(STATUS_FD, (line + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def prctl(option, arg=0):
    if not hasattr(LIBC, "prctl"):
        raise OSError(38, "prctl is not available")  # ENOSYS
    check(LIBC.prctl(option, arg, 0, 0, 0), "prctl(%d)" % option)


def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount " + target)


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces():
    # New user/mount/pid/net/ipc/uts namespaces; this process stays outside the new pid
    # namespace, its next child becomes the namespace's init.
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    remap = CFG["remap_uid"]
    if remap is None:
        uid, gid = os.geteuid(), os.getegid()
        check(LIBC.unshare(flags), "unshare")
        write_file("/proc/self/setgroups", "deny")
        write_file("/proc/self/uid_map", "0 %d 1" % uid)
        write_file("/proc/self/gid_map", "0 %d 1" % gid)
        return
    # Caller is root: only a process left in the parent namespace may write a map that puts
    # sandbox root on another uid, so a forked helper writes it once we have unshared.
    me = os.getpid()
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(ready_w)
            if os.read(ready_r, 1) != b"x":
                os._exit(1)
            ids = "0 %d 1\n1 0 1\n" % remap
            write_file("/proc/%d/uid_map" % me, ids)
            write_file("/proc/%d/gid_map" % me, ids)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(ready_r)
    try:
        check(LIBC.unshare(flags), "unshare")
    finally:
        os.write(ready_w, b"x")
        os.close(ready_w)
    _, status = os.waitpid(helper, 0)
    if status != 0:
        raise OSError("could not write the uid/gid maps of the sandbox")
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def mount_points():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # undo \040-style escapes
            yield point, fields[5].split(",")


def lock_down_filesystem():
    work = CFG["workdir"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do leaks to the host
    for point, options in list(mount_points()):
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= OPTION_FLAGS.get(option, 0)
        if not flags & (MS_NOATIME | MS_RELATIME):
            flags |= MS_STRICTATIME
        try:
            mount(None, point, None, flags)
        except OSError as exc:
            # A mount point under another mount is unreachable, hence harmless.
            if exc.errno not in (2, 13):  # ENOENT, EACCES
                raise
    mount("tmpfs", work, "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=0755" % CFG["tmpfs_mb"])
    for target, fstype, flags, data in (
        ("/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m"),
        ("/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, None),
    ):
        try:
            mount(fstype, target, fstype, flags, data)
        except OSError:
            pass  # optional: the read-only originals stay in place


def exec_program(isolated):
    # Runs in the child that becomes the program; never returns.
    try:
        os.close(STATUS_FD)
        if not isolated:
            os.setsid()  # so kill(0, ...) in the program cannot reach the bootstrap
        os.chdir(CFG["workdir"])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        for name, value in CFG["rlimits"].items():
            try:
                resource.setrlimit(getattr(resource, name), (value, value))
            except (AttributeError, ValueError, OSError):
                if isolated:
                    raise  # on Linux every limit must hold; elsewhere keep what works
        if isolated:
            keep = CAP_DAC_READ_SEARCH if CFG["remap_uid"] is not None else -1
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last_cap = int(f.read())
            for cap in range(last_cap + 1):
                if cap != keep:
                    prctl(PR_CAPBSET_DROP, cap)
        try:
            prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot grant privileges
        except OSError:
            if isolated:
                raise
        os.execve(CFG["python"], CFG["argv"], CFG["env"])
    except BaseException as exc:
        os.write(2, ("sandbox: cannot start the program: %s\n" % exc).encode())
    os._exit(127)


def run_init(lifeline_r):
    # Init of the new pid namespace: build the filesystem view, run the program, report.
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # bootstrap gone -> namespace gone
        if os.read(lifeline_r, 1) == b"":
            os._exit(1)  # the bootstrap died before PDEATHSIG was armed
        # An init only receives signals it handles; drop Python's handlers so the program
        # cannot interrupt its supervisor.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        lock_down_filesystem()
    except BaseException as exc:
        report("error sandbox setup failed: %s" % exc)
        os._exit(70)
    program = os.fork()
    if program == 0:
        exec_program(isolated=True)
    while True:
        pid, status = os.waitpid(-1, 0)  # also reaps reparented orphans
        if pid == program:
            report("exit %d" % status)
            os._exit(0)  # the kernel now kills whatever is left in the namespace


def die_with_harness():
    # The harness thread that started us may die (crash, kill): then so do we. Armed after
    # every credential change, since those reset it.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != CFG["harness_pid"]:
        os._exit(1)


def supervise_namespaced():
    try:
        enter_namespaces()
        die_with_harness()
    except BaseException as exc:
        report("error sandbox setup failed: %s" % exc)
        os._exit(70)
    lifeline_r, lifeline_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(lifeline_w)
        run_init(lifeline_r)
    os.close(lifeline_r)
    os.write(lifeline_w, b"x")
    STOP["child"] = init
    if STOP["requested"]:
        os.kill(init, signal.SIGKILL)
    os.waitpid(init, 0)  # returns once every process of the namespace is gone
    os._exit(0)


def children():
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        pass  # no /proc: waitpid still reaps direct children
    return pids


def supervise_plain():
    # Fallback: as child subreaper, every orphaned descendant is reparented to us, so we can
    # kill the whole tree (daemons included) once the program ends.
    try:
        die_with_harness()
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    program = os.fork()
    if program == 0:
        exec_program(isolated=False)
    STOP["child"] = program
    if STOP["requested"]:
        with_suppress(lambda: os.killpg(program, signal.SIGKILL))
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            report("exit %d" % status)
            break
    with_suppress(lambda: os.killpg(program, signal.SIGKILL))
    while True:
        for pid in children():
            with_suppress(lambda: os.kill(pid, signal.SIGKILL))
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    os._exit(0)


def with_suppress(action):
    try:
        action()
    except OSError:
        pass


# The harness asks for a stop with SIGTERM: SIGKILL the child (the namespace's init, whose
# death empties the namespace, or the program's process group), even if it is not forked yet.
STOP = {"requested": False, "child": None}


def on_sigterm(*_):
    STOP["requested"] = True
    if STOP["child"] is not None:
        with_suppress(lambda: os.killpg(STOP["child"], signal.SIGKILL))
        with_suppress(lambda: os.kill(STOP["child"], signal.SIGKILL))


signal.signal(signal.SIGTERM, on_sigterm)
if CFG["isolate"]:
    supervise_namespaced()
else:
    supervise_plain()
"""


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
    if mode is not _Mode.PLAIN:
        # Counted per (user namespace, uid), so it bounds just this sandbox. Outside a user
        # namespace it would count all of the caller's processes, so the fallback skips it.
        limits["RLIMIT_NPROC"] = MAX_PROCESSES
    return limits


def _unused_uid() -> int:
    # A high uid no account uses: the sandbox root becomes it, so RLIMIT_NPROC applies.
    return random.randrange(1 << 24, 1 << 30)


@dataclass
class _Streams:
    stdout: bytearray
    stderr: bytearray
    status: bytearray
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
    proc: subprocess.Popen[bytes], status_r: int, deadline: float, cap: int
) -> tuple[_Streams, bool]:
    """Read output until the bootstrap exits, the deadline passes or output overflows.

    Returns the collected streams and whether the deadline passed.
    """
    assert proc.stdout is not None and proc.stderr is not None
    streams = _Streams(bytearray(), bytearray(), bytearray())
    targets = {
        proc.stdout.fileno(): streams.stdout,
        proc.stderr.fileno(): streams.stderr,
        status_r: streams.status,
    }
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
                if exited_at is not None and (
                    open_streams == 0 or now > exited_at + _DRAIN_GRACE_S
                ):
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
                    if fd != status_r and len(buffer) > cap:
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
    streams: _Streams, timed_out: bool, bootstrap_rc: int | None
) -> tuple[str, int | None, str]:
    """(status, returncode, note) from what the bootstrap reported."""
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
            return ("passed" if code == 0 else "failed"), code, ""
    return "error", None, f"sandbox ended without a result (bootstrap status {bootstrap_rc})"


def _run(
    source: str, timeout_s: float, memory_mb: int, max_output_bytes: int, mode: _Mode
) -> ExecResult:
    start = time.monotonic()
    base = tempfile.mkdtemp(prefix="dear-sandbox-")
    try:
        workdir = os.path.join(base, "work")
        os.mkdir(workdir)
        script = os.path.join(base, "main.py")
        with open(script, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(source)
        status_r, status_w = os.pipe()
        config = {
            "status_fd": status_w,
            "harness_pid": os.getpid(),
            "isolate": mode is not _Mode.PLAIN,
            "remap_uid": _unused_uid() if mode is _Mode.REMAP else None,
            "workdir": workdir,
            "tmpfs_mb": WORKDIR_TMPFS_MB,
            "python": sys.executable,
            "argv": [sys.executable, "-B", "-s", script],
            "env": _program_env(workdir),
            "rlimits": _rlimits(timeout_s, memory_mb, mode),
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(status_w,),
                start_new_session=True,
                cwd=base,
                env={"PATH": _PROGRAM_ENV_PATH, "LANG": "C.UTF-8"},
            )
        except OSError as exc:
            os.close(status_r)
            return ExecResult("error", None, "", "", time.monotonic() - start, str(exc))
        finally:
            os.close(status_w)
        with proc, contextlib.closing(os.fdopen(status_r, "rb", buffering=0)):
            try:
                streams, timed_out = _pump(proc, status_r, start + timeout_s, max_output_bytes)
                if timed_out or streams.overflow:
                    _stop(proc)
            finally:
                _finish(proc)
        status, returncode, note = _classify(streams, timed_out, proc.returncode)
        return ExecResult(
            status=status,
            returncode=returncode,
            stdout=streams.stdout.decode("utf-8", "replace"),
            stderr=streams.stderr.decode("utf-8", "replace"),
            wall_s=time.monotonic() - start,
            note=note,
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- mode probe

_mode: _Mode | None = None
_mode_lock = threading.Lock()


def _probe(mode: _Mode) -> ExecResult:
    return _run("", 20.0, 256, 4096, mode)


def _select_mode() -> _Mode:
    """The strongest isolation that works here, probed once with an empty program."""
    if os.environ.get("DEAR_SANDBOX_NAMESPACES", "1") == "0":
        warnings.warn(
            "DEAR_SANDBOX_NAMESPACES=0: sandboxed code runs with rlimits only "
            "(no filesystem, network or process isolation).",
            RuntimeWarning,
            stacklevel=3,
        )
        return _Mode.PLAIN
    candidates = [_Mode.USERNS]
    if os.geteuid() == 0:
        candidates.insert(0, _Mode.REMAP)
    reasons = []
    for candidate in candidates if sys.platform.startswith("linux") else []:
        result = _probe(candidate)
        if result.passed:
            if candidate is _Mode.USERNS and os.geteuid() == 0:
                warnings.warn(
                    "sandbox: cannot map the sandbox to a non-root uid, so RLIMIT_NPROC is "
                    f"not enforced and fork bombs are only stopped by the timeout ({reasons[0]})",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return candidate
        reasons.append(result.note or result.stderr.strip()[-200:])
    warnings.warn(
        "sandbox: Linux namespaces are unavailable "
        f"({'; '.join(reasons) or sys.platform}); sandboxed code runs with rlimits, its own "
        "session and a temp dir only, and can write files, use the network and signal "
        "your processes.",
        RuntimeWarning,
        stacklevel=3,
    )
    return _Mode.PLAIN


def _current_mode() -> _Mode:
    global _mode
    with _mode_lock:
        if _mode is None:
            _mode = _select_mode()
            logger.info("sandbox isolation: %s", _mode.value)
        return _mode


def isolation() -> str:
    """Name the isolation in use: "namespaces", or "rlimits" in the fallback."""
    return "rlimits" if _current_mode() is _Mode.PLAIN else "namespaces"


# --------------------------------------------------------------------------- public API


def run_program(
    source: str,
    timeout_s: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
) -> ExecResult:
    """Run the Python program ``source`` in the sandbox and report how it ended.

    ``timeout_s`` bounds wall-clock time, ``memory_mb`` the address space, and each of
    stdout/stderr is captured up to ``max_output_bytes`` (more stops the program).
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, not {type(source).__name__}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    if memory_mb < 64:
        raise ValueError(f"memory_mb must be at least 64 (Python needs it), got {memory_mb!r}")
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes!r}")
    return _run(source, timeout_s, memory_mb, max_output_bytes, _current_mode())


def check_solution(
    prompt: str, completion: str, test: str, entry_point: str, timeout_s: float = 10.0
) -> ExecResult:
    """Run a HumanEval-style check: prompt + completion, the test, then ``check(entry_point)``."""
    program = prompt + completion + "\n" + test + "\n" + f"check({entry_point})\n"
    return run_program(program, timeout_s)


# --------------------------------------------------------------------------- input/output tests

# Runs inside the sandbox: the solution once per test, with the test's input on stdin (or, for a
# ``class Solution`` problem, its JSON arguments), and compares what comes out.
_IO_DRIVER = """
import io, json, math, sys

SOURCE = {source!r}
CASES = json.loads({cases!r})
FUNC = {func!r}


def same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        try:
            return math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want))
    return got == want


def same_text(got, want):
    got, want = got.split(), want.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g != w:
            try:
                if not math.isclose(float(g), float(w), rel_tol=1e-6, abs_tol=1e-6):
                    return False
            except ValueError:
                return False
    return True


code = compile(SOURCE, "<solution>", "exec")
for number, case in enumerate(CASES):
    if FUNC:
        scope = {{"__name__": "solution"}}
        exec(code, scope)
        args = [json.loads(line) for line in case["input"].splitlines() if line.strip()]
        got = getattr(scope["Solution"](), FUNC)(*args)
        ok = same(got, json.loads(case["output"]))
    else:
        sys.stdin = io.TextIOWrapper(io.BytesIO(case["input"].encode()))
        sys.stdout = out = io.StringIO()
        try:
            exec(code, {{"__name__": "__main__"}})
        except SystemExit as stop:
            if stop.code not in (None, 0):
                raise
        finally:
            sys.stdout, sys.stdin = sys.__stdout__, sys.__stdin__
        ok = same_text(out.getvalue(), case["output"])
    if not ok:
        print(f"test {{number}} failed", file=sys.stderr)
        sys.exit(1)
"""


def check_io(source: str, cases: list[dict], func_name: str | None = None, *,
             timeout_s: float | None = None) -> ExecResult:
    """Run ``source`` against input/output ``cases`` in the sandbox; passed only if every case matches.

    Without ``func_name`` the source is a whole program: each case's ``input`` is its stdin and
    its stdout must equal ``output`` token by token (numbers within 1e-6). With ``func_name``,
    ``Solution().<func_name>(*args)`` is called with the input's lines parsed as JSON and must
    return ``output`` parsed as JSON. The time limit grows with the number of cases.
    """
    if not cases:
        raise ValueError("check_io needs at least one test case")
    program = _IO_DRIVER.format(source=source, cases=json.dumps(cases), func=func_name or "")
    return run_program(program, timeout_s if timeout_s is not None else min(60.0, 6.0 + 1.0 * len(cases)))
