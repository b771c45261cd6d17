"""Threshold rules (:data:`THRESHOLD_RULES`, :func:`select_threshold`) on the prior-weighted MCC sweep of
:mod:`roadwork.policy.threshold`.

``"argmax"`` is the exact best cut of the (weighted) sweep; ``"shrink"`` (:func:`shrunk_mcc_threshold`, the
default) pulls the argmax towards the prior-neutral cut by its bootstrap uncertainty, and ``"bagged"``
(:func:`bagged_mcc_threshold`) takes the median of the argmax cuts of bootstrap replicates; both transfer
better from ~100-image calibration sets (``bench/threshold_policy.py``). ``"bagged"`` tracks the MCC optimum
more closely, which on the demo raises the validator MCC but can push the predicted-positive rate on a
50/50 mix below 0.35 (see BENCHMARKS.md), so it is not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, logit

from roadwork.metrics import mcc_from_counts
from roadwork.policy.calibration import PlattScaling
from roadwork.policy.threshold import (
    _MCC_TIE_TOL,
    SweepResult,
    mcc_sweep,
    prior_weights,
    weighted_mcc_sweep,
)
from roadwork.validation import check_labels, check_probabilities, check_same_length
from roadwork.vocab import THRESHOLD_RULES  # what select_threshold and fit_policy(threshold_rule=...) accept

_LOGIT_EPS = 1e-12


def check_threshold_rule(rule: str) -> str:
    """Return ``rule`` if it is one of :data:`THRESHOLD_RULES`, else raise ValueError saying what to pass."""
    if not isinstance(rule, str) or rule not in THRESHOLD_RULES:
        raise ValueError(
            f"threshold_rule {rule!r} is not one of {list(THRESHOLD_RULES)}; pass 'shrink' (stable on small "
            "calibration sets), 'bagged' or 'argmax' (the exact best-MCC cut)."
        )
    return rule


def check_groups(groups: ArrayLike | None, n: int) -> NDArray[np.int64] | None:
    """Map per-row group ids (any 1-D array of ints or strings, one per row) to codes 0..G-1; None stays None.

    Rows that share a group (e.g. validator-style renders of one image) are resampled together by
    :func:`shrunk_mcc_threshold`. Raises ValueError naming ``groups`` for a wrong shape or length.
    """
    if groups is None:
        return None
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D (one id per row); got shape {g.shape}.")
    if len(g) != n:
        raise ValueError(
            f"groups has {len(g)} ids but there are {n} rows; pass one group id per row (e.g. the image "
            "id shared by its renders) or None to resample rows."
        )
    if g.dtype.kind == "f" and not np.all(np.isfinite(g)):
        raise ValueError("groups contains nan or inf; pass finite ids (ints or strings).")
    return np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(-1)


def _bootstrap_multiplicities(
    n: int, groups: NDArray[np.int64] | None, n_boot: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """(n_boot, n) multiplicity of each row in each bootstrap replicate (groups drawn whole when given)."""
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)
    n_groups = int(groups.max()) + 1
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)[:, groups]


def _tied_median_index(mcc: NDArray[np.float64]) -> NDArray[np.int64]:
    """Per row of ``mcc``, the column of the best value with :meth:`SweepResult.best`'s tie rule."""
    tied = mcc >= mcc.max(axis=1, keepdims=True) - _MCC_TIE_TOL
    rank = np.cumsum(tied, axis=1)
    target = (rank[:, -1:] - 1) // 2 + 1
    return np.argmax(tied & (rank == target), axis=1)


def _bootstrap_argmax_logits(
    y: NDArray[np.int64],
    score: NDArray[np.float64],
    sweep: SweepResult,
    n_feasible: int,
    target_prior: float | None,
    multiplicity: NDArray[np.int64],
) -> NDArray[np.float64]:
    """logit of the best feasible cut of each bootstrap replicate's (prior-reweighted) sweep.

    Every replicate is swept on the full set's cuts; its own positive share is reweighted to
    ``target_prior`` (unit weights for None). Replicates lacking a class are dropped.
    """
    n_boot, n_cuts = multiplicity.shape[0], len(sweep.threshold)
    # Bin j = number of cuts strictly below the score: the row is roadwork at cut k iff k < j.
    j = np.searchsorted(sweep.threshold, score, side="left")
    flat = (np.arange(n_boot)[:, None] * n_cuts + j[None, :]).ravel()
    hist = {
        label: np.bincount(flat, weights=(multiplicity * (y == label)).ravel(), minlength=n_boot * n_cuts)
        .reshape(n_boot, n_cuts)
        .astype(np.float64)
        for label in (0, 1)
    }
    pos, neg = hist[1].sum(axis=1), hist[0].sum(axis=1)
    keep = (pos > 0) & (neg > 0)
    pos, neg = pos[keep], neg[keep]
    w_pos, w_neg = np.ones_like(pos), np.ones_like(neg)
    if target_prior is not None:
        w_pos, w_neg = target_prior * (pos + neg) / pos, (1 - target_prior) * (pos + neg) / neg
    fn = np.cumsum(hist[1][keep], axis=1)[:, :n_feasible] * w_pos[:, None]
    tn = np.cumsum(hist[0][keep], axis=1)[:, :n_feasible] * w_neg[:, None]
    tp, fp = (pos * w_pos)[:, None] - fn, (neg * w_neg)[:, None] - tn
    mcc = np.asarray(mcc_from_counts(tp, fp, tn, fn)).reshape(len(pos), n_feasible)
    chosen = sweep.threshold[:n_feasible][_tied_median_index(mcc)]
    return logit(np.clip(chosen, _LOGIT_EPS, 1 - _LOGIT_EPS))


def _neutral_logit(u: NDArray[np.float64], y: NDArray[np.int64], weights: NDArray[np.float64]) -> float:
    """Logit where a prior-weighted logistic fit of y on ``u`` crosses 0.5 (0.0 if it cannot be fitted)."""
    try:
        platt = PlattScaling().fit(u, y, sample_weight=weights)
    except (ValueError, RuntimeError):
        return 0.0
    return -float(platt.b) / float(platt.a)


@dataclass(frozen=True)
class _Bootstrap:
    """The calibration set's prior-weighted sweep, its best feasible cut and the bootstrap argmax cuts."""

    y: NDArray[np.int64]
    p: NDArray[np.float64]
    weights: NDArray[np.float64]
    sweep: SweepResult
    max_cut: float  # the largest feasible cut: every rule's result is capped there
    t_hat: float  # the exact argmax (``"argmax"``)
    boot: NDArray[np.float64]  # logit of each replicate's best feasible cut


def _bootstrap_cuts(
    y_true: ArrayLike,
    score: ArrayLike,
    *,
    target_prior: float | None = 0.5,
    groups: ArrayLike | None = None,
    n_boot: int = 200,
    seed: int = 0,
    max_fnr: float | None = None,
    max_threshold: float | None = None,
) -> _Bootstrap:
    """The work both bootstrap rules share; its keywords are theirs (``options``): ``target_prior`` (None =
    the data's prior), ``groups`` (rows resampled together), ``n_boot`` replicates, ``seed``, and the
    ``max_fnr`` / ``max_threshold`` limits on the feasible cuts."""
    y = check_labels(y_true, "y_true")
    p = check_probabilities(score, "score")
    check_same_length([("y_true", y), ("score", p)])
    codes = check_groups(groups, len(y))
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int (e.g. 200); got {n_boot!r}.")
    weights = prior_weights(y, target_prior)
    sweep = weighted_mcc_sweep(y, p, weights)
    n_feasible = int(np.flatnonzero(sweep.feasible(max_fnr=max_fnr, max_threshold=max_threshold))[-1]) + 1
    t_hat, _ = sweep.best(max_fnr=max_fnr, max_threshold=max_threshold)
    multiplicity = _bootstrap_multiplicities(len(y), codes, int(n_boot), np.random.default_rng(seed))
    boot = _bootstrap_argmax_logits(y, p, sweep, n_feasible, target_prior, multiplicity)
    return _Bootstrap(y, p, weights, sweep, float(sweep.threshold[n_feasible - 1]), float(t_hat), boot)


def _result(b: _Bootstrap, t: float) -> tuple[float, float]:
    """(t capped at the largest feasible cut, the weighted MCC there)."""
    t = min(t, b.max_cut)
    pred = b.p > t
    tp, fp = np.sum(b.weights * pred * b.y), np.sum(b.weights * pred * (1 - b.y))
    fn, tn = np.sum(b.weights * ~pred * b.y), np.sum(b.weights * ~pred * (1 - b.y))
    return t, float(mcc_from_counts(tp, fp, tn, fn))


def shrunk_mcc_threshold(y_true: ArrayLike, score: ArrayLike, **options: Any) -> tuple[float, float]:
    """(threshold, weighted MCC there): the prior-weighted MCC argmax shrunk towards the prior-neutral cut.
    ``options``: the keywords of :func:`_bootstrap_cuts`.

    ``score`` must be calibrated probabilities; work is on u = logit(score) (clipped to 1e-12 from 0 and 1).

    1. u_hat: logit of the best cut of :func:`weighted_mcc_sweep` with :func:`prior_weights` (``"argmax"``).
    2. u_0, the prior-neutral cut: where a logistic fit of y on u with the same weights crosses 0.5; i.e.
       the Bayes (balanced-accuracy) cut at prior ``target_prior``. It is 0 (p = 0.5) for a calibrator with
       a free intercept fitted with those weights, and corrects temperature scaling, which has none.
       Falls back to 0 if the fit fails (no signal).
    3. v: variance of u_hat over ``n_boot`` seeded bootstrap replicates (whole ``groups`` resampled when
       given, else rows), each reweighted to ``target_prior`` and swept on the same cuts.
    4. u* = u_0 + lam (u_hat - u_0), lam = max(0, 1 - v / (u_hat - u_0)^2) (positive-part James-Stein): the
       argmax is kept only as far as its distance from u_0 stands out from its own bootstrap noise.
       lam = 0 when u_hat = u_0 or fewer than 2 replicates hold both classes; lam = 1 returns the argmax cut.

    With many calibration images v -> 0 and the rule is the MCC argmax; on ~100 images it stays near u_0.
    ``max_fnr`` and ``max_threshold`` restrict every argmax to the feasible cuts and cap the result at the
    largest one. Deterministic for a given ``seed``; ``target_prior=None`` keeps the data's prior.
    """
    b = _bootstrap_cuts(y_true, score, **options)
    u = logit(np.clip(b.p, _LOGIT_EPS, 1 - _LOGIT_EPS))
    u_hat, u_0 = float(logit(np.clip(b.t_hat, _LOGIT_EPS, 1 - _LOGIT_EPS))), _neutral_logit(u, b.y, b.weights)
    gap2 = (u_hat - u_0) ** 2
    lam = max(0.0, 1.0 - float(np.var(b.boot)) / gap2) if len(b.boot) >= 2 and gap2 > 0 else 0.0
    return _result(b, b.t_hat if lam == 1.0 else float(expit(u_0 + lam * (u_hat - u_0))))


def bagged_mcc_threshold(y_true: ArrayLike, score: ArrayLike, **options: Any) -> tuple[float, float]:
    """(threshold, weighted MCC there): the median of the bootstrap replicates' MCC-argmax cuts (bagging).
    ``options``: the keywords of :func:`_bootstrap_cuts`.

    ``score`` must be calibrated probabilities. Each of ``n_boot`` seeded bootstrap replicates (whole
    ``groups`` resampled when given, else rows) is reweighted to ``target_prior`` and swept on the full set's
    cuts; its best feasible cut is taken, and the threshold is the median of those cuts on the logit scale
    (the exact argmax when no replicate holds both classes). The argmax of an MCC curve measured on ~100
    images jumps between nearby bumps of the curve; the median over resamples keeps where it lands most
    often, so it tracks the argmax where the best cut is clearly away from 0.5 and varies less where it is
    not. ``max_fnr`` and ``max_threshold`` restrict every argmax to the feasible cuts and cap the result.
    Deterministic for a given ``seed``; ``target_prior=None`` keeps the data's prior.
    """
    b = _bootstrap_cuts(y_true, score, **options)
    return _result(b, float(expit(np.median(b.boot))) if len(b.boot) else b.t_hat)


def select_threshold(
    y_true: ArrayLike,
    score: ArrayLike,
    *,
    rule: str = "shrink",
    target_prior: float | None = 0.5,
    groups: ArrayLike | None = None,
    n_boot: int = 200,
    seed: int = 0,
    max_fnr: float | None = None,
    max_threshold: float | None = None,
) -> tuple[float, float]:
    """(threshold, weighted MCC) by ``rule``: ``"bagged"`` (:func:`bagged_mcc_threshold`), ``"shrink"``
    (:func:`shrunk_mcc_threshold`) or ``"argmax"``.

    ``"argmax"`` is :meth:`SweepResult.best` of :func:`weighted_mcc_sweep` under :func:`prior_weights`
    (``target_prior=None``: the plain :func:`mcc_sweep` argmax); ``groups``, ``n_boot`` and ``seed`` are
    only used by the bootstrap rules (``groups`` is still length-checked).
    """
    check_threshold_rule(rule)
    if rule in ("shrink", "bagged"):
        fit = shrunk_mcc_threshold if rule == "shrink" else bagged_mcc_threshold
        return fit(
            y_true,
            score,
            target_prior=target_prior,
            groups=groups,
            n_boot=n_boot,
            seed=seed,
            max_fnr=max_fnr,
            max_threshold=max_threshold,
        )
    y = check_labels(y_true, "y_true")
    check_groups(groups, len(y))
    if target_prior is None:
        sweep = mcc_sweep(y, score)
    else:
        sweep = weighted_mcc_sweep(y, score, prior_weights(y, target_prior))
    return sweep.best(max_fnr=max_fnr, max_threshold=max_threshold)
