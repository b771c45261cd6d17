"""Benchmark companion: more threshold rules, scored on ``bench/threshold_policy.py``'s pools.

``bench/threshold_policy.py`` judges the rules the library offers (fixed 0.5, argmax, shrink, bagged). This
script scores further candidate rules on the same re-splits and prints, per pool, each rule's mean / 10th
percentile of test MCC and whether it meets that script's verdict (mean >= fixed and argmax, 10th percentile >
argmax's), then how many pools each rule passes. None of these rules is in the library: they are here so the
"tried and rejected" figures in BENCHMARKS.md can be reproduced.

Every rule works on the raw margins with the calibration rows reweighted to prior 0.5 (a monotone calibrator
does not move a cut chosen on the margins' order, so this matches ``fit_policy`` for the sweep-based rules):

- ``neutral``: where a prior-weighted logistic fit of the label on the margin crosses 0.5;
- ``smooth_boot``: the argmax of the MCC curve averaged over 200 bootstrap replicates (whole images);
- ``kernel x1`` / ``kernel x2``: the argmax of an MCC curve whose step decisions are replaced by a Gaussian
  CDF (Silverman's bandwidth on the image count, times 1 or 2);
- ``binormal``: the MCC-optimal cut of normal fits to each class's margins;
- ``pull to 0``: the shrink rule's James-Stein pull of the argmax towards margin 0 instead of the neutral cut;
- ``bagged pull``: the same pull, towards the neutral cut, applied to the bagged median;
- ``mid shrink/bagged``: the midpoint of the two cuts;
- ``neutral→bagged x0.25`` / ``x0.5`` / ``x0.75``: the neutral cut moved that fraction of the way to the
  bagged median (x0.5 is their midpoint);
- ``shrink x1.5`` / ``x2`` / ``x3``: the shrink rule with 1.5-3 times the bootstrap variance (more caution);
- ``plug-in``: the argmax of the MCC curve expected under a Platt fit (each row counts as q = the fitted
  probability of roadwork and 1 - q of no roadwork; true and false positive rates then give the MCC at prior
  0.5), so the labels enter only through two fitted numbers;
- ``robust gain``: the cut maximising mean - 1.5 sd over 200 bootstrap replicates of its MCC gain over the
  neutral cut (the neutral cut scores 0, so the rule moves only where the gain stands out from its noise).

Usage: python bench/threshold_rules_tried.py [--outputs DIR] [--splits 100] [--seed 0]
(``--outputs``: a finished ``make demo``'s outputs/ folder; without it only the two synthetic pools run).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm

import threshold_policy as bench
from roadwork.metrics import mcc_from_counts
from roadwork.policy import prior_weights
from roadwork.policy.calibration import PlattScaling
from roadwork.policy.threshold_rules import _bootstrap_cuts, _bootstrap_multiplicities, _neutral_logit

N_BOOT = 200
Rule = Callable[[bench.Split], float]


def _weighted_mcc_curve(z: np.ndarray, y: np.ndarray, w: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Weighted MCC of the decision margin > cut, at arbitrary cuts (the library's sweep has its own cuts, the
    midpoints between distinct margins)."""
    order = np.argsort(z)
    zs, ys, ws = z[order], y[order], w[order]
    negative = np.searchsorted(zs, cuts, side="right")  # rows at or below the cut
    pos = np.r_[0.0, np.cumsum(ws * ys)]
    neg = np.r_[0.0, np.cumsum(ws * (1 - ys))]
    fn, tn = pos[negative], neg[negative]
    return np.asarray(mcc_from_counts(pos[-1] - fn, neg[-1] - tn, tn, fn), np.float64)


def _grid(z: np.ndarray) -> np.ndarray:
    return np.quantile(z, np.linspace(0.02, 0.98, 193))


def _neutral(s: bench.Split) -> float:
    return _neutral_logit(s.z_cal, s.y_cal, prior_weights(s.y_cal, 0.5))


def _boot(s: bench.Split) -> tuple[float, np.ndarray]:
    """(the prior-weighted argmax, the bootstrap replicates' argmax cuts), on the margin scale."""
    cuts = _bootstrap_cuts(s.y_cal, expit(s.z_cal), target_prior=0.5, groups=s.g_cal, n_boot=N_BOOT, seed=0)
    return float(logit(np.clip(cuts.t_hat, 1e-12, 1 - 1e-12))), cuts.boot


def _pull(center: float, estimate: float, variance: float) -> float:
    """Positive-part James-Stein pull of ``estimate`` towards ``center`` (the shrink rule's step 4)."""
    gap2 = (estimate - center) ** 2
    return center + (max(0.0, 1.0 - variance / gap2) if gap2 > 0 else 0.0) * (estimate - center)


def _bootstrap_curves(s: bench.Split, cuts: np.ndarray) -> np.ndarray:
    """(replicates, cuts): the prior-0.5 MCC curve of each of N_BOOT whole-image bootstrap replicates of the
    calibration split that holds both classes."""
    curves = []
    for m in _bootstrap_multiplicities(len(s.y_cal), s.g_cal, N_BOOT, np.random.default_rng(0)):
        pos, neg = (m * s.y_cal).sum(), (m * (1 - s.y_cal)).sum()
        if pos and neg:
            w = m * np.where(s.y_cal == 1, 0.5 / pos, 0.5 / neg)
            curves.append(_weighted_mcc_curve(s.z_cal, s.y_cal, w, cuts))
    return np.array(curves).reshape(-1, len(cuts))


def _smooth_boot(s: bench.Split) -> float:
    cuts = _grid(s.z_cal)
    return float(cuts[np.argmax(_bootstrap_curves(s, cuts).sum(axis=0))])


def _kernel(scale: float) -> Rule:
    def rule(s: bench.Split) -> float:
        z, y, w = s.z_cal, s.y_cal, prior_weights(s.y_cal, 0.5)
        spread = min(z.std(), (np.quantile(z, 0.75) - np.quantile(z, 0.25)) / 1.34)
        bandwidth = scale * 0.9 * spread * (int(s.g_cal.max()) + 1) ** -0.2
        cuts = _grid(z)
        soft = norm.cdf((z[None, :] - cuts[:, None]) / bandwidth)
        tp, fp = (soft * (w * y)).sum(1), (soft * (w * (1 - y))).sum(1)
        mcc = np.asarray(mcc_from_counts(tp, fp, (w * (1 - y)).sum() - fp, (w * y).sum() - tp), np.float64)
        return float(cuts[np.argmax(mcc)])

    return rule


def _binormal(s: bench.Split) -> float:
    z, y = s.z_cal, s.y_cal
    cuts = np.linspace(z.min(), z.max(), 400)
    tpr = norm.sf((cuts - z[y == 1].mean()) / z[y == 1].std())
    fpr = norm.sf((cuts - z[y == 0].mean()) / z[y == 0].std())
    return float(cuts[np.argmax(np.asarray(mcc_from_counts(tpr, fpr, 1 - fpr, 1 - tpr), np.float64))])


def _shrink_times(factor: float) -> Rule:
    def rule(s: bench.Split) -> float:
        argmax, boot = _boot(s)
        return _pull(_neutral(s), argmax, factor * float(np.var(boot)))

    return rule


def _pull_to_zero(s: bench.Split) -> float:
    argmax, boot = _boot(s)
    return _pull(0.0, argmax, float(np.var(boot)))


def _bagged_pull(s: bench.Split) -> float:
    _, boot = _boot(s)
    return _pull(_neutral(s), float(np.median(boot)), float(np.var(boot)))


def _mid_shrink_bagged(s: bench.Split) -> float:
    return 0.5 * (_shrink_times(1.0)(s) + float(np.median(_boot(s)[1])))


def _neutral_to_bagged(fraction: float) -> Rule:
    def rule(s: bench.Split) -> float:
        neutral = _neutral(s)
        return neutral + fraction * (float(np.median(_boot(s)[1])) - neutral)

    return rule


def _plug_in(s: bench.Split) -> float:
    platt = PlattScaling().fit(s.z_cal, s.y_cal)
    q = expit(platt.a * s.z_cal + platt.b)
    cuts = _grid(s.z_cal)
    order = np.argsort(s.z_cal)
    above = len(q) - np.searchsorted(s.z_cal[order], cuts, side="right")  # rows decided roadwork
    soft_pos = np.r_[0.0, np.cumsum(q[order][::-1])][above] / q.sum()
    soft_neg = np.r_[0.0, np.cumsum(1 - q[order][::-1])][above] / (1 - q).sum()
    mcc = mcc_from_counts(soft_pos / 2, soft_neg / 2, (1 - soft_neg) / 2, (1 - soft_pos) / 2)
    return float(cuts[np.argmax(np.asarray(mcc, np.float64))])


def _robust_gain(s: bench.Split) -> float:
    cuts = np.r_[_neutral(s), _grid(s.z_cal)]
    curves = _bootstrap_curves(s, cuts)
    gain = curves - curves[:, :1]
    return float(cuts[np.argmax(gain.mean(axis=0) - 1.5 * gain.std(axis=0))])


RULES: dict[str, Rule] = {
    "neutral": _neutral,
    "smooth_boot": _smooth_boot,
    "kernel x1": _kernel(1.0),
    "kernel x2": _kernel(2.0),
    "binormal": _binormal,
    "pull to 0": _pull_to_zero,
    "bagged pull": _bagged_pull,
    "mid shrink/bagged": _mid_shrink_bagged,
    "neutral→bagged x0.25": _neutral_to_bagged(0.25),
    "neutral→bagged x0.5": _neutral_to_bagged(0.5),
    "neutral→bagged x0.75": _neutral_to_bagged(0.75),
    "shrink x1.5": _shrink_times(1.5),
    "shrink x2": _shrink_times(2.0),
    "shrink x3": _shrink_times(3.0),
    "plug-in": _plug_in,
    "robust gain": _robust_gain,
}


def score_pool(splits: Iterator[bench.Split]) -> dict[str, np.ndarray]:
    """Test MCC of every rule (the library's four and :data:`RULES`) over the re-splits."""
    mcc: dict[str, list[float]] = {}
    for i, split in enumerate(splits):
        margins = bench.fit_rules(split, seed=i, n_boot=N_BOOT)
        margins.update({name: rule(split) for name, rule in RULES.items()})
        for name, margin in margins.items():
            mcc.setdefault(name, []).append(bench.balanced_test_mcc(split.z_test, split.y_test, margin))
    return {name: np.array(values) for name, values in mcc.items()}


def passes(res: dict[str, np.ndarray]) -> dict[str, bool]:
    """threshold_policy.py's verdict for each rule: mean >= fixed and argmax, 10th percentile > argmax's."""
    floor = max(res["fixed 0.5"].mean(), res["argmax"].mean())
    p10 = np.percentile(res["argmax"], 10)
    return {
        r: bool(m.mean() >= floor and np.percentile(m, 10) > p10) for r, m in res.items() if r != "fixed 0.5"
    }


def pools(args: argparse.Namespace) -> Iterator[tuple[str, Iterator[bench.Split]]]:
    yield "synthetic demo-like, cal 90 / test 60", bench.demo_splits(args.splits, args.seed, 0.6, 90, 60)
    yield "synthetic prior shift", bench.prior_shift_splits(args.splits, args.seed)
    if args.outputs is None:
        return
    for variant in ("base", "adapted"):
        frame = bench.pipeline_scores(args.outputs, variant)
        crossfit = bench.pipeline_scores(args.outputs, variant, ("train_crossfit",))
        for resample in ("disjoint", "bootstrap"):
            for cal, test in ((90, 60), (240, 159)):
                yield (
                    f"{variant}, {resample}, cal {cal} / test {test}",
                    bench.csv_splits(frame, crossfit, args.splits, args.seed, cal, test, resample),
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outputs", type=Path, default=None, help="a finished make demo's outputs/ folder")
    parser.add_argument("--splits", type=int, default=100, help="re-splits per pool (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pools and splits (default 0)")
    args = parser.parse_args(argv)
    if args.splits < 1:
        parser.error("--splits must be >= 1")
    start, passed = time.perf_counter(), {}
    for name, splits in pools(args):
        res = score_pool(splits)
        verdict = passes(res)
        print(
            f"\n{name}: "
            + "; ".join(f"{r} {m.mean():.3f}/{np.percentile(m, 10):.3f}" for r, m in res.items())
        )
        print("  passes: " + ", ".join(r for r, ok in verdict.items() if ok))
        for rule, ok in verdict.items():
            passed[rule] = passed.get(rule, 0) + int(ok)
    print(
        "\npools passed: " + ", ".join(f"{r} {n}" for r, n in sorted(passed.items(), key=lambda kv: -kv[1]))
    )
    print(f"{args.splits} re-splits per pool in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
