"""Confusion-matrix metrics for hard 0/1 decisions (label 1 = roadwork is the positive class).

Every scalar metric is defined once, on confusion counts (``*_from_counts``, vectorised over numpy arrays
so the exact threshold sweep can evaluate all cuts at once); the ``(y_true, y_pred)`` functions count and
delegate.

Undefined ratios follow scikit-learn's defaults (``zero_division=0``): precision with no predicted positive,
recall with no actual positive and F1 with neither is 0.0, and MCC is 0.0 whenever a row or column of the
confusion matrix is empty (``sklearn.metrics.matthews_corrcoef``). Like scikit-learn, the scalar functions
emit ``sklearn.exceptions.UndefinedMetricWarning`` for undefined precision/recall/FNR/FPR; the
``*_from_counts`` functions are silent so that sweeps over thousands of cuts do not flood the log.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.exceptions import UndefinedMetricWarning

from roadwork.validation import check_labels, check_same_length

FloatOrArray = float | NDArray[np.float64]


class ConfusionCounts(NamedTuple):
    """Binary confusion counts: tp/fn are roadwork images called roadwork/not; tn/fp likewise for none."""

    tp: int
    fp: int
    tn: int
    fn: int


def _ratio(num: ArrayLike, den: ArrayLike) -> FloatOrArray:
    """num / den with 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    num_f = np.asarray(num, dtype=np.float64)
    den_f = np.asarray(den, dtype=np.float64)
    out = np.divide(num_f, den_f, out=np.zeros(np.broadcast(num_f, den_f).shape), where=den_f != 0)
    return float(out) if out.ndim == 0 else out


def mcc_from_counts(tp: ArrayLike, fp: ArrayLike, tn: ArrayLike, fn: ArrayLike) -> FloatOrArray:
    """Matthews correlation (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)); 0.0 if any factor is 0.

    Counts are promoted to float64 before multiplying, so four counts of 1e5 (product 1e20) do not overflow.
    """
    tp_f, fp_f, tn_f, fn_f = (np.asarray(a, dtype=np.float64) for a in (tp, fp, tn, fn))
    num = tp_f * tn_f - fp_f * fn_f
    # Pairing the factors makes perfect (and perfectly inverted) predictions give exactly +-1.
    den = np.sqrt((tp_f + fp_f) * (tp_f + fn_f)) * np.sqrt((tn_f + fp_f) * (tn_f + fn_f))
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
    # Rounding can push |MCC| a hair above 1 for perfect or perfectly inverted predictions.
    out = np.clip(out, -1.0, 1.0)
    return float(out) if out.ndim == 0 else out


def accuracy_from_counts(tp: ArrayLike, fp: ArrayLike, tn: ArrayLike, fn: ArrayLike) -> FloatOrArray:
    """(tp + tn) / (tp + fp + tn + fn)."""
    tp_a, fp_a, tn_a, fn_a = (np.asarray(a) for a in (tp, fp, tn, fn))
    return _ratio(tp_a + tn_a, tp_a + fp_a + tn_a + fn_a)


def precision_from_counts(tp: ArrayLike, fp: ArrayLike) -> FloatOrArray:
    """tp / (tp + fp); 0.0 when nothing is predicted positive."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fp))


def recall_from_counts(tp: ArrayLike, fn: ArrayLike) -> FloatOrArray:
    """tp / (tp + fn) (true-positive rate); 0.0 when there is no actual positive."""
    return _ratio(tp, np.asarray(tp) + np.asarray(fn))


def f1_from_counts(tp: ArrayLike, fp: ArrayLike, fn: ArrayLike) -> FloatOrArray:
    """2 tp / (2 tp + fp + fn); 0.0 when tp + fp + fn == 0."""
    tp_a = np.asarray(tp)
    return _ratio(2 * tp_a, 2 * tp_a + np.asarray(fp) + np.asarray(fn))


def fnr_from_counts(tp: ArrayLike, fn: ArrayLike) -> FloatOrArray:
    """fn / (tp + fn): share of roadwork images missed; 0.0 when there is no actual positive."""
    return _ratio(fn, np.asarray(tp) + np.asarray(fn))


def fpr_from_counts(fp: ArrayLike, tn: ArrayLike) -> FloatOrArray:
    """fp / (fp + tn): share of no-roadwork images flagged; 0.0 when there is no actual negative."""
    return _ratio(fp, np.asarray(fp) + np.asarray(tn))


def _check_pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    yt = check_labels(y_true, "y_true")
    yp = check_labels(y_pred, "y_pred")
    check_same_length([("y_true", yt), ("y_pred", yp)])
    return yt, yp


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike) -> ConfusionCounts:
    """Count (tp, fp, tn, fn) for 0/1 labels ``y_true`` and 0/1 decisions ``y_pred`` (same length >= 1)."""
    yt, yp = _check_pair(y_true, y_pred)
    tp = int(np.count_nonzero((yt == 1) & (yp == 1)))
    fp = int(np.count_nonzero((yt == 0) & (yp == 1)))
    fn = int(np.count_nonzero((yt == 1) & (yp == 0)))
    return ConfusionCounts(tp=tp, fp=fp, tn=len(yt) - tp - fp - fn, fn=fn)


def _warn_undefined(what: str) -> None:
    warnings.warn(what, UndefinedMetricWarning, stacklevel=3)


def mcc(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Matthews correlation coefficient in [-1, 1] of 0/1 decisions; 0.0 when a confusion row/column is empty.

    Matches ``sklearn.metrics.matthews_corrcoef`` (which also returns 0.0, without a warning, in that case).
    """
    c = confusion_counts(y_true, y_pred)
    return float(mcc_from_counts(c.tp, c.fp, c.tn, c.fn))


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of decisions equal to the label, in [0, 1]."""
    c = confusion_counts(y_true, y_pred)
    return float(accuracy_from_counts(c.tp, c.fp, c.tn, c.fn))


def precision(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """tp / (tp + fp); 0.0 with an UndefinedMetricWarning when nothing is predicted positive (as sklearn)."""
    c = confusion_counts(y_true, y_pred)
    if c.tp + c.fp == 0:
        _warn_undefined("precision is undefined (no predicted roadwork); returning 0.0 as scikit-learn does.")
    return float(precision_from_counts(c.tp, c.fp))


def recall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """tp / (tp + fn); 0.0 with an UndefinedMetricWarning when y_true has no positive (as sklearn)."""
    c = confusion_counts(y_true, y_pred)
    if c.tp + c.fn == 0:
        _warn_undefined("recall is undefined (no roadwork in y_true); returning 0.0 as scikit-learn does.")
    return float(recall_from_counts(c.tp, c.fn))


def f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Harmonic mean of precision and recall, 2tp / (2tp + fp + fn); 0.0 if tp + fp + fn == 0 (as sklearn)."""
    c = confusion_counts(y_true, y_pred)
    return float(f1_from_counts(c.tp, c.fp, c.fn))


def fnr(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """False-negative (miss) rate fn / (tp + fn); 0.0 with an UndefinedMetricWarning if there is no positive.

    Note ``fnr == 1 - recall`` except in that undefined case, where both are reported as 0.0.
    """
    c = confusion_counts(y_true, y_pred)
    if c.tp + c.fn == 0:
        _warn_undefined("FNR is undefined (no roadwork in y_true); returning 0.0.")
    return float(fnr_from_counts(c.tp, c.fn))


def fpr(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """False-positive rate fp / (fp + tn); 0.0 with an UndefinedMetricWarning when there is no negative."""
    c = confusion_counts(y_true, y_pred)
    if c.fp + c.tn == 0:
        _warn_undefined("FPR is undefined (no no-roadwork image in y_true); returning 0.0.")
    return float(fpr_from_counts(c.fp, c.tn))
