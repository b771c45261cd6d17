"""The StreetVision validator's headline metrics and expected reward (paired intervals: ``intervals.py``).

The validator's challenge (natixnetwork/streetvision-subnet): draw a label, roadwork with probability
``prior`` (0.5), then an image of that label uniformly, then an augmentation level L with probability
``level_weights[L]`` (0..3, 25 % each), render the image at L and binarise the miner's answer at 0.5. The
miner's reward is ``(0.5 * max(MCC over its last 100 answers, 0) + 0.5 * accuracy over its last 10) ** 3``.

Inputs are per *row*, one row per rendered challenge: ``y_true`` (0/1 label), ``decision`` (the 0/1 answer
after the 0.5 cut), ``level`` (int in 0..K-1, K = ``len(level_weights)``) and optionally ``groups`` (one
image id per row: every render of one original image carries the same id). The *units* the validator picks
are (group, label) pairs. With ``groups`` every unit of a label weighs the same within a level, however many
renders it has: the rate at level L is the mean over units of the unit's mean decision over its rows at L,
the honest estimate of "pick an image uniformly, then one of its renders". Without ``groups`` all rows of
one label and level count equally (as if every row were one render of one image, or renders were balanced
per image). Pass the image id, not the dedupe group, as ``groups``: the validator picks images.

Completeness (raised as ValueError): both labels must be present, and for every level of positive weight
every unit must have at least one row at that level (without ``groups``: every label has a row there).
Levels of weight 0 need no rows; their per-level metrics are nan when a label has no row there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from roadwork.metrics.classification import accuracy_from_counts, mcc_from_counts
from roadwork.metrics.report import _REWARD_EXPONENT
from roadwork.validation import check_labels, check_same_length, check_scores

UNIFORM_LEVELS: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)


class ExpectedConfusion(NamedTuple):
    """Expected confusion fractions of one validator challenge; tp + fp + tn + fn == 1."""

    tp: float
    fp: float
    tn: float
    fn: float


@dataclass(frozen=True)
class _Design:
    """Checked rows: labels, decisions, levels, unit code per row and the label of each unit."""

    y: NDArray[np.int64]
    d: NDArray[np.int64]
    level: NDArray[np.int64]
    unit: NDArray[np.int64]
    unit_label: NDArray[np.int64]
    unit_names: NDArray[Any] | None
    weights: NDArray[np.float64]
    prior: float


def _check_weights(level_weights: Sequence[float], prior: float) -> tuple[NDArray[np.float64], float]:
    w = np.asarray(level_weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"level_weights must be a non-empty sequence of finite weights >= 0; got {w}.")
    if not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
        raise ValueError(f"level_weights must sum to 1 (e.g. 0.25 each); got sum {w.sum():.12g}.")
    if isinstance(prior, bool) or not isinstance(prior, (int, float, np.integer, np.floating)):
        raise TypeError(f"prior must be a float in (0, 1); got {type(prior).__name__}.")
    if not 0.0 < float(prior) < 1.0:
        raise ValueError(f"prior (the validator's roadwork share) must be in (0, 1); got {prior}.")
    return w, float(prior)


def _design(
    y_true: ArrayLike,
    decision: ArrayLike,
    level: ArrayLike,
    groups: ArrayLike | None,
    level_weights: Sequence[float],
    prior: float,
) -> _Design:
    """Validate the rows and code the (group, label) units; raise naming the offending argument."""
    w, pri = _check_weights(level_weights, prior)
    y = check_labels(y_true, "y_true")
    d = check_labels(decision, "decision")
    lv = check_scores(level, "level")
    if np.any(lv != np.round(lv)) or np.any((lv < 0) | (lv >= len(w))):
        raise ValueError(
            f"level must hold integer augmentation levels in 0..{len(w) - 1} (as len(level_weights) is "
            f"{len(w)}); found values in [{lv.min():g}, {lv.max():g}]."
        )
    arrays = [("y_true", y), ("decision", d), ("level", lv)]
    if groups is None:
        gcode = np.zeros(len(y), dtype=np.int64)
        names = None
    else:
        g = np.asarray(groups)
        if g.ndim != 1:
            raise ValueError(f"groups must be 1-D (one image id per row); got shape {g.shape}.")
        check_same_length([*arrays, ("groups", g)])
        names, gcode = np.unique(g, return_inverse=True)
    check_same_length(arrays)
    for label, what in ((1, "roadwork"), (0, "no-roadwork")):
        if not np.any(y == label):
            raise ValueError(
                f"y_true has no row of label {label} ({what}): the validator draws both labels, so "
                "its metrics need images of each."
            )
    keys, unit = np.unique(gcode.astype(np.int64) * 2 + y, return_inverse=True)
    unit_names = None if names is None else names[keys // 2]
    return _Design(y, d, lv.astype(np.int64), unit.astype(np.int64), keys % 2, unit_names, w, pri)


def _cell_counts(des: _Design) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rows and positive decisions per (unit, level) cell, as [n_units, K] arrays."""
    k = len(des.weights)
    n_cells = len(des.unit_label) * k
    cell = des.unit * k + des.level
    counts = np.bincount(cell, minlength=n_cells).reshape(-1, k)
    positives = np.bincount(cell, weights=des.d, minlength=n_cells).reshape(-1, k)
    return counts, positives


def _require_complete(des: _Design, counts: NDArray[np.int64]) -> None:
    """Raise unless every unit has a row at every level of positive weight."""
    for lvl in np.flatnonzero(des.weights > 0):
        missing = np.flatnonzero(counts[:, lvl] == 0)
        if missing.size == 0:
            continue
        if des.unit_names is None:
            labels = sorted(int(c) for c in des.unit_label[missing])
            raise ValueError(
                f"no row of label(s) {labels} at level {lvl}, which has weight {des.weights[lvl]:g}; "
                "render every image at every level (or give that level weight 0)."
            )
        examples = [str(x) for x in des.unit_names[missing[:5]]]
        raise ValueError(
            f"{missing.size} image(s) in groups have no row at level {lvl} (weight {des.weights[lvl]:g}), "
            f"e.g. {examples}; the validator may draw any image at any level, so render each at every level "
            "(or give that level weight 0)."
        )


def _level_rates(des: _Design) -> NDArray[np.float64]:
    """rates[c, L]: mean over units of label c (with rows at L) of their mean decision at L; nan if none.

    rates[1] is the per-level true-positive rate, rates[0] the per-level false-positive rate.
    """
    counts, positives = _cell_counts(des)
    _require_complete(des, counts)
    have = counts > 0
    means = np.divide(positives, counts, out=np.zeros(counts.shape), where=have)
    k = len(des.weights)
    rates = np.full((2, k), np.nan)
    for c in (0, 1):
        rows = des.unit_label == c
        n = have[rows].sum(axis=0)
        rates[c] = np.divide(means[rows].sum(axis=0), n, out=np.full(k, np.nan), where=n > 0)
    return rates


def _confusion_from_rates(tpr: float, fpr: float, prior: float) -> ExpectedConfusion:
    return ExpectedConfusion(
        tp=prior * tpr, fp=(1 - prior) * fpr, tn=(1 - prior) * (1 - fpr), fn=prior * (1 - tpr)
    )


def _overall(des: _Design, rates: NDArray[np.float64]) -> ExpectedConfusion:
    """The level mix of the per-level rates: sum_L w_L TPR_L and sum_L w_L FPR_L over levels of weight > 0."""
    use = des.weights > 0
    tpr = float(np.dot(des.weights[use], rates[1, use]))
    fpr = float(np.dot(des.weights[use], rates[0, use]))
    return _confusion_from_rates(tpr, fpr, des.prior)


def validator_confusion(
    y_true: ArrayLike,
    decision: ArrayLike,
    level: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    level_weights: Sequence[float] = UNIFORM_LEVELS,
    prior: float = 0.5,
) -> ExpectedConfusion:
    """Expected confusion fractions (tp, fp, tn, fn), summing to 1, of one challenge of the validator's draw.

    With TPR_L / FPR_L the per-level rates of the module docstring (per unit when ``groups`` is given),
    tp = sum_L w_L * prior * TPR_L, fn = sum_L w_L * prior * (1 - TPR_L), fp = sum_L w_L * (1 - prior) * FPR_L
    and tn = sum_L w_L * (1 - prior) * (1 - FPR_L), with w = ``level_weights``. Raises ValueError on bad
    inputs or incomplete rows (see the module docstring).
    """
    des = _design(y_true, decision, level, groups, level_weights, prior)
    return _overall(des, _level_rates(des))


def _mcc_acc(c: ExpectedConfusion) -> tuple[float, float]:
    if any(math.isnan(v) for v in c):
        return math.nan, math.nan
    return float(mcc_from_counts(*c)), float(accuracy_from_counts(*c))


def validator_metrics(
    y_true: ArrayLike,
    decision: ArrayLike,
    level: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    level_weights: Sequence[float] = UNIFORM_LEVELS,
    prior: float = 0.5,
) -> dict[str, float]:
    """The validator's headline metrics, a flat float dict (arguments as :func:`validator_confusion`).

    ``validator_mcc``: MCC of the expected confusion fractions, by the formula of
    :func:`roadwork.metrics.mcc_from_counts` (0.0 when a row or column of the matrix is empty).
    ``validator_accuracy``: tp + tn. ``predicted_positive_rate``: tp + fp, the share of challenges answered
    roadwork. For each level k in 0..K-1, ``L{k}_mcc`` and ``L{k}_accuracy``: the same for challenges
    rendered at level k only, i.e. the matrix (prior TPR_k, (1-prior) FPR_k, ...); nan for a level of weight 0
    at which a label has no row. These are expectations over the draw of one challenge, not the windowed live
    score; :func:`expected_reward` gives the expected reward.
    """
    des = _design(y_true, decision, level, groups, level_weights, prior)
    rates = _level_rates(des)
    overall = _overall(des, rates)
    mcc_all, acc_all = _mcc_acc(overall)
    out = {
        "validator_mcc": mcc_all,
        "validator_accuracy": acc_all,
        "predicted_positive_rate": overall.tp + overall.fp,
    }
    for k in range(len(des.weights)):
        out[f"L{k}_mcc"], out[f"L{k}_accuracy"] = _mcc_acc(
            _confusion_from_rates(float(rates[1, k]), float(rates[0, k]), des.prior)
        )
    return out


def validator_mcc(
    y_true: ArrayLike,
    decision: ArrayLike,
    level: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    level_weights: Sequence[float] = UNIFORM_LEVELS,
    prior: float = 0.5,
) -> float:
    """``validator_metrics(...)["validator_mcc"]``: the MCC of :func:`validator_confusion`'s matrix."""
    c = validator_confusion(y_true, decision, level, groups=groups, level_weights=level_weights, prior=prior)
    return float(mcc_from_counts(*c))


def reward(mcc_100: ArrayLike, accuracy_10: ArrayLike) -> float | NDArray[np.float64]:
    """The subnet's reward ``(0.5 * max(mcc_100, 0) + 0.5 * accuracy_10) ** 3``, elementwise, in [0, 1].

    ``mcc_100`` is the MCC over the miner's last 100 answers, in [-1, 1] (negative MCC counts as 0, as the
    subnet's ``max(0, matthews_corrcoef(...))``); ``accuracy_10`` its accuracy over the last 10, in [0, 1].
    Scalars give a float, arrays (broadcast together) an array. Same formula as
    :func:`roadwork.metrics.validator_score`, vectorised.
    """
    m = np.asarray(mcc_100, dtype=np.float64)
    a = np.asarray(accuracy_10, dtype=np.float64)
    for name, v, lo in (("mcc_100", m, -1.0), ("accuracy_10", a, 0.0)):
        if not np.all(np.isfinite(v)) or np.any((v < lo) | (v > 1.0)):
            raise ValueError(
                f"{name} must be finite and in [{lo:g}, 1]; got values in [{v.min()}, {v.max()}]"
            )
    out = (0.5 * np.maximum(m, 0.0) + 0.5 * a) ** _REWARD_EXPONENT
    return float(out) if out.ndim == 0 else out


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def _draw_rows(
    des: _Design, counts: NDArray[np.int64], shape: tuple[int, int], rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(label, row) of each simulated challenge: label ~ prior, unit of that label, level ~ w, row in cell."""
    k = len(des.weights)
    units_by_label = np.argsort(des.unit_label, kind="stable")  # units of label 0, then of label 1
    n_of_label = np.bincount(des.unit_label, minlength=2)
    first_of_label = np.array([0, n_of_label[0]])
    cell_of_row = des.unit * k + des.level
    row_order = np.argsort(cell_of_row, kind="stable")
    flat_counts = counts.ravel()
    cell_start = np.r_[0, np.cumsum(flat_counts)[:-1]]

    label = (rng.random(shape) < des.prior).astype(np.int64)
    unit = units_by_label[first_of_label[label] + rng.integers(0, n_of_label[label])]
    lvl = rng.choice(k, size=shape, p=des.weights / des.weights.sum())
    cell = unit * k + lvl
    row = row_order[cell_start[cell] + rng.integers(0, flat_counts[cell])]
    return label, row


def reward_streams(
    y_true: ArrayLike,
    decision: ArrayLike,
    level: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    level_weights: Sequence[float] = UNIFORM_LEVELS,
    prior: float = 0.5,
    n_streams: int = 2000,
    stream_length: int = 100,
    accuracy_window: int = 10,
    seed: int = 0,
) -> NDArray[np.float64]:
    """The reward of each of ``n_streams`` simulated challenge streams, a float array of that length.

    Each stream holds ``stream_length`` independent challenges drawn as the validator does: a label
    (roadwork with probability ``prior``), a unit (image) of that label uniformly, a level with probability
    ``level_weights[L]``, then one of that unit's rows at that level uniformly; the answer is that row's
    ``decision``. A stream's reward is :func:`reward` of the MCC over all its challenges (0 when the stream
    or its answers hold one class) and the accuracy over its last ``accuracy_window``. Requires complete
    rows (module docstring). Seeded by a local generator: equal inputs and ``seed`` give equal draws, so two
    models scored on the same rows with the same seed face the same challenges (common random numbers).
    """
    des = _design(y_true, decision, level, groups, level_weights, prior)
    n = _positive_int(n_streams, "n_streams")
    t = _positive_int(stream_length, "stream_length")
    win = _positive_int(accuracy_window, "accuracy_window")
    if win > t:
        raise ValueError(f"accuracy_window ({win}) must not exceed stream_length ({t}).")
    counts, _ = _cell_counts(des)
    _require_complete(des, counts)
    label, row = _draw_rows(des, counts, (n, t), np.random.default_rng(seed))
    answer = des.d[row]
    tp = np.count_nonzero((answer == 1) & (label == 1), axis=1)
    fp = np.count_nonzero((answer == 1) & (label == 0), axis=1)
    fn = np.count_nonzero((answer == 0) & (label == 1), axis=1)
    mcc_100 = mcc_from_counts(tp, fp, t - tp - fp - fn, fn)
    acc_10 = np.mean(answer[:, -win:] == label[:, -win:], axis=1)
    return np.asarray(reward(mcc_100, acc_10), dtype=np.float64)


def expected_reward(y_true: ArrayLike, decision: ArrayLike, level: ArrayLike, **options: Any) -> float:
    """Monte Carlo mean of the subnet's reward: ``reward_streams(...).mean()``; ``options`` are
    :func:`reward_streams`' keywords (``groups``, ``level_weights``, ``prior``, ``n_streams``,
    ``stream_length``, ``accuracy_window``, ``seed``), with its defaults.

    Its Monte Carlo standard error is ``reward_streams(...).std(ddof=1) / sqrt(n_streams)`` (about 0.005
    for 2000 streams). Unlike ``validator_score(validator_mcc, validator_accuracy)``, this accounts for the
    windows' sampling noise: reward is convex in accuracy, so e.g. an always-roadwork model earns
    0.125 * E[(K/10)^3] = 0.0203125 with K ~ Binomial(10, 0.5), not 0.125 * 0.5^3.
    """
    return float(reward_streams(y_true, decision, level, **options).mean())
