"""Class-conditional (Mondrian) split-conformal prediction sets with the LAC score.

LAC (least ambiguous set-valued classifier, Sadinle, Lei & Wasserman 2019): the non-conformity of label c
for an image is 1 - p_c, with p_1 = p(roadwork) and p_0 = 1 - p(roadwork). Mondrian (per-class)
calibration: q_c is the ceil((n_c + 1)(1 - alpha))-th smallest score among the n_c calibration images of
class c, and label c enters the set iff 1 - p_c <= q_c. Then P(true label in set | label = c) >= 1 - alpha
for each class, for an image exchangeable with that class's calibration images.

Set meanings: {0} or {1} is a confident decision; {0, 1} means both labels conform (ambiguous: abstain);
the empty set means neither label conforms at this level (an atypical image; this can only happen when
q_0 + q_1 < 1). The Policy abstains on both the two-label and the empty set, i.e. whenever the set does not
single out one label; the deployed probability still carries the thresholded decision for the validator.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from roadwork.metrics import check_sets
from roadwork.validation import check_fraction, check_labels, check_probabilities, check_same_length


@dataclass(frozen=True)
class ConformalQuantiles:
    """Per-class LAC thresholds: label c is in the set iff 1 - p_c <= q_c. ``alpha`` is the miscoverage level.

    q_c = 1.0 means "always include label c" (every LAC score is <= 1); it is used when the class has too few
    calibration images for a finite quantile at this alpha.
    """

    q0: float
    q1: float
    alpha: float

    def __post_init__(self) -> None:
        for name in ("q0", "q1"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be a float in [0, 1]; got {v!r}.")
        check_fraction(self.alpha, "alpha", allow_zero=False)

    def to_dict(self) -> dict[str, float]:
        """JSON-able ``{"q0", "q1", "alpha"}``."""
        return {"q0": float(self.q0), "q1": float(self.q1), "alpha": float(self.alpha)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalQuantiles:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ValueError naming them."""
        if not isinstance(data, dict):
            raise TypeError(f"conformal quantiles must be a dict; got {type(data).__name__}.")
        expected = {"q0", "q1", "alpha"}
        if set(data) != expected:
            raise ValueError(
                f"conformal dict: unknown key(s) {sorted(set(data) - expected)}, "
                f"missing key(s) {sorted(expected - set(data))}."
            )
        return cls(q0=data["q0"], q1=data["q1"], alpha=data["alpha"])


def min_class_size(alpha: float) -> int:
    """Smallest per-class calibration count n with a finite quantile: ceil((n + 1)(1 - alpha)) <= n."""
    a = check_fraction(alpha, "alpha", allow_zero=False)
    n = 1
    while math.ceil((n + 1) * (1 - a) - 1e-12) > n:
        n += 1
    return n


def fit_conformal(p_cal: ArrayLike, y_cal: ArrayLike, alpha: float) -> ConformalQuantiles:
    """Per-class LAC quantiles at miscoverage ``alpha`` with the finite-sample (n + 1) correction.

    ``p_cal``: calibrated p(roadwork) of the calibration images; ``y_cal``: their 0/1 labels (both classes
    needed). A class with fewer than :func:`min_class_size` images gets q = 1.0 (label always included) and
    a RuntimeWarning naming the count needed.
    """
    p = check_probabilities(p_cal, "p_cal")
    y = check_labels(y_cal, "y_cal")
    check_same_length([("p_cal", p), ("y_cal", y)])
    a = check_fraction(alpha, "alpha", allow_zero=False)
    for label in (0, 1):
        if not np.any(y == label):
            raise ValueError(f"y_cal has no sample of label {label}; class-conditional conformal needs both.")
    qs: list[float] = []
    for label in (0, 1):
        # Exactly the expressions prediction_sets compares, so boundary cases round identically.
        scores = np.sort(1.0 - p[y == 1] if label == 1 else p[y == 0])
        n = len(scores)
        # The small epsilon keeps e.g. (n + 1) * 0.9 = 90.00000000000001 from rounding the rank up by one.
        k = math.ceil((n + 1) * (1 - a) - 1e-12)
        if k > n:
            warnings.warn(
                f"label {label} has {n} calibration images; alpha={a} needs at least {min_class_size(a)} "
                "for a finite quantile, so this label is always included in the set.",
                RuntimeWarning,
                stacklevel=2,
            )
            qs.append(1.0)
        else:
            qs.append(float(scores[k - 1]))
    return ConformalQuantiles(q0=qs[0], q1=qs[1], alpha=a)


def prediction_sets(p: ArrayLike, quantiles: ConformalQuantiles) -> NDArray[np.bool_]:
    """Boolean [N, 2] sets: column c is True iff label c is in the set (1 - p_c <= q_c); see module doc."""
    prob = check_probabilities(p, "p")
    if not isinstance(quantiles, ConformalQuantiles):
        raise TypeError(f"quantiles must be a ConformalQuantiles; got {type(quantiles).__name__}.")
    return np.stack([prob <= quantiles.q0, 1.0 - prob <= quantiles.q1], axis=1)


def abstain_mask(sets: ArrayLike) -> NDArray[np.bool_]:
    """True where the boolean [N, 2] set is not a single label (two labels: ambiguous; none: atypical)."""
    return check_sets(sets).sum(axis=1) != 1
