"""What the benchmark scripts share: machine facts, peak-memory probes, thread choice, child processes.

Peak tensor memory on the CPU (`AllocationTrace`): the CPU allocator reports every allocation and free to
``torch.profiler`` (``profile_memory=True``); summed in time order, the largest running total inside a window
is the most tensor memory alive at once there, above what was allocated before the trace. Freed memory the
heap keeps resident is not counted (the allocator's own accounting, not the process's).

Peak memory on the CPU (`PeakRSS`): glibc ``malloc_trim(0)`` first hands freed heap pages back to the
kernel, so the resident set is what is alive; writing ``5`` to ``/proc/self/clear_refs`` resets the
kernel's high-water mark ``VmHWM`` to the current ``VmRSS``; after the measured code, ``VmHWM - VmRSS
before`` is the most memory it had resident at once on top of what was there. Where that reset is not
available the probe falls back to ``ru_maxrss`` (peak since the process started: an overestimate when
an earlier phase peaked higher) and says so in its ``how``.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
}


def offline_env(**extra: str) -> dict[str, str]:
    """The environment a benchmark child runs in: offline, the repository and tests/ importable."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **OFFLINE, "PYTHONPATH": path, **extra}


def compose(overrides: list[str]):
    """The config ``dear-train`` would run with these overrides (tests/conftest.py's `compose`), leaving torch's
    thread count as it was (importing conftest sets it to 2, the test suite's setting)."""
    import torch

    threads = torch.get_num_threads()
    from conftest import compose as hydra_compose

    torch.set_num_threads(threads)
    return hydra_compose(overrides)


def _read_kib(field: str, path: str = "/proc/self/status") -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class PeakRSS:
    """Peak resident memory above the starting point of a block of code, in bytes.

    >>> probe = PeakRSS(); probe.start(); work(); probe.stop(); probe.peak_bytes
    """

    def __init__(self):
        self.how = ""
        self.base_bytes = 0
        self.peak_bytes = 0
        self._hwm = False

    def start(self) -> None:
        import gc

        gc.collect()
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to VmRSS (Linux >= 4.0)
            self._hwm = _read_kib("VmHWM") is not None
        except OSError:
            self._hwm = False
        rss = _read_kib("VmRSS")
        if self._hwm and rss is not None:
            self.base_bytes = rss * 1024
            self.how = "VmHWM after a clear_refs reset, minus VmRSS before (malloc_trim(0) first)"
        else:
            self.base_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.how = "ru_maxrss after minus ru_maxrss before (no VmHWM reset here: an upper bound)"

    def stop(self) -> int:
        if self._hwm:
            peak = (_read_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, peak - self.base_bytes)
        return self.peak_bytes


def available_gib() -> float:
    return (_read_kib("MemAvailable", "/proc/meminfo") or 0) / 2**20


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def pick_threads(requested: int | None, preferred: int = 2) -> tuple[int, str]:
    """Torch intra-op threads for the timed runs, and why.

    Asked for: that many. Otherwise ``preferred`` (the CPU trainer's ``threads: 2``) when that many cores
    are idle by the 1-minute load average, else 1: on a machine whose cores are already busy, a second
    OpenMP thread waits at every barrier for a core the scheduler gives to someone else, and steps of a
    few milliseconds per kernel get 10-30x slower and far noisier (measured here on the toy step).
    """
    if requested:
        return requested, "asked for (--threads)"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = cores - load
    if idle >= preferred - 0.5:
        return preferred, f"{preferred} (the CPU trainer's setting): load average {load:.2f} on {cores} cores"
    return 1, f"1: load average {load:.2f} on {cores} cores leaves fewer than {preferred} idle"


def machine_facts(threads: int, threads_reason: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "threads": threads,
        "threads_reason": threads_reason,
        "mem_total_gib": round((_read_kib("MemTotal", "/proc/meminfo") or 0) / 2**20, 1),
        "mem_available_gib_at_start": round(available_gib(), 1),
        "load_average_at_start": load_average(),
    }
    for name in ("torch", "transformers", "trl"):
        try:
            facts[name] = version(name)
        except PackageNotFoundError:
            facts[name] = "not installed"
    return facts


def run_child(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a benchmark child; its result is the last line of its stdout that parses as a JSON object.

    A child that fails, times out or prints no result gives ``{"error": why}`` (its last stderr line)."""
    start = time.perf_counter()
    # Its own process group, so that a timeout ends the child and whatever it started, and nothing else.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or offline_env(),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    except BaseException:  # Ctrl-C reaches only our own group: take the child's down with us
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    result = last_json(stdout)
    if result is None:
        tail = [line for line in stderr.strip().splitlines() if line.strip()]
        why = tail[-1][:300] if tail else "no output"
        return {"error": f"exit {proc.returncode}: {why}"}
    result.setdefault("child_seconds", round(time.perf_counter() - start, 1))
    return result


def last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def emit(result: dict) -> None:
    """A child's result: one JSON line on stdout (the parent reads the last one), with the CPU seconds this
    process and the children it waited for used."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    sys.stdout.write(json.dumps({**result, "cpu_seconds": round(cpu, 1)}) + "\n")
    sys.stdout.flush()


def report(result: dict, json_arg: str | None) -> bool:
    """Hand a script's result over as ``--json`` asks: ``-`` one JSON line on stdout (returns True: print
    nothing else), a path the file (indented), None nothing. Returns whether the caller should stay quiet."""
    if json_arg == "-":
        emit(result)
        return True
    if json_arg:
        Path(json_arg).write_text(json.dumps(result, indent=1))
    return False


def set_address_limit(gib: float) -> None:
    """Cap this process's address space, so that a shape too large fails with an allocation error
    instead of waking the OOM killer."""
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class AllocationTrace:
    """Peak of allocated bytes per named window, from the profiler's memory events (CPU allocator).

    ``with trace: ... with trace.phase("name"): ...``; after the ``with``, ``trace.peaks[name]`` is the
    largest running total of allocations minus frees inside that window, counted from the trace's start.
    """

    def __init__(self, explain: bool = False):
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.peaks: dict[str, int] = {}
        self.end = 0
        self.explain = explain  # also keep, per window, what was alive at its peak (by allocating op)
        self.alive: dict[str, dict[int, tuple[int, str]]] = {}

    def __enter__(self):
        self._profile.__enter__()
        return self

    def __exit__(self, *exc):
        self._profile.__exit__(*exc)
        if exc[0] is None:
            self._collect()

    def phase(self, name: str):
        from torch.profiler import record_function

        return record_function(f"trace::{name}")

    def _collect(self) -> None:
        results = self._profile.profiler.kineto_results
        if self.explain:  # the event tree: each allocation with its address and the op that made it (slow)
            allocations, windows = self._from_tree(results)
        else:  # the flat event list: "[memory]" events carry the signed size
            windows, allocations = {}, []
            for e in results.events():
                name = e.name()
                if name == "[memory]":
                    allocations.append((e.start_ns(), e.nbytes(), 0, ""))
                elif name.startswith("trace::"):
                    windows[name.removeprefix("trace::")] = (e.start_ns(), e.end_ns())
            allocations.sort()
        running, live = 0, {}
        self.peaks = {name: 0 for name in windows}
        self.seconds = {name: (end - start) / 1e9 for name, (start, end) in windows.items()}
        for t, size, ptr, path in allocations:
            running += size
            if self.explain:
                if size > 0:
                    live[ptr] = (size, path)
                else:
                    live.pop(ptr, None)
            for name, (start, end) in windows.items():
                if start <= t <= end and running > self.peaks[name]:
                    self.peaks[name] = running
                    if self.explain:
                        self.alive[name] = dict(live)
        self.end = running

    @staticmethod
    def _from_tree(results) -> tuple[list, dict]:
        from torch._C._profiler import _EventType

        nodes, stack = [], list(results.experimental_event_tree())
        while stack:
            node = stack.pop()
            nodes.append(node)
            stack.extend(node.children)
        windows = {
            n.name.removeprefix("trace::"): (n.start_time_ns, n.end_time_ns)
            for n in nodes
            if n.name.startswith("trace::")
        }
        allocations = sorted(
            (n.start_time_ns, n.typed[1].alloc_size, n.typed[1].ptr, _op_path(n))
            for n in nodes
            if n.typed[0] == _EventType.Allocation
        )
        return allocations, windows

    def explanation(self, name: str, top: int = 12) -> list[str]:
        """The largest groups of allocations alive at window ``name``'s peak, by allocating op."""
        groups: dict[str, list[int]] = {}
        for size, path in self.alive.get(name, {}).values():
            groups.setdefault(path, []).append(size)
        ranked = sorted(groups.items(), key=lambda kv: -sum(kv[1]))[:top]
        return [f"    {sum(v) / MIB:9.2f} MiB  x{len(v):<4d} {path}" for path, v in ranked]


def _op_path(node, depth: int = 4) -> str:
    names, p = [], node.parent
    while p is not None and len(names) < depth:
        names.append(p.name.removeprefix("trace::"))
        p = p.parent
    return " < ".join(names)
