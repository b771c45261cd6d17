"""Metrics of binary prediction sets (conformal abstention): coverage, abstention and empty-set rates.

A prediction set is a boolean array of shape [N, 2]: column 0 = "no roadwork" is in the set, column 1 =
"roadwork" is in the set. A set {0, 1} means abstain (both labels plausible); an empty set means neither
label is plausible at the chosen level (an outlier).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from roadwork.validation import check_labels, check_same_length


def check_sets(sets: ArrayLike, name: str = "sets") -> NDArray[np.bool_]:
    """Return ``sets`` as a boolean [N, 2] array (N >= 1), or raise naming ``name``."""
    arr = np.asarray(sets)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array of shape [N, 2]; got dtype {arr.dtype}.")
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape [N, 2] with N >= 1; got {arr.shape}.")
    return arr


def set_coverage(y_true: ArrayLike, sets: ArrayLike, *, label: int | None = None) -> float:
    """Fraction of samples whose true label is in their prediction set.

    With ``label`` (0 or 1), only samples of that class count (class-conditional coverage); raises ValueError
    if ``y_true`` has no sample of that class.
    """
    y = check_labels(y_true, "y_true")
    s = check_sets(sets)
    check_same_length([("y_true", y), ("sets", s)])
    covered = s[np.arange(len(y)), y]
    if label is None:
        return float(covered.mean())
    if label not in (0, 1):
        raise ValueError(f"label must be 0, 1 or None; got {label!r}.")
    mask = y == label
    if not mask.any():
        raise ValueError(f"y_true has no sample of label {label}; class-conditional coverage is undefined.")
    return float(covered[mask].mean())


def abstention_rate(sets: ArrayLike) -> float:
    """Fraction of prediction sets that contain both labels (the policy abstains)."""
    s = check_sets(sets)
    return float(np.mean(s[:, 0] & s[:, 1]))


def empty_set_rate(sets: ArrayLike) -> float:
    """Fraction of prediction sets that contain neither label."""
    s = check_sets(sets)
    return float(np.mean(~s[:, 0] & ~s[:, 1]))
