"""A memory, process and CPU budget for one sandbox: its own cgroup, v2 where the machine offers it, else v1.

:func:`create` makes a cgroup below the caller's own with ``memory.max``, ``pids.max`` and ``cpu.max``
(cgroup v2), or ``memory.limit_in_bytes`` (plus ``memory.memsw.limit_in_bytes`` where swap is accounted),
``pids.max`` and ``cpu.cfs_quota_us`` in the v1 ``memory``, ``pids`` and ``cpu`` hierarchies. The
sandbox's bootstrap joins it before it forks anything, so every process, page, ``memfd``, tmpfs file and
SysV shared-memory segment of the sandbox counts against one budget; past it the kernel's OOM killer
stops the sandbox, not the caller. The CPU quota keeps a sandbox to ``cpus`` cores however many threads
or processes it starts; where the machine has no CPU controller to give, ``cpus`` is not enforced and
:attr:`Cgroup.cpu_capped` says so. :meth:`Cgroup.remove` kills whatever is left in it and removes it.

Creating cgroups needs write access to the caller's cgroup (root, or a delegated v2 subtree);
:func:`unavailable` says why not when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Cgroup", "create", "unavailable"]


@dataclass
class Cgroup:
    """The directories of one sandbox's cgroup (one for v2, one per v1 hierarchy).

    ``controllers`` names the v1 controller of each directory (``[""]`` for v2); ``cpu_capped`` says
    whether the CPU quota holds.
    """

    dirs: list[Path] = field(default_factory=list)
    version: int = 2
    controllers: list[str] = field(default_factory=lambda: [""])
    cpu_capped: bool = False

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup (its future children are born there)."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Kill every process left in the cgroup, then remove it (retrying while they exit)."""
        for d in self.dirs:
            if self.version == 2:
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
            deadline = time.monotonic() + 5.0
            while d.exists():
                with contextlib.suppress(OSError, ValueError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(OSError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # leaves an empty cgroup behind; the kernel frees its memory
                    time.sleep(0.005)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount."""
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            fstype, _, options = (after.split() + ["", "", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                point = before.split()[4].encode().decode("unicode_escape")
                found.append((point, fstype, set(options.split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """This process's cgroup per v1 controller, and under "" its v2 cgroup."""
    paths = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _v2_parent() -> Path | None:
    """Our v2 cgroup if it offers memory and pids to children (enabling them if we may)."""
    own = _own_paths().get("")
    for point, fstype, _ in _mounts():
        if fstype != "cgroup2" or own is None:
            continue
        parent = Path(point) / own.lstrip("/")
        try:
            controllers = set((parent / "cgroup.controllers").read_text().split())
            if not {"memory", "pids"} <= controllers:
                continue
            enabled = set((parent / "cgroup.subtree_control").read_text().split())
            if not {"memory", "pids"} <= enabled:
                (parent / "cgroup.subtree_control").write_text("+memory +pids")
            if "cpu" in controllers and "cpu" not in enabled:
                with contextlib.suppress(OSError):  # optional: the CPU quota is not a memory or process bound
                    (parent / "cgroup.subtree_control").write_text("+cpu")
            return parent
        except OSError:
            continue
    return None


def _v1_parents() -> dict[str, Path] | None:
    """Our cgroup in the v1 memory and pids hierarchies (None unless both), and in the cpu one where mounted."""
    own = _own_paths()
    parents = {}
    for controller in ("memory", "pids", "cpu"):
        for point, fstype, options in _mounts():
            if fstype == "cgroup" and controller in options and controller in own:
                parents[controller] = Path(point) / own[controller].lstrip("/")
                break
    return parents if {"memory", "pids"} <= set(parents) else None


def _quota(cpus: float) -> tuple[int, int]:
    """(quota, period) in microseconds for ``cpus`` cores over a 100 ms period."""
    period = 100_000
    return max(1000, round(cpus * period)), period


def create(memory_bytes: int, max_tasks: int, cpus: float) -> Cgroup:
    """A new cgroup limited to ``memory_bytes``, ``max_tasks`` processes and threads and, where the machine
    has a CPU controller to give, ``cpus`` cores; ``OSError`` if none."""
    name = f"dear-sandbox-{uuid.uuid4().hex[:12]}"
    quota, period = _quota(cpus)
    parent = _v2_parent()
    if parent is not None:
        group = Cgroup([parent / name], version=2)
        group.dirs[0].mkdir()
        try:
            (group.dirs[0] / "memory.max").write_text(str(memory_bytes))
            if (group.dirs[0] / "memory.swap.max").exists():
                (group.dirs[0] / "memory.swap.max").write_text("0")
            (group.dirs[0] / "pids.max").write_text(str(max_tasks))
        except OSError:
            group.remove()
            raise
        with contextlib.suppress(OSError):  # no cpu.max where the parent could not enable the controller
            (group.dirs[0] / "cpu.max").write_text(f"{quota} {period}")
            group.cpu_capped = True
        return group
    parents = _v1_parents()
    if parents is None:
        raise OSError("no cgroup v2 with the memory and pids controllers, nor v1 memory and pids hierarchies")
    group = Cgroup([parents["memory"] / name, parents["pids"] / name], version=1, controllers=["memory", "pids"])
    try:
        for d in group.dirs:
            d.mkdir()
        memory = group.dirs[0]
        (memory / "memory.limit_in_bytes").write_text(str(memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():
            (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
        (group.dirs[1] / "pids.max").write_text(str(max_tasks))
    except OSError:
        group.remove()
        raise
    cpu = parents.get("cpu")
    if cpu is not None and cpu not in (parents["memory"], parents["pids"]):
        with contextlib.suppress(OSError):  # optional, as on v2
            (cpu / name).mkdir()
            group.dirs.append(cpu / name)
            group.controllers.append("cpu")
            (cpu / name / "cpu.cfs_period_us").write_text(str(period))
            (cpu / name / "cpu.cfs_quota_us").write_text(str(quota))
            group.cpu_capped = True
    return group


def unavailable() -> str | None:
    """Why no sandbox cgroup can be made here, or None when one can."""
    try:
        create(64 << 20, 8, 1).remove()
    except OSError as err:
        return f"cannot create a cgroup ({err.strerror or err})"
    return None
