"""Soak tests (slow, `make soak`): long runs keep their memory, and the sandbox leaves nothing behind.

Each prints its figures (run with ``-s`` to see them): RSS at the start, after warm-up and at the end
of a 2,000-step toy run; and, for 1,000 sandboxed programs of which 10% are hostile, the processes,
zombies and temporary folders found afterwards.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import pytest

from conftest import TINY_MODELS, compose

pytestmark = pytest.mark.slow

STEPS = 2000
WARM_UP = 200  # steps after which RSS must stay flat


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_long_run_keeps_its_memory(tmp_path, toy_cache, monkeypatch):
    from dear.train import train
    from dear.training.module import DistillModule

    samples: dict[int, float] = {}
    end_of_batch = DistillModule.on_train_batch_end

    def measured(self, outputs, batch, batch_idx):
        end_of_batch(self, outputs, batch, batch_idx)
        samples[int(self.global_step)] = rss_mib()

    monkeypatch.setattr(DistillModule, "on_train_batch_end", measured)
    cfg = compose(
        TINY_MODELS
        + [
            f"cache_dir={toy_cache}",
            f"steps={STEPS}",
            "batch_size=2",
            "rollout.n=2",
            "rollout.max_new_tokens=12",
            "eval.every=500",
            "benchmark.limit=4",
            "benchmark.max_new_tokens=12",
            "eval.kl_prompts=2",
            "logger=csv",
            "checkpoint.every_steps=250",
        ]
    )
    run_dir = tmp_path / "soak"
    run_dir.mkdir()
    t0 = time.perf_counter()
    train(cfg, run_dir)
    wall = time.perf_counter() - t0
    start, warm, end = samples[1], samples[WARM_UP], samples[STEPS]
    peak_after_warm = max(v for k, v in samples.items() if k >= WARM_UP)
    growth = (end - warm) / warm
    print(
        f"\nsoak: {STEPS} steps in {wall:.0f} s; RSS MiB at step 1 {start:.1f}, step {WARM_UP} {warm:.1f}, "
        f"step {STEPS} {end:.1f} (peak after warm-up {peak_after_warm:.1f}); growth after warm-up {100 * growth:+.2f}%"
    )
    assert growth < 0.05, f"RSS grew {100 * growth:.1f}% after warm-up ({warm:.1f} -> {end:.1f} MiB)"


HOSTILE = [
    "import os\nwhile True:\n    os.fork()\n",  # fork bomb
    "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n",  # a detached child left running
    "import subprocess\nsubprocess.Popen(['sleep', '600'], start_new_session=True)\n",  # an escaped grandchild
    "x = bytearray(10**10)\n",  # memory
    "while True:\n    pass\n",  # CPU until the timeout
    "import tempfile\nfor _ in range(50):\n    tempfile.mkdtemp()\n",  # temporary folders
    "import os\nos.kill(os.getppid(), 9)\n",  # kills its parent
    "print('x' * 10**8)\n",  # output flood
    "import os, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",  # ignores SIGTERM
    "import os\nos.fork(); os.fork()\nimport time; time.sleep(600)\n",  # children that outlive the program
]


def our_descendants() -> list[tuple[int, str]]:
    """(pid, state) of every process whose ancestry reaches this one."""
    me, parents, states = os.getpid(), {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry.name)], states[int(entry.name)] = int(fields[1]), fields[0]
    out = []
    for pid in parents:
        p = pid
        while p in parents and p not in (0, 1):
            p = parents[p]
            if p == me:
                out.append((pid, states[pid]))
                break
    return out


def test_a_thousand_sandboxed_programs_leave_nothing_behind(tmp_path, monkeypatch):
    from dear.eval.code import isolation, run_program

    tmp = tmp_path / "tmp"  # the sandbox's temporary folders go here, away from other users of /tmp
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    before_tmp = set(tmp.iterdir())
    rng = random.Random(0)
    programs = [
        HOSTILE[i % len(HOSTILE)] if i % 10 == 0 else f"print(sum(range({rng.randrange(1000)})))\n" for i in range(1000)
    ]
    statuses: dict[str, int] = {}
    t0 = time.perf_counter()
    for source in programs:
        result = run_program(source, timeout_s=2.0, memory_mb=256)
        statuses[result.status] = statuses.get(result.status, 0) + 1
    wall = time.perf_counter() - t0
    time.sleep(1.0)  # let anything that is dying finish
    left = our_descendants()
    new_tmp = sorted(str(p) for p in set(tmp.iterdir()) - before_tmp)
    print(
        f"\nsandbox soak ({isolation()}): 1000 programs (100 hostile) in {wall:.0f} s; statuses {statuses}; "
        f"processes left {len(left)} (zombies {sum(s == 'Z' for _, s in left)}); new temp entries {len(new_tmp)}"
    )
    assert statuses.get("passed", 0) >= 900, statuses
    assert not left, f"processes left behind: {left}"
    assert not new_tmp, f"temporary entries left behind: {new_tmp[:5]}"
