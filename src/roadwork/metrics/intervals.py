"""Confidence intervals: Wilson score interval for a proportion, a (group) percentile bootstrap, a paired
group bootstrap of the difference between two models scored on the same rows, and the one-pass resampling of
several figures of several models (:func:`group_bootstrap_stats`) both are read from."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm

from roadwork.validation import check_labels, check_level, check_same_length, check_scores


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


def group_resamples(
    codes: NDArray[np.int64], n_resamples: int, rng: np.random.Generator
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Yield ``n_resamples`` group-bootstrap samples as ``(indices, copies)``; groups drawn whole.

    ``codes`` holds one group code in 0..G-1 per sample (``np.unique(groups, return_inverse=True)[1]``).
    Each resample draws G of the G groups with replacement (all G draws of all resamples come from one
    ``rng.integers(0, G, (n_resamples, G))`` call, made before the first yield) and takes every sample of a
    drawn group, group after group in draw order. ``indices`` are positions into the original samples;
    ``copies[i]`` in 0..G-1 numbers the draw that brought ``indices[i]``, so a group drawn twice appears as
    two distinct copies (a statistic that averages per group must count it twice, not merge it).
    """
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    n_groups = len(sizes)
    drawn = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    draw_ids = np.arange(n_groups)
    for g in drawn:
        lengths = sizes[g]
        # Position of each output element inside its group, built without a Python loop over groups.
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        yield order[np.repeat(starts[g], lengths) + within], np.repeat(draw_ids, lengths)


def group_resample_indices(
    codes: NDArray[np.int64], n_resamples: int, rng: np.random.Generator
) -> list[NDArray[np.int64]]:
    """Index arrays of ``n_resamples`` group-bootstrap samples: groups drawn with replacement, kept whole.

    The ``indices`` of :func:`group_resamples` (same draws from ``rng``), as a list.
    """
    return [idx for idx, _ in group_resamples(codes, n_resamples, rng)]


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
        index_sets = group_resample_indices(codes.astype(np.int64), int(n_resamples), rng)
    stats = np.array([metric_fn(y[idx], s[idx]) for idx in index_sets], dtype=np.float64)
    return _interval(point, stats, lvl, "bootstrap_ci")


def _paired_inputs(
    a: ArrayLike, b: ArrayLike, groups: ArrayLike, shared: Mapping[str, ArrayLike], arg: str
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], dict[str, NDArray[Any]]]:
    arrays = {"a": np.asarray(a), "b": np.asarray(b), "groups": np.asarray(groups)}
    for key, value in shared.items():
        if key in (arg, "groups"):
            raise ValueError(f"shared may not contain {key!r}: stat_fn receives it from a/b or groups.")
        arrays[f"shared[{key!r}]"] = np.asarray(value)
    for name, value in arrays.items():
        if value.ndim != 1 or value.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D per-row array; got shape {value.shape}.")
    check_same_length(list(arrays.items()))
    rows = {key: arrays[f"shared[{key!r}]"] for key in shared}
    return arrays["a"], arrays["b"], arrays["groups"], rows


def paired_bootstrap_diff(
    stat_fn: Callable[..., float],
    a: ArrayLike,
    b: ArrayLike,
    groups: ArrayLike,
    *,
    shared: Mapping[str, ArrayLike] | None = None,
    arg: str = "decision",
    stat_groups: ArrayLike | None = None,
    point_fn: Callable[..., float] | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high) of stat(A) - stat(B) for two models scored on the *same* rows, by group bootstrap.

    ``a`` and ``b`` are the two models' per-row outputs (e.g. 0/1 decisions), ``shared`` the per-row arrays
    both share (e.g. ``{"y_true": y, "level": level}``), ``groups`` the resampling unit per row (the image,
    or the dedupe group so near-duplicates move together). The statistic is called with keywords only:
    ``stat_fn(**{arg: x}, **shared_rows, groups=g)``, so :func:`roadwork.metrics.validator_mcc` and
    :func:`roadwork.metrics.expected_reward` serve as they are. Each resample draws the groups with
    replacement (:func:`group_resamples`), takes the same rows for A and B (paired), and records
    stat(A) - stat(B). ``g`` is the per-row ``stat_groups`` (default ``groups``; e.g. image ids while
    resampling dedupe groups), renumbered per resample so that each drawn copy of a group holds distinct ids:
    a group drawn twice weighs twice in a per-image average. For the point estimate ``g`` is ``stat_groups``
    itself. ``point_fn`` (default ``stat_fn``) computes the point estimate on all rows; use it to spend more
    on the point than per resample, e.g. ``point_fn=expected_reward`` (2000 streams) with
    ``stat_fn=functools.partial(expected_reward, n_streams=200)``: a resample then costs about a tenth, its
    Monte Carlo noise (common to A and B, as both face the same seeded challenges) is small next to the
    sampling noise of the difference, and only widens the interval slightly. A random statistic must use a
    fixed seed so that A and B see the same draws; identical models then give exactly (0, 0, 0).

    The interval is the (1-level)/2 and (1+level)/2 quantiles of the resampled differences; non-finite
    differences are excluded with a RuntimeWarning, (nan, nan) if none is finite. A statistic that raises on
    a resample (e.g. one lacking a label) propagates its error. Promotion rule: require ``low > 0``.
    """
    x_a, x_b, g, rows = _paired_inputs(a, b, groups, shared or {}, arg)
    points, stats = _group_stats(stat_fn, point_fn, (x_a, x_b), g, rows, arg, stat_groups, n_resamples, seed)
    return _interval(points[0] - points[1], stats[:, 0] - stats[:, 1], level, "paired_bootstrap_diff")


def group_bootstrap(
    stat_fn: Callable[..., float], x: ArrayLike, groups: ArrayLike, *,
    shared: Mapping[str, ArrayLike] | None = None, arg: str = "decision",
    stat_groups: ArrayLike | None = None, point_fn: Callable[..., float] | None = None,
    n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float, float]:  # fmt: skip
    """(point, low, high) of one model's statistic by group bootstrap: :func:`paired_bootstrap_diff`'s
    arguments, resampling and conventions (the same draws for the same ``seed``), without a second model."""
    x_a, _, g, rows = _paired_inputs(x, x, groups, shared or {}, arg)
    points, stats = _group_stats(stat_fn, point_fn, (x_a,), g, rows, arg, stat_groups, n_resamples, seed)
    return _interval(points[0], stats[:, 0], level, "group_bootstrap")


def group_bootstrap_stats(
    stat_fn: Callable[..., ArrayLike],
    columns: Sequence[ArrayLike],
    groups: ArrayLike,
    *,
    shared: Mapping[str, ArrayLike] | None = None,
    arg: str = "decision",
    stat_groups: ArrayLike | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> NDArray[np.float64]:
    """``[n_resamples, len(columns), k]`` group-bootstrap values of a statistic returning ``k`` numbers, for
    several models' ``columns`` scored on the same rows, in one pass.

    Arguments, resampling and conventions are those of :func:`paired_bootstrap_diff` (the same draws for the
    same ``seed``), so ``stats[:, c, j]`` is what :func:`group_bootstrap` resamples for column ``c`` and the
    ``j``-th number, and ``stats[:, 0, j] - stats[:, 1, j]`` what :func:`paired_bootstrap_diff` does.
    Computing every number and every model per resample at once saves the repeated passes (one validator
    confusion serves all its figures). Read intervals with :func:`percentile_interval`.
    """
    if len(columns) == 0:
        raise ValueError("columns must hold at least one per-row array (one per model).")
    checked = [_paired_inputs(column, columns[0], groups, shared or {}, arg) for column in columns]
    arrays = tuple(x for x, _, _, _ in checked)
    _, _, g, rows = checked[0]
    _, stats = _group_stats(stat_fn, None, arrays, g, rows, arg, stat_groups, n_resamples, seed)
    return stats.reshape(stats.shape[0], len(columns), -1)


def percentile_interval(stats: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """(low, high): the (1-level)/2 and (1+level)/2 quantiles of the finite resampled ``stats``
    (non-finite ones dropped with a RuntimeWarning; (nan, nan) when none is finite)."""
    _, low, high = _interval(
        float("nan"), np.asarray(stats, dtype=np.float64).reshape(-1), level, "bootstrap"
    )
    return low, high


def _group_stats(
    stat_fn: Callable[..., float],
    point_fn: Callable[..., float] | None,
    columns: tuple[NDArray[Any], ...],
    g: NDArray[Any],
    rows: dict[str, NDArray[Any]],
    arg: str,
    stat_groups: ArrayLike | None,
    n_resamples: int,
    seed: int,
) -> tuple[list[NDArray[np.float64]], NDArray[np.float64]]:
    """Point statistics of each column and ``[n_resamples, len(columns), *shape]`` resampled ones (same rows
    for every column of a resample; per-row ``stat_groups`` ids renumbered per drawn copy). A statistic may
    return a scalar or a fixed-length vector (``shape`` is then ``(k,)``)."""
    if not callable(stat_fn) or (point_fn is not None and not callable(point_fn)):
        raise TypeError("stat_fn (and point_fn, if given) must be callable with keyword arrays.")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int; got {n_resamples!r}.")
    sg = g if stat_groups is None else np.asarray(stat_groups)
    if sg.ndim != 1:
        raise ValueError(f"stat_groups must be 1-D (one id per row); got shape {sg.shape}.")
    check_same_length([("a", columns[0]), ("stat_groups", sg)])
    _, stat_codes = np.unique(sg, return_inverse=True)
    n_stat = int(stat_codes.max()) + 1
    full = point_fn or stat_fn
    points = [np.asarray(full(**{arg: x}, **rows, groups=sg), dtype=np.float64) for x in columns]
    _, codes = np.unique(g, return_inverse=True)
    stats = []
    for idx, copies in group_resamples(codes.astype(np.int64), int(n_resamples), np.random.default_rng(seed)):
        sub = {key: value[idx] for key, value in rows.items()}
        ids = copies * n_stat + stat_codes[idx]
        stats.append([np.asarray(stat_fn(**{arg: x[idx]}, **sub, groups=ids), np.float64) for x in columns])
    return points, np.asarray(stats, dtype=np.float64)


def _interval(
    point: float, stats: NDArray[np.float64], level: float, name: str
) -> tuple[float, float, float]:
    """(point, low, high): the percentile interval of the finite ``stats`` (non-finite ones dropped with a
    warning; (nan, nan) when none is finite)."""
    lvl = check_level(level)
    finite = np.isfinite(stats)
    if not finite.all():
        warnings.warn(
            f"{name}: {int((~finite).sum())} of {len(stats)} resamples gave a non-finite statistic and were "
            "excluded from the interval.",
            RuntimeWarning,
            stacklevel=3,
        )
    if not finite.any():
        return point, float("nan"), float("nan")
    low, high = np.quantile(stats[finite], [(1 - lvl) / 2, (1 + lvl) / 2])
    return point, float(low), float(high)
