"""Build the sandbox and supervise what runs in it; see :mod:`dear.eval.code` for the whole design.

Started by the harness as ``python -I -S bootstrap.py`` with its configuration as JSON on stdin. It
reports on a dedicated status pipe: ``exit <wait status>`` for the program (or, in a graded run, for
the checker), or ``error <message>`` when the sandbox cannot be built. Standard library only: it
starts for every program.
"""

import ctypes
import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seccomp  # noqa: E402

CFG = json.loads(sys.stdin.buffer.read())
STATUS_FD = CFG["status_fd"]
TOKEN_FD = CFG["token_fd"]
LIBC = ctypes.CDLL(None, use_errno=True)
for name, argtypes in (
    ("mount", [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]),
    ("umount2", [ctypes.c_char_p, ctypes.c_int]),
    ("unshare", [ctypes.c_int]),
    ("prctl", [ctypes.c_int] + [ctypes.c_ulong] * 4),
):
    if hasattr(LIBC, name):  # Linux-only calls; the fallback copes without them
        getattr(LIBC, name).argtypes = argtypes

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
ST_RELATIME = 4096
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 36, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
DEVICES = ("null", "zero", "full", "random", "urandom")
DRIVER_FILES = ("checker.py", "candidate.py", "wire.py")  # what runs inside; bootstrap and seccomp run outside
# Where things appear inside the sandbox's own root.
WORK, DRIVERS = "/run/dear/work", "/run/dear/lib"


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
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    check(LIBC.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), "mount " + target)


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def with_suppress(fn):
    try:
        fn()
    except OSError:
        pass


# --------------------------------------------------------------------------- namespaces


def check_cgroup():
    # The harness moved us into the sandbox's cgroup before sending the configuration, so every
    # process of the sandbox is born in it; make sure before anything forks.
    name, controllers = CFG["cgroup"], CFG["cgroup_controllers"]
    if name is None:
        return
    with open("/proc/self/cgroup") as f:
        ours = [line.rstrip("\n").split(":", 2) for line in f]
    joined = [
        path.endswith("/" + name)
        for _, names, path in ours
        if set(names.split(",")) & set(controllers) or (names == "" and controllers == [""])
    ]
    if not joined or not all(joined):
        raise OSError("not in the sandbox's cgroup %s" % name)


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


# --------------------------------------------------------------------------- the sandbox's root


def bind_read_only(source, target):
    mount(source, target, None, MS_BIND)
    # A bind mount keeps the flags of the mount it comes from; inside a user namespace they are
    # locked, so the read-only remount must repeat them.
    st = os.statvfs(source)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= st.f_flag & (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    flags |= MS_RELATIME if st.f_flag & ST_RELATIME else (0 if st.f_flag & MS_NOATIME else MS_STRICTATIME)
    mount(None, target, None, flags)


def build_root():
    # A tmpfs holding only the runtime tree (the system's programs and libraries, the interpreter, its
    # standard library, the packages a program may import: dear.eval.runtime), copies of the sandbox's own
    # programs, a private /dev and /proc, and the working directory; it becomes "/".
    root = CFG["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do leaks to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    inside = lambda path: root + path  # noqa: E731
    empties = []
    for kind, path, target in CFG["binds"]:
        os.makedirs(os.path.dirname(inside(path)), exist_ok=True)
        if kind == "symlink":
            os.symlink(target, inside(path))
        elif kind == "empty":
            if os.path.isdir(inside(path)):  # the host's folder shows through a bound parent: cover it
                mount("tmpfs", inside(path), "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
                empties.append(inside(path))
            else:
                os.makedirs(inside(path))
        elif kind == "dir":
            os.makedirs(inside(path), exist_ok=True)
            bind_read_only(path, inside(path))
        else:
            if not os.path.exists(inside(path)):
                open(inside(path), "w").close()
            bind_read_only(path, inside(path))
    for folder in empties:
        mount(None, folder, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    # Copies, not a bind mount: /proc/self/mountinfo would show where the checkout lives.
    os.makedirs(inside(DRIVERS))
    for name in DRIVER_FILES:
        with open(os.path.join(CFG["drivers"], name), "rb") as src, open(inside(DRIVERS) + "/" + name, "wb") as dst:
            dst.write(src.read())
    os.makedirs(inside(WORK))
    mount("tmpfs", inside(WORK), "tmpfs", MS_NOSUID | MS_NODEV, "size=%dm,mode=0755" % CFG["tmpfs_mb"])
    dev = inside("/dev")
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEVICES:
        open(dev + "/" + name, "w").close()
        mount("/dev/" + name, dev + "/" + name, None, MS_BIND)
    os.makedirs(dev + "/pts")
    mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", dev + "/ptmx")
    os.makedirs(dev + "/shm")
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=16m,mode=1777")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, dev + "/" + name)
    os.makedirs(inside("/proc"))
    mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(inside("/tmp"), exist_ok=True)  # already there when the Python installation lives under /tmp
    os.chdir(root)
    check(LIBC.syscall(SYS_PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    check(LIBC.umount2(b".", MNT_DETACH), "umount the host's root")
    os.chdir("/")
    for key, value in CFG["ipc_limits"].items():  # this IPC namespace's own limits
        write_file("/proc/sys/kernel/" + key, str(value))
    mount(None, "/proc", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


# --------------------------------------------------------------------------- the programs


def exec_program(argv, keep, isolated, expendable):
    # Runs in a child that becomes a program of the sandbox; never returns.
    try:
        previous = 2
        for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:  # nothing of ours leaks into the program
            os.closerange(previous + 1, fd)
            previous = fd
        for fd in keep:
            os.set_inheritable(fd, True)
        if not isolated:
            os.setsid()  # so kill(0, ...) in the program cannot reach the bootstrap
        os.chdir(CFG["workdir"])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if expendable:  # under memory pressure the OOM killer takes the candidate first
            with_suppress(lambda: write_file("/proc/self/oom_score_adj", "1000"))
        for name, value in CFG["rlimits"].items():
            try:
                resource.setrlimit(getattr(resource, name), (value, value))
            except (AttributeError, ValueError, OSError):
                if isolated:
                    raise  # on Linux every limit must hold; elsewhere keep what works
        if isolated:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last_cap = int(f.read())
            for cap in range(last_cap + 1):  # no capability survives the exec
                prctl(PR_CAPBSET_DROP, cap)
        try:
            prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid binaries cannot grant privileges
        except OSError:
            if isolated:
                raise
        if isolated:
            seccomp.install()
        os.execve(CFG["python"], argv, CFG["env"])
    except BaseException as exc:
        os.write(2, ("sandbox: cannot start the program: %s\n" % exc).encode())
    os._exit(127)


def spawn(argv, keep, isolated, expendable):
    pid = os.fork()
    if pid == 0:
        exec_program(argv, keep, isolated, expendable)
    STOP["children"].append(pid)  # from now on a stop request kills it
    if STOP["requested"]:
        kill_children()
    return pid


def launch(isolated):
    """Start the program, or the checker and the candidate; the first pid returned is the one whose exit counts."""
    drivers = DRIVERS if isolated else CFG["drivers"]
    program = os.path.join(CFG["workdir"], "main.py")
    with open(program, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(CFG["program"])
    python = CFG["python"]
    job = CFG["job"]
    if job is None:
        return [spawn([python, "-B", "-s", program], [], isolated, True)]
    job_r, job_w = os.pipe()
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    checker_fds = [job_r, requests_w, replies_r, TOKEN_FD, ready_w]
    # Both start without site (-S), which they load only for code that imports beyond the stdlib.
    checker = spawn(
        [python, "-I", "-B", "-S", drivers + "/checker.py"] + [str(fd) for fd in checker_fds],
        checker_fds,
        isolated,
        False,
    )
    # Both interpreters start at once, but the candidate's driver runs none of the program's code
    # until the checker has made itself undumpable and said so ("go").
    candidate_fds = [requests_r, replies_w, go_r]
    candidate = spawn(
        [python, "-B", "-s", "-S", drivers + "/candidate.py"]
        + [str(fd) for fd in candidate_fds]
        + [program, job["kind"]],
        candidate_fds,
        isolated,
        True,
    )
    for fd in (job_r, ready_w, go_r, TOKEN_FD, requests_r, requests_w, replies_r, replies_w):
        os.close(fd)
    try:
        with os.fdopen(job_w, "wb") as f:
            f.write(json.dumps(job).encode())
    except OSError:
        pass  # the checker died: no token
    if os.read(ready_r, 1) == b"r":  # empty if the checker died: the candidate then never starts
        os.write(go_w, b"g")
    os.close(ready_r)
    os.close(go_w)
    return [checker, candidate]


def run_init(lifeline_r):
    # Init of the new pid namespace: build the root, start the programs, report.
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # bootstrap gone -> namespace gone
        if os.read(lifeline_r, 1) == b"":
            os._exit(1)  # the bootstrap died before PDEATHSIG was armed
        # An init only receives signals it handles; drop Python's handlers so the program
        # cannot interrupt its supervisor.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        build_root()
        prctl(PR_SET_DUMPABLE, 0)  # it holds the tests: no ptrace, no /proc/1/mem
        main = launch(isolated=True)[0]
    except BaseException as exc:
        report("error sandbox setup failed: %s" % exc)
        os._exit(70)
    while True:
        pid, status = os.waitpid(-1, 0)  # also reaps reparented orphans
        if pid == main:
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
        check_cgroup()
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
    if TOKEN_FD is not None:
        os.close(TOKEN_FD)
    os.write(lifeline_w, b"x")
    STOP["children"].append(init)
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
    started = launch(isolated=False)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == started[0]:
            report("exit %d" % status)
            break
    kill_children()
    while True:
        for pid in children():
            with_suppress(lambda: os.kill(pid, signal.SIGKILL))  # noqa: B023 (called at once)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    os._exit(0)


# The harness asks for a stop with SIGTERM: SIGKILL the children (the namespace's init, whose
# death empties the namespace, or the programs' process groups), even if not forked yet.
STOP = {"requested": False, "children": []}


def kill_children():
    for child in STOP["children"]:
        with_suppress(lambda: os.killpg(child, signal.SIGKILL))  # noqa: B023 (called at once)
        with_suppress(lambda: os.kill(child, signal.SIGKILL))  # noqa: B023


def on_sigterm(*_):
    STOP["requested"] = True
    kill_children()


signal.signal(signal.SIGTERM, on_sigterm)
os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
if CFG["isolate"]:
    supervise_namespaced()
else:
    supervise_plain()
