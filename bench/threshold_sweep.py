"""Benchmark: exact MCC sweep (roadwork.policy.mcc_sweep) vs the earlier pipeline's 5 000-point grid.

The earlier pipeline evaluated ``sklearn.metrics.matthews_corrcoef`` at evenly spaced thresholds in [0, 1].
Both run on the same seeded scores: two overlapping Beta score distributions (roadwork ~ Beta(5, 2), none ~
Beta(2, 5)) with a chosen positive share. Prints both wall times, the speed-up and both best MCCs.

Usage: python bench/threshold_sweep.py [--n 100000] [--grid 5000] [--seed 0] [--pos-frac 0.5]
       [--grid-sample K]   # time only K evenly spread grid points and extrapolate (0 = full grid)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import matthews_corrcoef

from roadwork.policy import mcc_sweep


def make_scores(n: int, pos_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = roadwork, share ``pos_frac``) and overlapping probability scores, seeded."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_frac).astype(np.int64)
    score = np.where(y == 1, rng.beta(5.0, 2.0, n), rng.beta(2.0, 5.0, n))
    return y, score


def grid_sweep(y: np.ndarray, score: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """MCC of ``score > t`` at each grid threshold, one sklearn call per threshold (the earlier method)."""
    return np.array([matthews_corrcoef(y, (score > t).astype(np.int64)) for t in thresholds])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="number of scores (default 100000)")
    parser.add_argument("--grid", type=int, default=5_000, help="grid thresholds in [0, 1] (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--pos-frac", type=float, default=0.5, help="share of roadwork labels (default 0.5)")
    parser.add_argument(
        "--grid-sample", type=int, default=0, help="time only this many grid points and extrapolate (0 = all)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the exact sweep (best kept)")
    args = parser.parse_args(argv)
    if args.n < 2 or args.grid < 2 or not 0 < args.pos_frac < 1 or args.grid_sample < 0 or args.repeats < 1:
        parser.error("need --n >= 2, --grid >= 2, 0 < --pos-frac < 1, --grid-sample >= 0, --repeats >= 1")

    y, score = make_scores(args.n, args.pos_frac, args.seed)
    print(f"N={args.n} scores, positive share {y.mean():.3f}, seed {args.seed}")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        sweep = mcc_sweep(y, score)
        times.append(time.perf_counter() - start)
    exact_s = min(times)
    best = int(np.argmax(sweep.mcc))
    print(
        f"exact sweep : {exact_s * 1e3:9.2f} ms (best of {args.repeats})  {len(sweep.threshold)} cuts  "
        f"best MCC {sweep.mcc[best]:.6f} at t={sweep.threshold[best]:.6f}"
    )

    grid = np.linspace(0.0, 1.0, args.grid)
    if args.grid_sample and args.grid_sample < args.grid:
        timed = grid[np.linspace(0, args.grid - 1, args.grid_sample).round().astype(int)]
        note = f"timed {len(timed)} of {args.grid} points, extrapolated x{args.grid / len(timed):.1f}"
    else:
        timed = grid
        note = "full grid timed"
    start = time.perf_counter()
    grid_mcc = grid_sweep(y, score, timed)
    grid_s = (time.perf_counter() - start) * args.grid / len(timed)
    # With --grid-sample the grid's best MCC is that of the sampled points only (a lower bound).
    g_best = int(np.argmax(grid_mcc))
    print(
        f"grid sweep  : {grid_s * 1e3:9.2f} ms ({note})  best MCC {grid_mcc[g_best]:.6f} "
        f"at t={timed[g_best]:.6f}"
    )
    print(f"speed-up    : {grid_s / exact_s:9.1f}x")
    verdict = "OK" if sweep.mcc[best] >= grid_mcc[g_best] - 1e-12 else "FAIL"
    print(f"exact best MCC >= grid best MCC: {verdict} ({sweep.mcc[best]:.6f} vs {grid_mcc[g_best]:.6f})")


if __name__ == "__main__":
    main()
