"""The mutation score of each mutated module, from the results `make mutate` left under mutants/.

    python tests/mutation_report.py              # a line a module: killed, timed out, survived, not run, score
    python tests/mutation_report.py --sample 150 --module dear/objective/selection.py --seed 0
                                                 # names of 150 mutants not run yet, drawn at random

A full run of every module takes hours on 2 cores (the mutants that survive run every test that
reaches them). A seeded sample of the mutants not run yet, run with ``mutmut run NAME ...``, gives
an estimate: the score counts the run mutants exactly and the rest at the sample's rate
(``--estimate``; the 95% interval is the sample's Wilson interval scaled to the unrun share).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

MUTANTS = Path("mutants")
# mutmut's exit codes: 1 (a test failed) killed it; 0 (every test passed) it survived; 24/-24 and 36/-36
# are CPU-time and wall-clock limits (counted as killed, as mutmut does); None: not run yet.
KILLED, SURVIVED = {1}, {0}
TIMEOUT = {24, -24, 36, -36}


def results(module: str) -> dict[str, int | None]:
    """Mutant name -> exit code (None: not run) for a source file such as ``dear/objective/selection.py``."""
    meta = MUTANTS / f"{module}.meta"
    if not meta.exists():
        raise SystemExit(f"error: no results for {module} under {MUTANTS}/ (run make mutate first)")
    return json.loads(meta.read_text())["exit_code_by_key"]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion hits / n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(codes: dict[str, int | None], sample: list[str] | None = None) -> dict:
    """Counts and the score. With ``sample`` (names drawn from the mutants that had not run, now run),
    the estimate counts the other run mutants exactly and the unrun ones at the sample's kill rate."""
    killed = sum(c in KILLED or c in TIMEOUT for c in codes.values())
    survived = sum(c in SURVIVED for c in codes.values())
    other = sum(c is not None and c not in KILLED | SURVIVED | TIMEOUT for c in codes.values())
    not_run = sum(c is None for c in codes.values())
    run = killed + survived + other
    out = {
        "mutants": len(codes),
        "killed": killed,
        "survived": survived,
        "other": other,
        "not_run": not_run,
        "score": killed / run if run else None,
    }
    if sample:
        drawn = [codes[name] for name in sample]
        if any(c is None for c in drawn):
            raise SystemExit("error: some sampled mutants have not run yet")
        rest = {k: c for k, c in codes.items() if k not in set(sample)}
        exact_killed = sum(c in KILLED or c in TIMEOUT for c in rest.values() if c is not None)
        unrun = sum(c is None for c in rest.values()) + len(sample)  # the stratum the sample stands for
        hits = sum(c in KILLED or c in TIMEOUT for c in drawn)
        lo, hi = wilson(hits, len(sample))
        n = len(codes)
        out["estimate"] = (exact_killed + unrun * hits / len(sample)) / n
        out["interval"] = ((exact_killed + unrun * lo) / n, (exact_killed + unrun * hi) / n)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=int, help="print this many names of mutants not run yet")
    parser.add_argument("--module", help="the source file to sample from, e.g. dear/objective/selection.py")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimate", type=Path, help="a JSON file {module: [sampled names]} already run")
    args = parser.parse_args(argv)
    if args.sample is not None:
        if not args.module:
            parser.error("--sample needs --module")
        todo = sorted(k for k, c in results(args.module).items() if c is None)
        print(" ".join(random.Random(args.seed).sample(todo, min(args.sample, len(todo)))))
        return
    samples = json.loads(args.estimate.read_text()) if args.estimate else {}
    modules = sorted(str(p.relative_to(MUTANTS))[: -len(".meta")] for p in MUTANTS.rglob("*.py.meta"))
    print(f"{'module':<22}{'mutants':>8}{'killed':>8}{'survived':>9}{'other':>6}{'not run':>8}{'score':>7}  estimate")
    for module in modules:
        s = summary(results(module), samples.get(module))
        score = f"{s['score']:.3f}" if s["score"] is not None else "-"
        counts = f"{s['mutants']:>8}{s['killed']:>8}{s['survived']:>9}{s['other']:>6}{s['not_run']:>8}"
        line = f"{module:<22}{counts}{score:>7}"
        if "estimate" in s:
            lo, hi = s["interval"]
            line += f"  {s['estimate']:.3f} [{lo:.3f}, {hi:.3f}] from {len(samples[module])} sampled"
        print(line)


if __name__ == "__main__":
    main()
