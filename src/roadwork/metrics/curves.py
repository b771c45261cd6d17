"""Threshold-indexed counts and the ranking curves built on them (ROC, precision-recall, AUROC, AP).

Decision rule everywhere in roadwork: an image is called roadwork iff ``score > threshold`` (strict).
:func:`threshold_counts` is the single implementation of "sort once, cumulate counts" that the exact MCC sweep
(:mod:`roadwork.policy.threshold`), the ROC/PR curves and the risk-coverage curve all share.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import UndefinedMetricWarning

from roadwork.validation import check_labels, check_same_length, check_scores


class ThresholdCounts(NamedTuple):
    """Confusion counts of the rule ``score > thresholds[i]`` at every distinct cut, thresholds ascending.

    With k distinct scores u_1 < ... < u_k there are k + 1 rows: ``thresholds[0]`` lies just below u_1
    (``np.nextafter(u_1, -inf)``: everything positive), ``thresholds[i]`` for 1 <= i < k is the midpoint of
    u_i and u_{i+1} (or u_i itself when the two are adjacent floats and the midpoint rounds onto one of them,
    which still separates them under the strict rule), and ``thresholds[k] = u_k`` (everything negative).
    Equal scores therefore always fall on the same side.
    """

    thresholds: NDArray[np.float64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    tn: NDArray[np.int64]
    fn: NDArray[np.int64]


def threshold_counts(y_true: ArrayLike, score: ArrayLike) -> ThresholdCounts:
    """Exact confusion counts at every distinct cut of ``score`` in O(N log N) (one sort, cumulative sums).

    ``y_true``: 0/1 labels (1 = roadwork). ``score``: finite real scores, larger = more roadwork (any scale:
    probabilities or margins). See :class:`ThresholdCounts` for where the thresholds are placed.
    """
    y = check_labels(y_true, "y_true")
    s = check_scores(score, "score")
    check_same_length([("y_true", y), ("score", s)])
    order = np.argsort(s, kind="stable")[::-1]
    s_desc = s[order]
    y_desc = y[order]
    # Last index of each run of equal scores, walking from the highest score down.
    last = np.r_[np.flatnonzero(s_desc[1:] != s_desc[:-1]), len(s_desc) - 1]
    tp_desc = np.r_[0, np.cumsum(y_desc)[last]]
    fp_desc = np.r_[0, last + 1 - tp_desc[1:]]
    u_desc = s_desc[last]
    upper, lower = u_desc[:-1], u_desc[1:]
    mid = upper / 2 + lower / 2
    mid = np.where((mid > lower) & (mid < upper), mid, lower)
    thr_desc = np.r_[u_desc[0], mid, np.nextafter(u_desc[-1], -np.inf)]
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    tp = tp_desc[::-1].astype(np.int64)
    fp = fp_desc[::-1].astype(np.int64)
    return ThresholdCounts(
        thresholds=thr_desc[::-1].astype(np.float64),
        tp=tp,
        fp=fp,
        tn=(n_neg - fp).astype(np.int64),
        fn=(n_pos - tp).astype(np.int64),
    )


class RocCurve(NamedTuple):
    """ROC points ordered by increasing FPR; point i is the rule ``score > thresholds[i]``."""

    fpr: NDArray[np.float64]
    tpr: NDArray[np.float64]
    thresholds: NDArray[np.float64]


class PrCurve(NamedTuple):
    """Precision-recall points ordered by increasing recall; point i is the rule ``score > thresholds[i]``.

    Like scikit-learn, the all-negative cut is reported with precision 1 and recall 0, so the curve starts at
    (recall 0, precision 1).
    """

    precision: NDArray[np.float64]
    recall: NDArray[np.float64]
    thresholds: NDArray[np.float64]


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> RocCurve:
    """ROC curve at every distinct cut (no points dropped), from (0, 0) to (1, 1).

    Unlike ``sklearn.metrics.roc_curve`` (rule ``score >= threshold``, first threshold ``inf``), thresholds
    follow the project's strict rule; the (fpr, tpr) points are the same set sklearn returns with
    ``drop_intermediate=False``. With one class in ``y_true`` the undefined rate is 0 (nan-free curve).
    """
    c = threshold_counts(y_true, y_score)
    rev = slice(None, None, -1)
    tpr = np.asarray(np.divide(c.tp, max(int(c.tp[0] + c.fn[0]), 1)), dtype=np.float64)
    fpr = np.asarray(np.divide(c.fp, max(int(c.fp[0] + c.tn[0]), 1)), dtype=np.float64)
    return RocCurve(fpr=fpr[rev], tpr=tpr[rev], thresholds=c.thresholds[rev])


def pr_curve(y_true: ArrayLike, y_score: ArrayLike) -> PrCurve:
    """Precision-recall curve at every distinct cut, recall increasing (see :class:`PrCurve`).

    With no positive in ``y_true`` recall is defined as 0 at every cut (scikit-learn sets it to 1 with a
    warning; :func:`auprc` follows scikit-learn's value for the area).
    """
    c = threshold_counts(y_true, y_score)
    rev = slice(None, None, -1)
    n_pred = c.tp + c.fp
    prec = np.divide(c.tp, n_pred, out=np.ones(len(n_pred)), where=n_pred > 0)
    rec = np.asarray(np.divide(c.tp, max(int(c.tp[0] + c.fn[0]), 1)), dtype=np.float64)
    return PrCurve(precision=prec[rev], recall=rec[rev], thresholds=c.thresholds[rev])


def _both_classes_or_warn(y: NDArray[np.int64], metric: str) -> bool:
    if 0 < int(y.sum()) < len(y):
        return True
    warnings.warn(
        f"Only one class is present in y_true. {metric} is not defined in that case.",
        UndefinedMetricWarning,
        stacklevel=3,
    )
    return False


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal, ties count half), equal to ``sklearn.metrics.roc_auc_score``.

    ``y_score`` is any finite real score of class 1 (roadwork), e.g. p(roadwork) or the margin logit. With
    only one class in ``y_true`` this returns nan with an ``UndefinedMetricWarning``, as scikit-learn >= 1.6
    does.
    """
    y = check_labels(y_true, "y_true")
    if not _both_classes_or_warn(y, "ROC AUC score"):
        check_same_length([("y_true", y), ("y_score", check_scores(y_score, "y_score"))])
        return float("nan")
    curve = roc_curve(y, y_score)
    return float(np.trapezoid(curve.tpr, curve.fpr))


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision sum_n (R_n - R_{n-1}) P_n over distinct cuts, as sklearn ``average_precision_score``.

    This is the step-wise (not trapezoidal) area. With no positive in ``y_true`` it returns 0.0 with an
    ``UndefinedMetricWarning`` (scikit-learn's value); with no negative it is 1.0.
    """
    y = check_labels(y_true, "y_true")
    curve = pr_curve(y, y_score)
    if int(y.sum()) == 0:
        warnings.warn(
            "No positive class in y_true; average precision is undefined, set to 0.0 as scikit-learn does.",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return 0.0
    return float(np.sum(np.diff(curve.recall) * curve.precision[1:]))
