"""A seccomp filter for every program the sandbox runs, built as classic BPF with ctypes.

It refuses, with ``EPERM`` unless noted:

* ``socket`` for any family but ``AF_UNIX`` (``EAFNOSUPPORT``): no ``AF_INET``/``AF_INET6`` (the
  network namespace has nothing to reach anyway), ``AF_VSOCK`` (which would leave the machine),
  ``AF_NETLINK``, ``AF_PACKET``, ...;
* new namespaces (``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag; ``clone3`` gets
  ``ENOSYS`` so the C library falls back to ``clone``, whose flags can be checked);
* reaching other processes' memory (``ptrace``, ``process_vm_readv``/``writev``);
* mounts, keyrings, BPF, perf events, ``userfaultfd``, ``io_uring`` (which can open sockets
  without ``socket(2)``), file handles (``open_by_handle_at``), kernel modules and ``kexec``;
* budgets of the whole machine or of the caller's user: Linux AIO (``io_setup``: the system-wide
  ``aio-nr``), ``inotify`` and ``fanotify`` instances (counted against the caller's user too);
* what the sandbox's files share with the host's: the bound files are the host's own inodes, so file
  locks (``flock``, and ``fcntl``'s ``F_*LK`` and ``F_OFD_*LK``: ``ENOLCK``) would block the host or
  carry bits between two sandboxes, and ``inotify``, ``fanotify`` and ``fcntl(F_NOTIFY)`` would see the
  host read its files; ``F_SETLEASE`` goes too;
* any system call of another ABI (32-bit ``int 0x80`` or x32 on x86_64).

Only x86_64 and aarch64 are known here; elsewhere :func:`install` raises ``OSError`` and the
sandbox cannot claim full isolation. Standard library only: this file runs in the bootstrap.
"""

import ctypes
import errno
import os
import struct

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
RET_ALLOW, RET_ERRNO, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0, OFFSET_ARG1 = 0, 4, 16, 24  # struct seccomp_data; args' low 32 bits
AF_UNIX = 1
CLONE_NEW_ANY = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000 | 0x80

F_LOCKS = (5, 6, 7, 36, 37, 38)  # F_GETLK, F_SETLK, F_SETLKW, F_OFD_GETLK, F_OFD_SETLK, F_OFD_SETLKW
F_REFUSED = (1024, 1026)  # F_SETLEASE, F_NOTIFY

# The system calls the filter names, and their numbers on each machine (the same order; None: not there).
# fmt: off
SYSCALLS = (
    "socket", "clone", "clone3", "fcntl", "flock", "ptrace", "process_vm_readv", "process_vm_writev", "unshare",
    "setns", "mount", "umount2", "pivot_root", "chroot", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at",
    "name_to_handle_at", "fsopen", "fsconfig", "fsmount", "move_mount", "open_tree", "mount_setattr", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot", "acct",
    "quotactl", "syslog", "io_setup", "io_destroy", "io_getevents", "io_submit", "io_cancel", "io_pgetevents",
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark",
)
ARCHES = {
    # machine: (AUDIT_ARCH_*, first number of a foreign ABI or None, {name: number})
    "x86_64": (0xC000003E, 0x40000000, dict(zip(SYSCALLS, (
        41, 56, 435, 72, 73, 101, 310, 311, 272, 308, 165, 166, 155, 161, 250, 248, 249, 321, 298, 323, 425, 426,
        427, 304, 303, 430, 431, 432, 429, 428, 442, 246, 320, 175, 313, 176, 167, 168, 169, 163, 179, 103, 206, 207,
        208, 209, 210, 333, 253, 294, 254, 300, 301,
    ), strict=True))),
    "aarch64": (0xC00000B7, None, dict(zip(SYSCALLS, (
        198, 220, 435, 25, 32, 117, 270, 271, 97, 268, 40, 39, 41, 51, 219, 217, 218, 280, 241, 282, 425, 426, 427,
        265, 264, 430, 431, 432, 429, 428, 442, 104, 294, 105, 273, 106, 224, 225, 142, 89, 60, 116, 0, 1, 4, 2, 3,
        292, None, 26, 27, 262, 263,
    ), strict=True))),
}
# fmt: on


def program(machine: str) -> list:
    """The filter as (code, jt, jf, k) tuples, jump targets resolved."""
    if machine not in ARCHES:
        raise OSError(errno.ENOSYS, "no seccomp filter for %s" % machine)
    audit_arch, foreign, numbers = ARCHES[machine]
    special = ("socket", "clone", "clone3", "fcntl", "flock")
    denied = sorted(v for k, v in numbers.items() if k not in special and v is not None)
    # Instructions with symbolic jump targets: ("jeq", k, label_true, label_false); None = next.
    code = [("ld", OFFSET_ARCH), ("jeq", audit_arch, None, "kill"), ("ld", OFFSET_NR)]
    if foreign is not None:
        code.append(("jge", foreign, "eperm", None))
    code += [("jeq", nr, "eperm", None) for nr in denied]
    code += [
        ("jeq", numbers["socket"], "socket", None),
        ("jeq", numbers["clone"], "clone", None),
        ("jeq", numbers["clone3"], "enosys", None),
        ("jeq", numbers["fcntl"], "fcntl", None),
        ("jeq", numbers["flock"], "enolck", None),
        ("ret", RET_ALLOW),
        ("label", "fcntl"),
        ("ld", OFFSET_ARG1),  # the command: the kernel reads it as an unsigned int
    ]
    code += [("jeq", cmd, "enolck", None) for cmd in F_LOCKS] + [("jeq", cmd, "eperm", None) for cmd in F_REFUSED]
    code += [
        ("ret", RET_ALLOW),
        ("label", "socket"),
        ("ld", OFFSET_ARG0),
        ("jeq", AF_UNIX, "allow", None),
        ("ret", RET_ERRNO | errno.EAFNOSUPPORT),
        ("label", "clone"),
        ("ld", OFFSET_ARG0),
        ("jset", CLONE_NEW_ANY, "eperm", "allow"),
        ("label", "allow"),
        ("ret", RET_ALLOW),
        ("label", "eperm"),
        ("ret", RET_ERRNO | errno.EPERM),
        ("label", "enosys"),
        ("ret", RET_ERRNO | errno.ENOSYS),
        ("label", "enolck"),
        ("ret", RET_ERRNO | errno.ENOLCK),
        ("label", "kill"),
        ("ret", RET_KILL_PROCESS),
    ]
    labels, position = {}, 0
    for item in code:
        if item[0] == "label":
            labels[item[1]] = position
        else:
            position += 1
    out, position = [], 0
    for item in code:
        op = item[0]
        if op == "label":
            continue
        if op == "ld":
            out.append((LD_W_ABS, 0, 0, item[1]))
        elif op == "ret":
            out.append((RET_K, 0, 0, item[1]))
        else:
            offsets = [0 if t is None else labels[t] - position - 1 for t in item[2:4]]
            if not all(0 <= o < 256 for o in offsets):
                raise ValueError("seccomp jump out of range")
            out.append(({"jeq": JEQ_K, "jge": JGE_K, "jset": JSET_K}[op], offsets[0], offsets[1], item[1]))
        position += 1
    return out


def install() -> None:
    """Load the filter into this thread (inherited by its children and across ``execve``).

    ``no_new_privs`` must be set first (the sandbox sets it just before).
    """
    instructions = program(os.uname().machine)
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in instructions)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(instructions), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "seccomp: %s" % os.strerror(err))
