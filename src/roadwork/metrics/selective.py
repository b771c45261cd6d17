"""Selective classification: risk-coverage curve and AUGRC (Traub et al. 2024) for p(roadwork).

The classifier decides roadwork iff p > 0.5 and its confidence is max(p, 1 - p). A sample is accepted
(not deferred) iff confidence > threshold, the project's strict rule.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from roadwork.metrics.curves import threshold_counts
from roadwork.validation import check_labels, check_probabilities, check_same_length


class RiskCoverageCurve(NamedTuple):
    """Points ordered by increasing coverage, one per distinct confidence cut with coverage > 0.

    ``coverage``: accepted fraction. ``selective_risk``: error rate among accepted samples.
    ``generalized_risk``: errors among accepted divided by *all* N samples (Traub et al. 2024).
    ``thresholds``: accept iff max(p, 1 - p) > threshold.
    """

    coverage: NDArray[np.float64]
    selective_risk: NDArray[np.float64]
    generalized_risk: NDArray[np.float64]
    thresholds: NDArray[np.float64]


def risk_coverage_curve(y_true: ArrayLike, p: ArrayLike) -> RiskCoverageCurve:
    """Risk-coverage curve of the p > 0.5 decision ranked by max(p, 1 - p); tied confidences move together."""
    y = check_labels(y_true, "y_true")
    prob = check_probabilities(p, "p")
    check_same_length([("y_true", y), ("p", prob)])
    errors = ((prob > 0.5).astype(np.int64) != y).astype(np.int64)
    confidence = np.maximum(prob, 1.0 - prob)
    # Reuse the threshold machinery with "label" = error and "score" = confidence: tp counts accepted errors.
    c = threshold_counts(errors, confidence)
    accepted = (c.tp + c.fp)[::-1][1:]
    err = c.tp[::-1][1:]
    n = len(y)
    return RiskCoverageCurve(
        coverage=accepted / n,
        selective_risk=err / accepted,
        generalized_risk=err / n,
        thresholds=c.thresholds[::-1][1:],
    )


def augrc(y_true: ArrayLike, p: ArrayLike) -> float:
    """Area under the generalized risk-coverage curve (Traub et al. 2024), in [0, 0.5]; lower is better.

    Trapezoidal area of generalized risk vs coverage from (0, 0) to (1, overall error rate). Tied confidences
    are accepted together, which the linear segment between their cuts averages over (the expectation under
    random tie-breaking). AUGRC equals the probability that a random sample is a misclassification that is
    accepted at the coverage of an independent uniform draw, so it penalises both errors and poor ranking.
    """
    curve = risk_coverage_curve(y_true, p)
    cov = np.r_[0.0, curve.coverage]
    risk = np.r_[0.0, curve.generalized_risk]
    return float(np.trapezoid(risk, cov))
