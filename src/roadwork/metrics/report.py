"""The subnet's validator score and the one-threshold classification report for metrics.json."""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn.exceptions import UndefinedMetricWarning

from roadwork.metrics.calibration import ace, brier, ece, mce, nll, smooth_ece
from roadwork.metrics.classification import (
    accuracy_from_counts,
    f1_from_counts,
    fnr_from_counts,
    fpr_from_counts,
    mcc_from_counts,
    precision_from_counts,
    recall_from_counts,
)
from roadwork.metrics.curves import auprc, auroc
from roadwork.metrics.selective import augrc
from roadwork.validation import check_labels, check_probabilities, check_same_length

# natix-network streetvision-subnet, natix/validator/config.py: REWARD_CURVE_EXPONENT = 3.0.
_REWARD_EXPONENT = 3.0


def validator_score(mcc_last100: float, acc_last10: float) -> float:
    """The StreetVision validator's reward (0.5 * max(MCC, 0) + 0.5 * accuracy) ** 3, in [0, 1].

    Mirrors natixnetwork/streetvision-subnet: ``natix/validator/reward.py`` computes
    ``0.5 * metrics_100["mcc"] + 0.5 * metrics_10["accuracy"]`` raised to ``REWARD_CURVE_EXPONENT = 3.0``, and
    ``miner_performance_tracker.py`` clips MCC with ``max(0, matthews_corrcoef(...))`` (and uses 0 when the
    window holds one class, which :func:`roadwork.metrics.mcc` also returns). ``mcc_last100`` is the MCC of
    the last 100 decisions, in [-1, 1]; ``acc_last10`` the accuracy of the last 10, in [0, 1].
    """
    for name, v, lo in (("mcc_last100", mcc_last100, -1.0), ("acc_last10", acc_last10, 0.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a float; got {type(v).__name__}.")
        if not (math.isfinite(float(v)) and lo <= float(v) <= 1.0):
            raise ValueError(f"{name} must be in [{lo:g}, 1]; got {v}.")
    return (0.5 * max(float(mcc_last100), 0.0) + 0.5 * float(acc_last10)) ** _REWARD_EXPONENT


def classification_report(
    y_true: ArrayLike, p: ArrayLike, threshold: float = 0.5, *, n_bins: int = 15
) -> dict[str, float]:
    """Every scalar metric of p(roadwork) at one threshold (decision: p > threshold), as a flat float dict.

    Keys: n, n_positive, threshold, tp, fp, tn, fn (counts as floats), accuracy, mcc, precision, recall, f1,
    fnr, fpr (decisions at ``threshold``); auroc, auprc (ranking, threshold-free); brier, nll, ece, mce, ace,
    smooth_ece (calibration of p, threshold-free; ECE/MCE/ACE over ``n_bins`` bins); augrc (selective risk
    of the p > 0.5 decision ranked by max(p, 1 - p)); validator_score ((0.5 max(MCC, 0) + 0.5 accuracy)^3
    with MCC and accuracy of this whole set at ``threshold``: the expected-reward proxy, not the windowed
    live score).
    Undefined values follow the individual functions (auroc is nan for a one-class set); no warning is
    raised for rates that are undefined at this threshold, as the report records them as 0.0.
    """
    y = check_labels(y_true, "y_true")
    prob = check_probabilities(p, "p")
    check_same_length([("y_true", y), ("p", prob)])
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a float; got {type(threshold).__name__}.")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite; got {threshold}.")
    pred = prob > float(threshold)
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = len(y) - tp - fp - fn
    acc = float(accuracy_from_counts(tp, fp, tn, fn))
    m = float(mcc_from_counts(tp, fp, tn, fn))
    with warnings.catch_warnings():
        # A one-class set is reported as nan AUROC / 0.0 AP; the warning adds nothing to a report dict.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        roc = auroc(y, prob)
        ap = auprc(y, prob)
    return {
        "n": float(len(y)),
        "n_positive": float(y.sum()),
        "threshold": float(threshold),
        "tp": float(tp),
        "fp": float(fp),
        "tn": float(tn),
        "fn": float(fn),
        "accuracy": acc,
        "mcc": m,
        "precision": float(precision_from_counts(tp, fp)),
        "recall": float(recall_from_counts(tp, fn)),
        "f1": float(f1_from_counts(tp, fp, fn)),
        "fnr": float(fnr_from_counts(tp, fn)),
        "fpr": float(fpr_from_counts(fp, tn)),
        "auroc": roc,
        "auprc": ap,
        "brier": brier(y, prob),
        "nll": nll(y, prob),
        "ece": ece(y, prob, n_bins=n_bins),
        "mce": mce(y, prob, n_bins=n_bins),
        "ace": ace(y, prob, n_bins=n_bins),
        "smooth_ece": smooth_ece(y, prob),
        "augrc": augrc(y, prob),
        "validator_score": validator_score(m, acc),
    }
