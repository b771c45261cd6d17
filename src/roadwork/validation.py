"""Argument checks shared across the package (metrics, policy, plots, data), each raising a TypeError or
ValueError whose message names the offending argument: label, probability and score arrays, confidence
levels, bin counts, bounded integers, fractions and finite numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


def check_real(values: ArrayLike, name: str) -> NDArray[np.generic]:
    """``values`` as an array of real numbers (bool, int or float; any shape), or raise naming ``name``."""
    arr = np.asarray(values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric (bool, int or float); got an array of dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued; got complex dtype {arr.dtype}.")
    return arr


def _as_1d_numeric(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = check_real(values, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}. Flatten or select one column first.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; at least one sample is required.")
    out = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (nan or inf); remove or fix them first.")
    return out


def check_labels(y: ArrayLike, name: str = "y_true") -> NDArray[np.int64]:
    """Return ``y`` as a 1-D int64 array of 0/1 labels (1 = roadwork), or raise naming ``name``."""
    arr = _as_1d_numeric(y, name)
    bad = (arr != 0) & (arr != 1)
    if np.any(bad):
        examples = np.unique(arr[bad])[:5].tolist()
        raise ValueError(
            f"{name} must contain only 0 and 1 (1 = roadwork); found other values such as {examples}."
        )
    return arr.astype(np.int64)


def check_probabilities(p: ArrayLike, name: str = "y_score") -> NDArray[np.float64]:
    """Return ``p`` as a 1-D float64 array of probabilities in [0, 1], or raise naming ``name``."""
    arr = _as_1d_numeric(p, name)
    if np.any((arr < 0.0) | (arr > 1.0)):
        raise ValueError(
            f"{name} must hold probabilities in [0, 1] (p(roadwork)); found values in "
            f"[{arr.min():.6g}, {arr.max():.6g}]. Apply a sigmoid to logits first."
        )
    return arr


def check_scores(s: ArrayLike, name: str = "y_score") -> NDArray[np.float64]:
    """Return ``s`` as a 1-D finite float64 array of real scores (any scale), or raise naming ``name``."""
    return _as_1d_numeric(s, name)


def check_same_length(arrays: Sequence[tuple[str, NDArray[np.generic]]]) -> None:
    """Raise a ValueError naming every argument when the named 1-D arrays differ in length."""
    lengths = {name: len(a) for name, a in arrays}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"inputs must have the same length; {desc}.")


def check_level(level: float, name: str = "level") -> float:
    """Return a confidence level strictly inside (0, 1), or raise naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a float in (0, 1); got {type(level).__name__}.")
    value = float(level)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), e.g. 0.95; got {value}.")
    return value


def check_n_bins(n_bins: int) -> int:
    """Return a positive integer bin count, or raise naming ``n_bins``."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be a positive int; got {type(n_bins).__name__}.")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}.")
    return int(n_bins)


def check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (``high`` None: no upper bound; a bool is not an int), or
    raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_fraction(value: object, name: str, *, allow_zero: bool) -> float:
    """``value`` as a float in [0, 1) (``allow_zero``) or (0, 1), or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a float; got {type(value).__name__}.")
    v = float(value)
    low_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (low_ok and v < 1.0 and math.isfinite(v)):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}; got {v}.")
    return v


def check_finite(value: object, name: str) -> float:
    """``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite number; got {type(value).__name__}.")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {v}.")
    return v
