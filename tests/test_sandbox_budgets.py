"""The second red team (issue 20), part two: the host's budgets and shared files, spent or used from inside.

Per-user kernel limits count a user namespace's use against its creator too, so a sandbox run by root could
spend root's queued signals and message-queue bytes; AIO slots are the whole machine's; the files the sandbox
shows are the host's own inodes, so their locks and change notifications reached the host and other
sandboxes. Each test here shows a probe that worked on the sandbox of b8e0d9e and must not now, with the
CPU cap, the thread count at the default memory limit and the host paths in ``/proc/self/mountinfo``.
Tests that need the full isolation skip where the machine cannot build it (see ``tests/sandbox_support.py``).
"""

from __future__ import annotations

import fcntl
import glob
import os
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dear.eval import cgroup, code
from dear.eval.code import ExecResult, run_program

from sandbox_support import needs_full_isolation


def _run_while_sampling(program: str, sample: Callable[[], object], timeout_s: float = 20) -> tuple[ExecResult, list]:
    """Run ``program`` in the sandbox and call ``sample()`` here every 20 ms until it ends."""
    done = threading.Event()
    box: dict[str, ExecResult] = {}

    def work() -> None:
        box["result"] = run_program(program, timeout_s=timeout_s)
        done.set()

    worker = threading.Thread(target=work)
    worker.start()
    samples = []
    while not done.is_set():
        samples.append(sample())
        done.wait(0.02)
    worker.join()
    return box["result"], samples


def _words_after(result: ExecResult, label: str) -> list[str]:
    """The words printed after ``label`` on its line."""
    lines = [line for line in result.stdout.splitlines() if line.startswith(label + " ")]
    assert lines, result
    return lines[-1].split()[1:]


# --------------------------------------------------------------------------- per-user and system budgets


def _host_pending_signals() -> int:
    """Queued signals counted against this process's user (root here), as /proc shows them."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigQ:"):
            return int(line.split()[1].split("/")[0])
    raise AssertionError("no SigQ line in /proc/self/status")


@needs_full_isolation
def test_queued_signals_stay_inside() -> None:
    program = textwrap.dedent(
        """
        import os, resource, signal, time
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
        for _ in range(5000):
            os.kill(os.getpid(), signal.SIGRTMIN)  # real-time signals queue one entry per kill
        status = [line for line in open("/proc/self/status") if line.startswith("SigQ:")][0]
        print("QUEUED", status.split()[1].split("/")[0], resource.getrlimit(resource.RLIMIT_SIGPENDING)[0], flush=True)
        time.sleep(1.0)
        """
    )
    before = _host_pending_signals()
    result, host = _run_while_sampling(program, _host_pending_signals)
    queued, limit = map(int, _words_after(result, "QUEUED"))
    assert max(host) - before < 1000, (before, max(host))  # the old sandbox queued all 5,000 on root's count
    assert result.passed and limit == code.MAX_PENDING_SIGNALS and queued <= limit + 8, result


@needs_full_isolation
def test_no_aio_slots_of_the_machine() -> None:
    program = textwrap.dedent(
        """
        import ctypes, os, time
        libc = ctypes.CDLL(None, use_errno=True)
        io_setup = {"x86_64": 206, "aarch64": 0}[os.uname().machine]
        made = 0
        for _ in range(4):
            context = ctypes.c_ulong(0)
            made += libc.syscall(io_setup, 4096, ctypes.byref(context)) == 0
        print("CONTEXTS", made, flush=True)
        time.sleep(0.5)
        """
    )
    aio_nr = lambda: int(Path("/proc/sys/fs/aio-nr").read_text())  # noqa: E731
    before = aio_nr()
    result, host = _run_while_sampling(program, aio_nr)
    assert result.passed and _words_after(result, "CONTEXTS") == ["0"], result
    assert max(host) - before < 4096  # the old sandbox took 16,384 of the machine's 65,536


@needs_full_isolation
def test_posix_message_queues_stay_small() -> None:
    program = textwrap.dedent(
        """
        import ctypes, os, resource
        libc = ctypes.CDLL(None, use_errno=True)
        mq_open = getattr(libc, "mq_open", None) or ctypes.CDLL("librt.so.1", use_errno=True).mq_open
        mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        made = sum(mq_open(b"/dear%d" % i, os.O_CREAT | os.O_RDWR, 0o600, None) >= 0 for i in range(10))
        print("QUEUES", made, resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0])
        """
    )
    result = run_program(program, timeout_s=20)
    # A queue of the default size (10 messages of 8 KiB) no longer fits: the old sandbox made 9, charged to root.
    made, limit = _words_after(result, "QUEUES")
    assert result.passed and made == "0", result
    assert limit == str(code.MAX_MQUEUE_BYTES)


@needs_full_isolation
def test_no_inotify_fanotify_or_dnotify() -> None:
    """No notification instances (counted against root's user) and no watching the host read shared files."""
    watched = os.__file__  # the standard library shows at the same path inside
    program = textwrap.dedent(
        f"""
        import ctypes, fcntl, os, select
        libc = ctypes.CDLL(None, use_errno=True)
        saw = "no inotify"
        fd = libc.inotify_init1(0)
        if fd >= 0 and libc.inotify_add_watch(fd, {watched!r}.encode(), 0x1 | 0x20) >= 0:  # IN_ACCESS | IN_OPEN
            saw = "host read" if select.select([fd], [], [], 3)[0] else "nothing"
        more = sum(libc.inotify_init1(0) >= 0 for _ in range(20))
        fanotify = libc.fanotify_init(0x200, 0) >= 0  # FAN_REPORT_FID: allowed without privileges
        try:
            fcntl.fcntl(os.open(os.path.dirname({watched!r}), os.O_RDONLY), fcntl.F_NOTIFY, fcntl.DN_ACCESS)
            dnotify = True
        except OSError:
            dnotify = False
        print("WATCH", saw.replace(" ", "-"), more, fanotify, dnotify)
        """
    )
    result, _ = _run_while_sampling(program, lambda: Path(watched).read_bytes()[:1])
    assert result.passed and _words_after(result, "WATCH") == ["no-inotify", "0", "False", "False"], result


@needs_full_isolation
def test_rlimits_of_kernel_budgets() -> None:
    program = "import resource\nprint([resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]])\n"
    result = run_program(program, timeout_s=20)
    assert result.passed and result.stdout.strip() == "[0]", result


# --------------------------------------------------------------------------- shared read-only files


def _stdlib_files() -> list[str]:
    return sorted(glob.glob(os.path.dirname(os.__file__) + "/*.py"))[:8]


def _host_can_lock(paths: list[str]) -> bool:
    for path in paths:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(f, fcntl.LOCK_UN)
    return True


@needs_full_isolation
def test_shared_files_cannot_be_locked() -> None:
    """No flock or fcntl lock on the host's files: the host's own lock is never blocked, and two sandboxes
    graded at once cannot pass a byte (0xA5, one bit per locked standard-library file)."""
    files = _stdlib_files()
    sender = textwrap.dedent(
        f"""
        import fcntl, time
        held, refused = [], []
        for bit, path in enumerate({files!r} + ["/etc/ld.so.cache"]):
            if 0x1A5 >> bit & 1:
                f = open(path)
                try:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    held.append(f)
                except OSError as exc:
                    refused.append(exc.errno)
        with open({files[0]!r}) as f:
            for how in (fcntl.LOCK_SH, fcntl.LOCK_SH | fcntl.LOCK_NB):
                try:
                    fcntl.lockf(f, how)  # a POSIX (fcntl) read lock
                    held.append(how)
                except OSError as exc:
                    refused.append(exc.errno)
        print("HELD", len(held), len(refused), flush=True)
        time.sleep(3)
        """
    )
    receiver = textwrap.dedent(
        f"""
        import fcntl, time
        def probe():
            byte = 0
            for bit, path in enumerate({files!r}):
                with open(path) as f:
                    try:
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        fcntl.flock(f, fcntl.LOCK_UN)
                    except BlockingIOError:
                        byte |= 1 << bit
                    except OSError:
                        pass
            return byte
        byte = 0
        for _ in range(50):
            byte = probe()
            if byte:
                time.sleep(0.2)
                byte = probe()
                break
            time.sleep(0.05)
        print("RECEIVED", byte)
        """
    )
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("receiver", run_program(receiver, timeout_s=20)))
    worker.start()
    result, host = _run_while_sampling(sender, lambda: _host_can_lock(files + ["/etc/ld.so.cache"]))
    worker.join()
    assert box["receiver"].passed and _words_after(box["receiver"], "RECEIVED") == ["0"], box["receiver"]
    assert all(host), "the sandbox's lock blocked the host's"
    assert result.passed and _words_after(result, "HELD") == ["0", "7"], result


# --------------------------------------------------------------------------- CPU, threads, mountinfo


@needs_full_isolation
def test_the_sandbox_cgroup_caps_the_cpu() -> None:
    group = cgroup.create(64 << 20, 8, 1)
    try:
        if not group.cpu_capped:
            pytest.skip("this machine offers no CPU controller to a new cgroup")
        if group.version == 2:
            assert (group.dirs[0] / "cpu.max").read_text().split() == ["100000", "100000"]
        else:
            cpu = group.dirs[group.controllers.index("cpu")]
            assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
            assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    finally:
        group.remove()


@needs_full_isolation
def test_busy_processes_share_one_core() -> None:
    program = textwrap.dedent(
        """
        import os, resource, time
        start = time.monotonic()
        for _ in range(6):  # enough to get more than a core even on a busy 2-core machine
            if os.fork() == 0:
                while time.monotonic() - start < 1.5:
                    pass
                os._exit(0)
        for _ in range(6):
            os.wait()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        print("CORES", round((used.ru_utime + used.ru_stime) / (time.monotonic() - start), 2))
        """
    )
    result = run_program(program, timeout_s=20)
    assert result.passed and float(_words_after(result, "CORES")[0]) < 1.25, result  # CPU_CORES is 1


@needs_full_isolation
def test_threads_are_not_capped_by_malloc_arenas() -> None:
    program = textwrap.dedent(
        """
        import threading
        ready, threads = threading.Event(), []
        try:
            for _ in range(24):
                thread = threading.Thread(target=ready.wait)
                thread.start()
                threads.append(thread)
        except RuntimeError:
            pass
        ready.set()
        print("THREADS", len(threads))
        """
    )
    result = run_program(program, timeout_s=20)  # at the default 1 GiB the old sandbox started 14
    assert result.passed and _words_after(result, "THREADS") == ["24"], result


@needs_full_isolation
def test_mountinfo_shows_no_host_paths() -> None:
    result = run_program("print(open('/proc/self/mountinfo').read())", timeout_s=20)
    assert result.passed, result
    for line in result.stdout.strip().splitlines():
        root, point = line.split()[3:5]  # what of its filesystem a mount shows, and where
        assert root == "/" or point.endswith(root), line
    assert str(Path(code.__file__).parents[1]) not in result.stdout  # the checkout's dear/ folder
