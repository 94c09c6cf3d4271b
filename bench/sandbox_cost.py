"""The sandbox's per-program cost, one checkout against another, side by side.

    git worktree add /tmp/dear-old <commit>                 # the code to compare with
    python bench/sandbox_cost.py /tmp/dear-old . [N]         # N calls each (default 100)

Two worker processes (PYTHONPATH the old checkout / the new one) take turns running
``dear.eval.code.run_program('x = 1')``, each timing its own call; prints the medians and their ratio."""

from __future__ import annotations

import statistics
import subprocess
import sys

WORKER = r"""
import sys, time
from dear.eval.code import run_program
assert run_program("x = 1").passed  # warm: isolation chosen, runtime tree computed
print("ready", flush=True)
for line in sys.stdin:
    t = time.perf_counter()
    result = run_program("x = 1")
    print(time.perf_counter() - t, result.passed, flush=True)
"""


def start(root: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER],
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def once(proc: subprocess.Popen) -> float:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    seconds, passed = proc.stdout.readline().split()
    assert passed == "True"
    return float(seconds)


def main() -> None:
    old_root, new_root = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    old, new = start(old_root), start(new_root)
    times = {"old": [], "new": []}
    for i in range(n):
        pair = [("old", old), ("new", new)] if i % 2 == 0 else [("new", new), ("old", old)]
        for name, proc in pair:
            times[name].append(once(proc))
    for proc in (old, new):
        proc.stdin.close()
        proc.wait()
    m_old, m_new = statistics.median(times["old"]) * 1e3, statistics.median(times["new"]) * 1e3
    print(
        f"median run_program('x = 1') over {n} calls each: old {m_old:.1f} ms, new {m_new:.1f} ms, "
        f"new/old {m_new / m_old:.3f}"
    )


if __name__ == "__main__":
    main()
