"""Exact MCC-optimal threshold, FNR-constrained choice and a finite-sample FNR guarantee.

Decision rule everywhere: roadwork iff ``score > threshold`` (strict). Thresholds are the cuts of
:func:`roadwork.metrics.threshold_counts`: one just below the minimum score (all roadwork), the midpoint
between each pair of consecutive distinct scores, and the maximum score (none roadwork). Equal scores always
fall on the same side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.stats import binom

from roadwork.metrics import (
    fnr_from_counts,
    fpr_from_counts,
    mcc_from_counts,
    precision_from_counts,
    recall_from_counts,
    threshold_counts,
)

# Two MCC values closer than this are treated as a tie (they differ only by float rounding).
_MCC_TIE_TOL = 1e-12


def _check_fraction(value: float | None, name: str, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float; got {type(value).__name__}.")
    v = float(value)
    low_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (low_ok and v < 1.0 and math.isfinite(v)):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}; got {v}.")
    return v


@dataclass(frozen=True)
class SweepResult:
    """Every cut of the exact sweep, thresholds ascending (row 0 = all roadwork, last row = none).

    Rates follow :mod:`roadwork.metrics` conventions (undefined ratios are 0.0, MCC is 0.0 for empty
    confusion rows/columns). All arrays have the same length k + 1 for k distinct scores.
    """

    threshold: NDArray[np.float64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    tn: NDArray[np.int64]
    fn: NDArray[np.int64]
    mcc: NDArray[np.float64]
    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    fnr: NDArray[np.float64]
    fpr: NDArray[np.float64]

    @property
    def n_positive(self) -> int:
        """Number of roadwork (label 1) samples in the swept set."""
        return int(self.tp[0] + self.fn[0])

    def to_frame(self) -> pd.DataFrame:
        """The sweep as a DataFrame: threshold, tp, fp, tn, fn, mcc, precision, recall, fnr, fpr."""
        return pd.DataFrame(
            {
                "threshold": self.threshold,
                "tp": self.tp,
                "fp": self.fp,
                "tn": self.tn,
                "fn": self.fn,
                "mcc": self.mcc,
                "precision": self.precision,
                "recall": self.recall,
                "fnr": self.fnr,
                "fpr": self.fpr,
            }
        )

    def best(
        self, *, max_fnr: float | None = None, max_threshold: float | None = None
    ) -> tuple[float, float]:
        """(threshold, mcc) of the best-MCC cut with FNR <= ``max_fnr`` and threshold <= ``max_threshold``.

        Tie rule: all feasible cuts within 1e-12 of the best MCC are tied; the one with the median threshold
        among them is returned (lower median for an even count), i.e. the middle of the tied set, which is the
        cut furthest from both ends of a tied plateau.

        Raises ValueError if ``max_fnr`` is given but the swept labels have no positive (FNR undefined), or if
        ``max_threshold`` lies below every cut.
        """
        feasible = np.ones(len(self.threshold), dtype=bool)
        if max_fnr is not None:
            limit = _check_fraction(max_fnr, "max_fnr", allow_zero=True)
            if self.n_positive == 0:
                raise ValueError(
                    "max_fnr needs at least one roadwork (label 1) sample in y_true; found none."
                )
            feasible &= self.fnr <= limit
        if max_threshold is not None:
            if not math.isfinite(float(max_threshold)):
                raise ValueError(f"max_threshold must be finite; got {max_threshold}.")
            feasible &= self.threshold <= float(max_threshold)
            if not feasible.any():
                raise ValueError(
                    f"max_threshold={max_threshold} is below every cut (lowest {self.threshold[0]})."
                )
        idx = np.flatnonzero(feasible)
        best_mcc = self.mcc[idx].max()
        tied = idx[self.mcc[idx] >= best_mcc - _MCC_TIE_TOL]
        chosen = int(tied[(len(tied) - 1) // 2])
        return float(self.threshold[chosen]), float(self.mcc[chosen])


def mcc_sweep(y_true: ArrayLike, score: ArrayLike) -> SweepResult:
    """Exact MCC and rates at every distinct cut of ``score`` (O(N log N): one sort, cumulative counts).

    ``y_true``: 0/1 labels (1 = roadwork); ``score``: finite real scores (probabilities or margins).
    """
    c = threshold_counts(y_true, score)
    return SweepResult(
        threshold=c.thresholds,
        tp=c.tp,
        fp=c.fp,
        tn=c.tn,
        fn=c.fn,
        mcc=np.asarray(mcc_from_counts(c.tp, c.fp, c.tn, c.fn)),
        precision=np.asarray(precision_from_counts(c.tp, c.fp)),
        recall=np.asarray(recall_from_counts(c.tp, c.fn)),
        fnr=np.asarray(fnr_from_counts(c.tp, c.fn)),
        fpr=np.asarray(fpr_from_counts(c.fp, c.tn)),
    )


def best_mcc_threshold(
    y_true: ArrayLike, score: ArrayLike, *, max_fnr: float | None = None
) -> tuple[float, float]:
    """(threshold, mcc) maximising MCC of ``score > threshold``, optionally subject to FNR <= ``max_fnr``.

    The all-roadwork cut (FNR 0) is always feasible, so a constraint never leaves nothing to choose. Ties:
    see :meth:`SweepResult.best`.
    """
    return mcc_sweep(y_true, score).best(max_fnr=max_fnr)


def min_positives_for_guarantee(alpha: float, delta: float) -> int:
    """Smallest number of calibration positives n for which a zero-miss threshold certifies FNR <= alpha.

    With zero misses the Clopper-Pearson bound needs (1 - alpha)^n <= delta, i.e.
    n >= log(delta) / log(1 - alpha).
    """
    a = _check_fraction(alpha, "alpha", allow_zero=False)
    d = _check_fraction(delta, "delta", allow_zero=False)
    n = math.ceil(math.log(d) / math.log1p(-a))
    # Guard the ceiling against log rounding so the returned n really satisfies the inequality.
    while (1.0 - a) ** n > d:
        n += 1
    return n


def guaranteed_fnr_threshold(y_true: ArrayLike, score: ArrayLike, alpha: float, delta: float) -> float:
    """Largest cut t such that, with probability >= 1 - delta over the calibration draw, true FNR(t) <= alpha.

    Learn-then-Test fixed-sequence testing (Angelopoulos et al. 2021): for each cut, from the safest (lowest
    threshold, fewest misses) upward, test H0: FNR(t) > alpha with the exact binomial p-value
    ``P(Binomial(n_pos, alpha) <= misses(t))`` (equivalently, the one-sided Clopper-Pearson upper bound on the
    miss rate is <= alpha) and stop at the first cut whose p-value exceeds delta; the last rejected cut is
    returned. Because FNR is monotone in t, every threshold below the returned one is also certified.
    Assumes the calibration positives are exchangeable with deployment positives.

    Raises ValueError when even the all-roadwork cut cannot be certified: that happens when the calibration
    set has fewer than ``min_positives_for_guarantee(alpha, delta)`` = ceil(log(delta)/log(1-alpha))
    positives.
    """
    a = _check_fraction(alpha, "alpha", allow_zero=False)
    d = _check_fraction(delta, "delta", allow_zero=False)
    sweep = mcc_sweep(y_true, score)
    n_pos = sweep.n_positive
    n_needed = min_positives_for_guarantee(a, d)
    if n_pos < n_needed:
        raise ValueError(
            f"cannot certify FNR <= alpha={a} with probability 1 - delta={1 - d}: y_true has {n_pos} "
            "roadwork "
            f"samples but at least {n_needed} (= ceil(log(delta)/log(1-alpha))) are needed; use more "
            "calibration positives or relax alpha/delta."
        )
    p_values = binom.cdf(sweep.fn, n_pos, a)
    failed = np.flatnonzero(p_values > d)
    # The all-negative cut misses every positive (p-value 1 > delta), so a failure always exists after row 0.
    return float(sweep.threshold[failed[0] - 1])
