"""The points the ROC, PR and reliability figures draw, as DataFrames for the CSV files DVC plots."""

from __future__ import annotations

import pandas as pd
from numpy.typing import ArrayLike

from roadwork import metrics as rm
from roadwork.plots.checks import check_labels_and
from roadwork.validation import check_n_bins, check_probabilities, check_scores


def roc_table(y_true: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """The ROC points :func:`roc_figure` draws, by increasing FPR: ``threshold`` (the rule
    ``score > threshold``), ``fpr`` and ``tpr``, from (0, 0) to (1, 1) (:func:`roadwork.metrics.roc_curve`).
    """
    y, s = check_labels_and(y_true, score, "score", check_scores)
    curve = rm.roc_curve(y, s)
    return pd.DataFrame({"threshold": curve.thresholds, "fpr": curve.fpr, "tpr": curve.tpr})


def pr_table(y_true: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """The precision-recall points :func:`pr_figure` draws, by increasing recall: ``threshold`` (the rule
    ``score > threshold``), ``recall`` and ``precision`` (:func:`roadwork.metrics.pr_curve`)."""
    y, s = check_labels_and(y_true, score, "score", check_scores)
    curve = rm.pr_curve(y, s)
    return pd.DataFrame({"threshold": curve.thresholds, "recall": curve.recall, "precision": curve.precision})


def reliability_table(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15) -> pd.DataFrame:
    """The reliability points :func:`reliability_figure` draws for one probability set: per non-empty
    equal-width bin, ``bin_center``, ``mean_predicted`` (mean p(roadwork)), ``observed_fraction`` (of
    roadwork) and ``count`` (:func:`roadwork.metrics.reliability_curve`)."""
    y, prob = check_labels_and(y_true, p, "p", check_probabilities)
    curve = rm.reliability_curve(y, prob, n_bins=check_n_bins(n_bins), strategy="uniform")
    filled = curve.counts > 0
    return pd.DataFrame(
        {
            "bin_center": curve.centers[filled],
            "mean_predicted": curve.mean_confidence[filled],
            "observed_fraction": curve.accuracy[filled],
            "count": curve.counts[filled],
        }
    )
