"""Simulate a sequential schedule on binomial streams before spending CPU hours on real ones.

Each input of a finished fixed-n run (benchmarks/runs/sequential/sigma*-rs-fixed.parquet by default)
gets its p from the run's own count (count / n). For `--reps` replicates, a stream of Bernoulli(p)
votes is drawn for it and fed, checkpoint by checkpoint, to srtool's SequentialTest with the
schedule constants given here; the replicate's fixed-n certificate comes from the same stream's
count at the budget. Printed per run: mean forward passes per input and the saving, the change in
certified accuracy at the grid radii (points, mean over replicates), and the share of replicates
that lose more than one point at some grid radius. This is how the union schedule's shares, ratio
and futility level were chosen (docs/sequential.md); benchmarks/sequential.py measures the real
streams.

    python benchmarks/sequential_sim.py                       # the shipped constants
    python benchmarks/sequential_sim.py --ratio 2 --futility 0.001     # the first version's ratio and futility
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import norm

import srtool
from srtool import sequential
from srtool.stats import lower_confidence_bound

HERE = Path(__file__).resolve().parent
GRID = (1.0, 2.0, 3.0)  # grid radii in units of σ, as in benchmarks/sequential.py


def simulate(path: Path, reps: int, seed: int) -> dict:
    results = srtool.read_results(path)
    config, rows = results.config, [r for r in results.table.to_pylist() if r["error"] is None]
    sigma, alpha, n0, budget = float(config["sigma"]), config["alpha"], config["n0"], config["n"]
    radii = [g * sigma for g in GRID]
    test = sequential.SequentialTest(alpha, budget, sigma, radii=tuple(radii))
    points = np.array(test.checkpoints())
    rng = np.random.default_rng(seed)
    forward, delta = [], np.zeros((reps, len(radii)))
    for row in rows:
        p, correct = row["count"] / row["n"], row["predict"] == row["label"]
        steps = rng.binomial(np.diff(points, prepend=0), p, size=(reps, len(points)))
        for j, counts in enumerate(np.cumsum(steps, axis=1)):
            k = next(k for k, s in enumerate(counts) if test.stop(k, int(s)) is not None)
            forward.append(n0 + points[k])
            mine = test.radius(k, int(counts[k]))
            bound = lower_confidence_bound(int(counts[-1]), budget, alpha)
            fixed = sigma * norm.ppf(bound) if bound > 0.5 else 0.0
            delta[j] += correct * ((np.array([mine >= r for r in radii], float)
                                    - np.array([fixed >= r for r in radii], float)) * 100 / len(rows))
    return {"forward": float(np.mean(forward)), "saving": (n0 + budget) / float(np.mean(forward)),
            "delta": delta.mean(axis=0), "worse": float(np.mean((delta < -1 - 1e-9).any(axis=1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="fixed-n runs (default: the benchmark's RS references)")
    parser.add_argument("--reps", type=int, default=20, help="replicate streams per input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=sequential.RATIO, help="geometric checkpoint ratio")
    parser.add_argument("--budget-share", type=float, default=sequential.BUDGET_SHARE)
    parser.add_argument("--grid-share", type=float, default=sequential.GRID_SHARE)
    parser.add_argument("--futility", type=float, default=sequential.FUTILITY)
    args = parser.parse_args()
    if not (0 < args.budget_share and 0 < args.grid_share and args.budget_share + args.grid_share < 1):
        parser.error("the budget and grid shares must be positive and leave a share for the geometric checkpoints")
    # The schedule reads these module constants when a SequentialTest is built.
    sequential.RATIO, sequential.BUDGET_SHARE = args.ratio, args.budget_share
    sequential.GRID_SHARE, sequential.FUTILITY = args.grid_share, args.futility
    runs = args.runs or sorted((HERE / "runs" / "sequential").glob("sigma*-rs-fixed.parquet"))
    if not runs:
        raise SystemExit("no fixed runs found: run benchmarks/sequential.py --only rs-fixed first")
    print(f"ratio {args.ratio:g}, budget share {args.budget_share:g}, grid share {args.grid_share:g}, "
          f"futility {args.futility:g}, {args.reps} replicates")
    for path in runs:
        r = simulate(path, args.reps, args.seed)
        deltas = " / ".join(f"{d:+.2f}" for d in r["delta"])
        print(f"{path.name}: {r['forward']:,.0f} fwd/input ({r['saving']:.1f}×), certified accuracy at "
              f"σ/2σ/3σ {deltas} points, replicates losing > 1 point: {100 * r['worse']:.0f}%")


if __name__ == "__main__":
    main()
