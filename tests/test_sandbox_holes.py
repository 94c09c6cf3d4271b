"""The sandbox under attack (issue 13): cheats that must not pass, memory that stays bounded, host objects
out of reach, nothing to read, and a fail-closed isolation choice.

Each test here failed on the sandbox before grading needed a token from a separate checker process and
before the sandbox had its own cgroup, root and seccomp filter. Tests that need the full isolation skip
where the machine cannot build it, and fail instead under ``CI=true`` (see ``tests/sandbox_support.py``).
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import socket
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from dear.data.benchmarks import Problem
from dear.eval import code
from dear.eval.code import check_io, run_program
from dear.eval.grading import grade

from sandbox_support import check_humaneval as _check
from sandbox_support import humaneval_problems, needs_full_isolation

humaneval = pytest.fixture(scope="module")(humaneval_problems)


# --------------------------------------------------------------------------- cheating the grader

WRONG = "    return False\n"  # HumanEval/0 expects True for some inputs

CHEATS = {
    "os._exit after the function": WRONG + "import os\nos._exit(0)\n",
    "sys.exit after the function": WRONG + "import sys\nsys.exit(0)\n",
    "SystemExit inside the function": "    raise SystemExit(0)\n",
    "atexit os._exit": WRONG + "import atexit, os\natexit.register(os._exit, 0)\n",
    "always-equal result": (
        "    class Yes:\n"
        "        def __eq__(self, other):\n"
        "            return True\n"
        "        __hash__ = object.__hash__\n"
        "        def __bool__(self):\n"
        "            return True\n"
        "    return Yes()\n"
    ),
    "re-exec with -O": WRONG
    + textwrap.dedent(
        """
        import os, sys
        if sys.flags.optimize == 0:
            os.execv(sys.executable, [sys.executable, "-O"] + sys.argv)
        """
    ),
    "read the tests from its own file": textwrap.indent(
        textwrap.dedent(
            """
        import re, sys
        text = open(sys.argv[0]).read()
        for line in text.splitlines():
            m = re.match(r"\\s*assert candidate\\((.*)\\) == (True|False)\\s*$", line)
            if m and eval("(" + m.group(1) + ",)") == (numbers, threshold):
                return m.group(2) == "True"
        return False
        """
        ),
        "    ",
    ),
}


@needs_full_isolation
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_humaneval_cheats_do_not_pass(humaneval, cheat: str) -> None:
    result = _check(humaneval["HumanEval/0"], CHEATS[cheat])
    assert not result.passed, result


@needs_full_isolation
def test_patching_builtins_does_not_pass(humaneval) -> None:
    # HumanEval/2's test reads `abs(candidate(3.5) - 0.5) < 1e-6`: a patched abs makes any answer right.
    cheat = "    import builtins\n    builtins.abs = lambda x: 0\n    return 0.5\n"
    result = _check(humaneval["HumanEval/2"], cheat)
    assert not result.passed, result
    assert _check(humaneval["HumanEval/2"], humaneval["HumanEval/2"]["canonical_solution"]).passed


@needs_full_isolation
def test_the_program_file_holds_no_tests(humaneval) -> None:
    problem = humaneval["HumanEval/0"]
    spy = WRONG + "import sys\nprint(open(sys.argv[0]).read(), file=sys.stderr)\n"
    result = _check(problem, spy)
    assert not result.passed
    assert "def has_close_elements" in result.stderr  # it did read its own file ...
    assert "assert candidate" not in result.stderr and "def check" not in result.stderr  # ... and no test in it


IO_CASES = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 -7\n", "output": "-2\n"}]

IO_CHEATS = {
    "os._exit": "import os\nos._exit(0)\n",
    "sys.exit(0) before printing": "import sys\nsys.exit(0)\n",
    "replace the comparison through __main__": textwrap.dedent(
        """
        import __main__
        for name in dir(__main__):
            if callable(getattr(__main__, name)) and not name.startswith("__"):
                setattr(__main__, name, lambda *args, **kwargs: True)
        print(0)
        """
    ),
}


@needs_full_isolation
@pytest.mark.parametrize("cheat", sorted(IO_CHEATS))
def test_io_cheats_do_not_pass(cheat: str) -> None:
    assert check_io("a, b = map(int, input().split())\nprint(a + b)\n", IO_CASES).passed
    result = check_io(IO_CHEATS[cheat], IO_CASES)
    assert not result.passed, result


# Issue 12: a program that exits 0 before its tests run is not a pass, on every benchmark family.
EARLY_EXITS = ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n"]


@needs_full_isolation
@pytest.mark.parametrize("exit_code", EARLY_EXITS)
def test_early_exit_is_not_a_pass_humaneval(humaneval, exit_code: str) -> None:
    problem = humaneval["HumanEval/0"]
    result = _check(problem, problem["canonical_solution"] + exit_code)  # right, then gone before the tests
    assert not result.passed, result


@needs_full_isolation
@pytest.mark.parametrize("exit_code", EARLY_EXITS)
def test_early_exit_is_not_a_pass_mbpp(exit_code: str) -> None:
    mbpp = Problem(
        id="mbpp/x",
        question="q",
        kind="code",
        entry_point="add",
        reference="\n\ndef check(candidate):\n    assert add(1, 2) == 3\n    assert add(2, 2) == 4\n",
    )
    assert grade(mbpp, "```python\ndef add(a, b):\n    return a + b\n```")
    assert not grade(mbpp, f"```python\ndef add(a, b):\n    return 0\n{exit_code}```")


@needs_full_isolation
@pytest.mark.parametrize("exit_code", EARLY_EXITS)
def test_early_exit_is_not_a_pass_livecodebench(exit_code: str) -> None:
    stdin = Problem(id="livecodebench/a", question="q", kind="code-io", reference=json.dumps(IO_CASES))
    functional = Problem(
        id="livecodebench/b",
        question="q",
        kind="code-io",
        entry_point="add",
        reference=json.dumps([{"input": "1\n2\n", "output": "3"}, {"input": "4\n4\n", "output": "8"}]),
    )
    assert grade(stdin, "```python\na, b = map(int, input().split())\nprint(a + b)\n```")
    assert not grade(stdin, f"```python\n{exit_code}```")
    right = "class Solution:\n    def add(self, a, b):\n        return a + b\n"
    assert grade(functional, f"```python\n{right}```")
    wrong = "class Solution:\n    def add(self, a, b):\n        return 0\n"
    assert not grade(functional, f"```python\n{wrong}{exit_code}```")


# --------------------------------------------------------------------------- memory and processes

HOLD = 512  # MiB a program tries to hold at memory_mb=128

MEMORY_HOGS = {
    "memfd": textwrap.dedent(
        f"""
        import os
        fds = []
        for _ in range({HOLD} // 64):
            fd = os.memfd_create("x")
            os.write(fd, b"x" * (64 << 20))
            fds.append(fd)
        print("HELD")
        """
    ),
    "sysv shm": textwrap.dedent(
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        libc.shmdt.argtypes = [ctypes.c_void_p]
        for _ in range({HOLD} // 32):
            seg = libc.shmget(0, 32 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            assert seg >= 0, ctypes.get_errno()
            addr = libc.shmat(seg, None, 0)
            assert addr not in (None, ctypes.c_void_p(-1).value)
            ctypes.memset(addr, 1, 32 << 20)
            libc.shmdt(ctypes.c_void_p(addr))
        print("HELD")
        """
    ),
    "forked children": textwrap.dedent(
        """
        import os
        ready_r, ready_w = os.pipe()
        hold_r, hold_w = os.pipe()
        for _ in range(6):
            if os.fork() == 0:
                block = bytearray(80 << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                os.write(ready_w, b"x")
                os.read(hold_r, 1)  # hold until the parent exits
                os._exit(0)
        got = b""
        while len(got) < 6:
            got += os.read(ready_r, 6)
        print("HELD")
        """
    ),
}


@needs_full_isolation
@pytest.mark.parametrize("hog", sorted(MEMORY_HOGS))
def test_memory_is_bounded_for_the_whole_sandbox(hog: str) -> None:
    result = run_program(MEMORY_HOGS[hog], timeout_s=8, memory_mb=128)  # a hog whose child is killed waits
    assert "HELD" not in result.stdout, result
    assert not result.passed


# --------------------------------------------------------------------------- host objects


@needs_full_isolation
def test_host_unix_sockets_are_out_of_reach(tmp_path: Path) -> None:
    path = tmp_path / "host.sock"
    abstract = f"\0dear-{uuid.uuid4().hex}"
    accepted = []
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as hidden:
        server.bind(str(path))
        path.chmod(0o777)  # like X11's or a desktop session's sockets: anyone may connect
        hidden.bind(abstract)
        for s in (server, hidden):
            s.listen()
            s.settimeout(0.2)
        program = textwrap.dedent(
            f"""
            import socket
            reached = []
            for address in ({str(path)!r}, {abstract!r}):
                try:
                    socket.socket(socket.AF_UNIX).connect(address)
                    reached.append(address)
                except OSError:
                    pass
            print("REACHED", len(reached))
            """
        )
        result = run_program(program, timeout_s=10)
        for s in (server, hidden):
            try:
                accepted.append(s.accept())
            except TimeoutError:
                pass
    assert result.passed and "REACHED 0" in result.stdout, result
    assert accepted == []


@needs_full_isolation
def test_host_files_cannot_be_locked(tmp_path: Path) -> None:
    lock = tmp_path / "host.lock"
    lock.write_text("")
    lock.chmod(0o666)
    program = textwrap.dedent(
        f"""
        import fcntl, time
        with open({str(lock)!r}) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            print("LOCKED", flush=True)
            time.sleep(3)
        """
    )
    results = []
    worker = threading.Thread(target=lambda: results.append(run_program(program, timeout_s=10)))
    worker.start()
    time.sleep(1.0)
    with open(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while the sandbox holds it
        fcntl.flock(f, fcntl.LOCK_UN)
    worker.join()
    assert "LOCKED" not in results[0].stdout


@needs_full_isolation
def test_ptys_come_from_a_private_devpts() -> None:
    program = "import os\nmaster, slave = os.openpty()\nprint(os.fstat(slave).st_dev, os.ttyname(slave))\n"
    result = run_program(program, timeout_s=10)
    if result.passed:  # a pty, but not one from the host's pool
        st_dev = int(result.stdout.split()[0])
        assert st_dev != os.stat("/dev/pts").st_dev
        assert result.stdout.split()[1] == "/dev/pts/0"


@needs_full_isolation
def test_socket_families_other_than_unix_are_refused() -> None:
    program = textwrap.dedent(
        """
        import socket
        made = []
        for family, kind in ((40, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_STREAM),
                             (socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_NETLINK, socket.SOCK_RAW),
                             (socket.AF_PACKET, socket.SOCK_RAW)):
            try:
                socket.socket(family, kind).close()
                made.append(family)
            except OSError:
                pass
        a, b = socket.socketpair()
        a.sendall(b"unix ok")
        print(made, b.recv(7).decode())
        """
    )
    result = run_program(program, timeout_s=10)
    assert result.passed and result.stdout.strip() == "[] unix ok", result


# --------------------------------------------------------------------------- nothing to read


@needs_full_isolation
def test_host_files_are_not_readable(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    checkout = Path(code.__file__).resolve()
    program = textwrap.dedent(
        f"""
        import os
        seen = []
        for path in ({str(secret)!r}, {str(checkout)!r}, os.path.expanduser("~root") + "/.bashrc"):
            try:
                seen.append(open(path).read()[:20])
            except OSError:
                pass
        for folder in ("/root", {str(tmp_path)!r}, {str(checkout.parent)!r}):
            try:
                seen.extend(os.listdir(folder))
            except OSError:
                pass
        print("SEEN", seen)
        """
    )
    result = run_program(program, timeout_s=10)
    # Only the way to a Python installed under /root (here pyenv's) may show in its listing.
    python_paths = {part for prefix in (sys.prefix, sys.base_prefix) for part in Path(prefix).resolve().parts}
    seen = ast.literal_eval(result.stdout.strip().removeprefix("SEEN "))
    assert result.passed and set(seen) <= python_paths, result
    assert "hunter2" not in result.stdout and "Run untrusted" not in result.stdout


@needs_full_isolation
def test_other_sandboxes_program_files_are_not_readable() -> None:
    secret = f"SECRET{uuid.uuid4().hex}"
    victim = f"import time\n# {secret}\ntime.sleep(4)\n"
    spy = textwrap.dedent(
        """
        import glob, os, time
        time.sleep(1.5)
        found = []
        for pattern in ("/tmp/*/*.py", "/tmp/*/*/*.py", "/tmp/*/*/*/*.py", "/proc/*/cwd/*.py"):
            for path in glob.glob(pattern):
                try:
                    found.append(open(path).read())
                except OSError:
                    pass
        print("\\n".join(found))
        """
    )
    results = {}
    victim_thread = threading.Thread(target=lambda: results.setdefault("victim", run_program(victim, timeout_s=10)))
    victim_thread.start()
    results["spy"] = run_program(spy, timeout_s=10)
    victim_thread.join()
    assert secret not in results["spy"].stdout


# --------------------------------------------------------------------------- isolation choice, fail closed


def test_a_failed_probe_stops_grading_with_one_line(monkeypatch) -> None:
    from dear.errors import DearError

    monkeypatch.setattr(code, "_mode", None)
    monkeypatch.delenv("DEAR_SANDBOX", raising=False)
    monkeypatch.setattr(code, "_probe", lambda mode: code.ExecResult("error", None, "", "", 0.0, "no namespaces here"))
    with pytest.raises(DearError) as info:
        run_program("print(1)")
    message = str(info.value)
    assert "\n" not in message and "no namespaces here" in message and "DEAR_SANDBOX=weak" in message
    with pytest.raises(DearError):  # asked again, not silently downgraded after one failure
        run_program("print(1)")


@needs_full_isolation
def test_the_candidate_cannot_reach_the_checker(humaneval) -> None:
    # The checker (and init) are undumpable and ptrace is filtered: no reading their memory or fds.
    spy = WRONG + textwrap.dedent(
        """
        import ctypes, os, sys
        reached = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            for path in ("/proc/%s/mem" % pid, "/proc/%s/environ" % pid):
                try:
                    open(path, "rb").read(1)
                    reached.append(path)
                except OSError:
                    pass
            try:
                fds = os.listdir("/proc/%s/fd" % pid)  # the numbers show; the pipes behind them must not open
            except OSError:
                fds = []
            for fd in fds:
                for mode in (os.O_RDONLY, os.O_WRONLY):
                    try:
                        os.close(os.open("/proc/%s/fd/%s" % (pid, fd), mode | os.O_NONBLOCK))
                        reached.append("/proc/%s/fd/%s" % (pid, fd))
                    except OSError:
                        pass
            if ctypes.CDLL(None).ptrace(16, int(pid), 0, 0) == 0:  # PTRACE_ATTACH
                reached.append("ptrace %s" % pid)
        print("REACHED", reached, file=sys.stderr)
        """
    )
    result = _check(humaneval["HumanEval/0"], spy)
    assert not result.passed and "REACHED []" in result.stderr, result


@needs_full_isolation
def test_the_sandbox_has_its_own_cgroup_and_ipc_limits() -> None:
    program = textwrap.dedent(
        """
        print(open("/proc/self/cgroup").read())
        for key in ("shmmni", "shmmax", "shmall"):
            print(key, open("/proc/sys/kernel/" + key).read().strip())
        """
    )
    result = run_program(program, timeout_s=10)
    assert result.passed and "dear-sandbox-" in result.stdout, result
    for key in ("shmmni", "shmmax", "shmall"):
        assert f"{key} {code.IPC_LIMITS[key]}\n" in result.stdout


@needs_full_isolation
def test_a_python_installation_under_tmp_still_isolates(tmp_path, monkeypatch):
    """A checkout (and its .venv) under /tmp: the sandbox's root gets /tmp both as a mount point and a parent."""
    assert str(tmp_path).startswith("/tmp/"), "pytest's tmp_path is expected under /tmp here"
    (tmp_path / "lib").mkdir()
    binds = code._binds
    monkeypatch.setattr(code, "_binds", lambda: [*binds(), ("dir", str(tmp_path / "lib"), "")])
    result = run_program("print('ran')\n")
    assert result.passed and result.stdout.strip() == "ran", result
