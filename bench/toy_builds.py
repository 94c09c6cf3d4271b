"""Is DEAR − OPD on the toy a property of the method or of one build of the toy pair? (conf/table/builds.yaml)

    dear-table --run builds                 # the runs: 3 builds x {opd, dear} x 20 seeds, and a table per build
    python bench/toy_builds.py              # per build and pooled: DEAR − OPD in final accuracy, paired by seed

Prints, for each build, the paired difference and its 95% t-interval over its seeds (as the build's table does),
then two pooled answers: all (build, seed) pairs as one sample (builds treated as exchangeable), and the t-interval
over the three build means (df = 2: the answer when the build itself is the unit of replication).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from dear.tables import grid as grids
from dear.tables.reproduce import run_values
from dear.tables.stats import paired, t_quantile


def accuracies(grid: grids.Grid, table: grids.Table, row: str) -> dict[int, float]:
    """Final accuracy on the curve's benchmark of each finished seed of ``row``."""
    out = {}
    for run in grid.runs(table):
        path = grid.run_dir(run) / "metrics.json"
        if run.row == row and grids.finished(grid.run_dir(run)):
            out[run.seed] = run_values(json.loads(path.read_text()))["accuracy_after"]
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="builds", help="the grid (a packaged name or a file)")
    args = parser.parse_args(argv)
    grid = grids.read(grids.find(args.grid))
    pooled_dear, pooled_opd, means = {}, {}, []
    print("| build | seeds | DEAR − OPD | 95% CI |\n|---|---|---|---|")
    for i, table in enumerate(grid.tables):
        dear, opd = accuracies(grid, table, "dear"), accuracies(grid, table, "opd")
        d = paired(dear, opd)
        print(f"| {table.name} | {d.n} | {d.mean:+.3f} | {d.low:+.3f} .. {d.high:+.3f} |")
        pooled_dear.update({i * 10_000 + s: v for s, v in dear.items()})
        pooled_opd.update({i * 10_000 + s: v for s, v in opd.items()})
        means.append(d.mean)
    d = paired(pooled_dear, pooled_opd)
    print(f"| pooled (all pairs) | {d.n} | {d.mean:+.3f} | {d.low:+.3f} .. {d.high:+.3f} |")
    if len(means) > 1:
        m, half = (
            statistics.fmean(means),
            t_quantile(0.975, len(means) - 1) * statistics.stdev(means) / len(means) ** 0.5,
        )
        print(f"| over build means | {len(means)} builds | {m:+.3f} | {m - half:+.3f} .. {m + half:+.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
