"""Exact MCC-optimal threshold, prior reweighting and an FNR guarantee.

Decision rule everywhere: roadwork iff ``score > threshold`` (strict). Thresholds are the cuts of
:func:`roadwork.metrics.threshold_counts`: one just below the minimum score (all roadwork), the midpoint
between each pair of consecutive distinct scores, and the maximum score (none roadwork). Equal scores always
fall on the same side.

Prior reweighting (:func:`prior_weights`): the validator draws labels 50/50 while calibration sets are often
~80 % roadwork. Weighting each positive by pi / p_hat and each negative by (1 - pi) / (1 - p_hat) (p_hat =
the set's positive fraction) makes the weighted set's prior exactly ``pi``; :func:`weighted_mcc_sweep`
gives the MCC a test set with prior ``pi`` would show at each cut.

The threshold rules that choose a cut from these sweeps are in :mod:`roadwork.policy.threshold_rules`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
from roadwork.policy.calibration import check_sample_weight
from roadwork.validation import (
    check_fraction,
    check_labels,
    check_level,
    check_same_length,
    check_scores,
)

# Two MCC values closer than this are treated as a tie (they differ only by float rounding).
_MCC_TIE_TOL = 1e-12


@dataclass(frozen=True)
class SweepResult:
    """Every cut of the exact sweep, thresholds ascending (row 0 = all roadwork, last row = none).

    Rates follow :mod:`roadwork.metrics` conventions (undefined ratios are 0.0, MCC is 0.0 for empty
    confusion rows/columns). All arrays have the same length k + 1 for k distinct scores. Counts are int64
    from :func:`mcc_sweep` and float64 weight totals from :func:`weighted_mcc_sweep`.
    """

    threshold: NDArray[np.float64]
    tp: NDArray[Any]
    fp: NDArray[Any]
    tn: NDArray[Any]
    fn: NDArray[Any]
    mcc: NDArray[np.float64]
    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    fnr: NDArray[np.float64]
    fpr: NDArray[np.float64]

    @property
    def n_positive(self) -> int:
        """Number of roadwork (label 1) samples in the swept set (weighted sweep: see ``positive_weight``)."""
        return int(self.tp[0] + self.fn[0])

    @property
    def positive_weight(self) -> float:
        """Total count (or, for a weighted sweep, total weight) of the roadwork samples."""
        return float(self.tp[0] + self.fn[0])

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
        idx = np.flatnonzero(self.feasible(max_fnr=max_fnr, max_threshold=max_threshold))
        best_mcc = self.mcc[idx].max()
        tied = idx[self.mcc[idx] >= best_mcc - _MCC_TIE_TOL]
        chosen = int(tied[(len(tied) - 1) // 2])
        return float(self.threshold[chosen]), float(self.mcc[chosen])

    def feasible(
        self, *, max_fnr: float | None = None, max_threshold: float | None = None
    ) -> NDArray[np.bool_]:
        """Mask of the cuts with FNR <= ``max_fnr`` and threshold <= ``max_threshold`` (see :meth:`best`).

        FNR grows with the threshold, so the mask is always a non-empty prefix (row 0, FNR 0, is feasible
        under any ``max_fnr``).
        """
        feasible = np.ones(len(self.threshold), dtype=bool)
        if max_fnr is not None:
            limit = check_fraction(max_fnr, "max_fnr", allow_zero=True)
            if self.positive_weight <= 0:
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
        return feasible


def mcc_sweep(y_true: ArrayLike, score: ArrayLike) -> SweepResult:
    """Exact MCC and rates at every distinct cut of ``score`` (O(N log N): one sort, cumulative counts).

    ``y_true``: 0/1 labels (1 = roadwork); ``score``: finite real scores (probabilities or margins).
    """
    c = threshold_counts(y_true, score)
    return _sweep_from_counts(c.thresholds, c.tp, c.fp, c.tn, c.fn)


def _sweep_from_counts(
    threshold: NDArray[np.float64], tp: NDArray[Any], fp: NDArray[Any], tn: NDArray[Any], fn: NDArray[Any]
) -> SweepResult:
    return SweepResult(
        threshold=threshold,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        mcc=np.asarray(mcc_from_counts(tp, fp, tn, fn)),
        precision=np.asarray(precision_from_counts(tp, fp)),
        recall=np.asarray(recall_from_counts(tp, fn)),
        fnr=np.asarray(fnr_from_counts(tp, fn)),
        fpr=np.asarray(fpr_from_counts(fp, tn)),
    )


def weighted_mcc_sweep(
    y_true: ArrayLike, score: ArrayLike, sample_weight: ArrayLike | None = None
) -> SweepResult:
    """:func:`mcc_sweep` with weighted counts: tp(t) = sum of the weights of positives with score > t, etc.

    Same cuts as :func:`mcc_sweep` (which it equals, as float counts, for unit weights; ``None`` = unit
    weights). Computed with one stable sort and cumulative weight sums read at each cut (O(N log N)).
    Weights must be finite, >= 0, with a positive sum; a zero-weight row still contributes a cut.
    MCC is scale-free in the weights: multiplying all of them by c > 0 changes no MCC.
    """
    y = check_labels(y_true, "y_true")
    s = check_scores(score, "score")
    check_same_length([("y_true", y), ("score", s)])
    w = check_sample_weight(sample_weight, len(y))
    w = np.ones(len(y)) if w is None else w
    thresholds = threshold_counts(y, s).thresholds
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    pos_cum = np.r_[0.0, np.cumsum((w * y)[order])]
    neg_cum = np.r_[0.0, np.cumsum((w * (1 - y))[order])]
    # Rows at or below cut t are the first searchsorted(..., "right") sorted rows; the rest are roadwork.
    below = np.searchsorted(s_sorted, thresholds, side="right")
    fn = pos_cum[below]
    tn = neg_cum[below]
    return _sweep_from_counts(thresholds, pos_cum[-1] - fn, neg_cum[-1] - tn, tn, fn)


def prior_weights(y_true: ArrayLike, target_prior: float | None) -> NDArray[np.float64]:
    """Per-row weights that move the labels' prior to ``target_prior`` pi.

    Each positive weighs pi / p_hat and each negative (1 - pi) / (1 - p_hat), where p_hat is the positive
    fraction of ``y_true``; the weights then sum to n with a weighted positive share of exactly pi.
    ``target_prior=None`` keeps the data's own prior (all weights 1). Needs both classes when pi is given.
    """
    y = check_labels(y_true, "y_true")
    if target_prior is None:
        return np.ones(len(y))
    pi = check_target_prior(target_prior)
    p_hat = float(y.mean())
    if p_hat in (0.0, 1.0):
        raise ValueError(
            f"target_prior={pi} needs both classes in y_true to reweight; got {int(y.sum())} of {len(y)} "
            "positive. Pass target_prior=None to keep the data's prior."
        )
    return np.where(y == 1, pi / p_hat, (1.0 - pi) / (1.0 - p_hat))


def check_target_prior(target_prior: float) -> float:
    """Return ``target_prior`` as a float in (0, 1) or raise (ValueError/TypeError naming the argument)."""
    try:
        return check_level(target_prior, "target_prior")
    except ValueError as exc:
        raise ValueError(
            f"{exc} Pass 0.5 for the validator's 50/50 label draws, or None to keep the calibration set's "
            "own prior."
        ) from None


def best_mcc_threshold(
    y_true: ArrayLike, score: ArrayLike, *, max_fnr: float | None = None
) -> tuple[float, float]:
    """(threshold, mcc) maximising MCC of ``score > threshold``, optionally subject to FNR <= ``max_fnr``.

    The all-roadwork cut (FNR 0) is always feasible, so a constraint never leaves nothing to choose. Ties:
    see :meth:`SweepResult.best`.
    """
    return mcc_sweep(y_true, score).best(max_fnr=max_fnr)


# Calibrated probabilities are clipped to [eps, 1 - eps] before taking logits (isotonic can give 0 or 1).
def min_positives_for_guarantee(alpha: float, delta: float) -> int:
    """Smallest number of calibration positives n for which a zero-miss threshold certifies FNR <= alpha.

    With zero misses the Clopper-Pearson bound needs (1 - alpha)^n <= delta, i.e.
    n >= log(delta) / log(1 - alpha).
    """
    a = check_fraction(alpha, "alpha", allow_zero=False)
    d = check_fraction(delta, "delta", allow_zero=False)
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
    a = check_fraction(alpha, "alpha", allow_zero=False)
    d = check_fraction(delta, "delta", allow_zero=False)
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
