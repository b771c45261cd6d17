"""Confidence intervals: Wilson score interval for a proportion and a (group) percentile bootstrap."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm

from roadwork.metrics._validation import check_labels, check_level, check_same_length, check_scores


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval (low, high) for a binomial proportion k / n at confidence ``level``.

    ``k`` successes out of ``n`` >= 1 trials, 0 <= k <= n. The interval always lies inside [0, 1] and is
    well-behaved at k = 0 and k = n, unlike the Wald interval.
    """
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int; got {type(v).__name__}.")
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}.")
    if not 0 <= k <= n:
        raise ValueError(f"k must satisfy 0 <= k <= n={n}; got {k}.")
    z = float(norm.ppf(0.5 + check_level(level) / 2))
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _group_resample_indices(
    codes: NDArray[np.int64], n_resamples: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    """Index arrays of ``n_resamples`` group-bootstrap samples: groups drawn with replacement, kept whole."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    n_groups = len(sizes)
    drawn = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    out = []
    for g in drawn:
        lengths = sizes[g]
        # Position of each output element inside its group, built without a Python loop over groups.
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out.append(order[np.repeat(starts[g], lengths) + within])
    return out


def bootstrap_ci(
    metric_fn: Callable[[NDArray[np.int64], NDArray[np.float64]], float],
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): ``metric_fn(y_true, y_score)`` and its percentile-bootstrap interval at ``level``.

    Without ``groups`` each resample draws N indices with replacement (``Generator.integers(0, N, (B, N))``,
    same draws as ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` given the same generator).
    With ``groups`` (one id per sample, e.g. the dedupe group) whole groups are resampled: G of the G groups
    are drawn with replacement and every sample of a drawn group comes along, so near-duplicates never split
    between "in" and "out" of a resample. The interval is the (1-level)/2 and (1+level)/2 quantiles (linear
    interpolation) of the resampled metrics. Resamples whose metric is not finite (e.g. AUROC of a one-class
    resample) are excluded with a warning stating how many; if none is finite the interval is (nan, nan).

    ``y_score`` may be probabilities, margins or 0/1 decisions: it is passed to ``metric_fn`` unchanged (as
    float64). ``seed`` seeds a local ``numpy.random.Generator``; global random state is untouched.
    """
    if not callable(metric_fn):
        raise TypeError(
            f"metric_fn must be callable (y_true, y_score) -> float; got {type(metric_fn).__name__}."
        )
    y = check_labels(y_true, "y_true")
    s = check_scores(y_score, "y_score")
    check_same_length([("y_true", y), ("y_score", s)])
    lvl = check_level(level)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int; got {n_resamples!r}.")
    rng = np.random.default_rng(seed)
    point = float(metric_fn(y, s))
    if groups is None:
        index_sets: NDArray[np.int64] | list[NDArray[np.int64]] = rng.integers(
            0, len(y), size=(n_resamples, len(y))
        )
    else:
        g = np.asarray(groups)
        if g.ndim != 1:
            raise ValueError(f"groups must be 1-D (one group id per sample); got shape {g.shape}.")
        check_same_length([("y_true", y), ("groups", g)])
        _, codes = np.unique(g, return_inverse=True)
        index_sets = _group_resample_indices(codes.astype(np.int64), int(n_resamples), rng)
    stats = np.array([metric_fn(y[idx], s[idx]) for idx in index_sets], dtype=np.float64)
    finite = np.isfinite(stats)
    if not finite.all():
        warnings.warn(
            f"bootstrap_ci: {int((~finite).sum())} of {len(stats)} resamples gave a non-finite metric "
            "and were excluded from the interval.",
            RuntimeWarning,
            stacklevel=2,
        )
    if not finite.any():
        return point, float("nan"), float("nan")
    low, high = np.quantile(stats[finite], [(1 - lvl) / 2, (1 + lvl) / 2])
    return point, float(low), float(high)
