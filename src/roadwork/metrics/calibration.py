"""Probabilistic and calibration metrics of p(roadwork): Brier, log loss, ECE/MCE/ACE, smECE, reliability.

All functions score the probability of class 1 (roadwork), not the top-label confidence: a reliability bin
compares the mean predicted p(roadwork) with the observed fraction of roadwork images in the bin.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from roadwork.validation import check_labels, check_n_bins, check_probabilities, check_same_length


def _check(y_true: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = check_labels(y_true, "y_true")
    prob = check_probabilities(p, "p")
    check_same_length([("y_true", y), ("p", prob)])
    return y, prob


def brier(y_true: ArrayLike, p: ArrayLike) -> float:
    """Brier score mean((p - y)^2) in [0, 1], lower is better (``sklearn.metrics.brier_score_loss``)."""
    y, prob = _check(y_true, p)
    return float(np.mean((prob - y) ** 2))


def nll(y_true: ArrayLike, p: ArrayLike, *, eps: float | None = None) -> float:
    """Mean negative log-likelihood (log loss, natural log) of 0/1 labels under p(roadwork).

    ``p`` is clipped to [eps, 1 - eps] so that confident mistakes cost a large finite amount; ``eps`` defaults
    to float64 machine epsilon, which is what ``sklearn.metrics.log_loss`` uses for float64 input.
    """
    y, prob = _check(y_true, p)
    e = float(np.finfo(np.float64).eps) if eps is None else float(eps)
    if not 0.0 < e < 0.5:
        raise ValueError(f"eps must be in (0, 0.5); got {eps}.")
    prob = np.clip(prob, e, 1.0 - e)
    return float(-np.mean(y * np.log(prob) + (1 - y) * np.log1p(-prob)))


class ReliabilityCurve(NamedTuple):
    """Per-bin reliability statistics of p(roadwork) (one entry per bin, in increasing p).

    ``centers``: bin centre (midpoint of the bin's edges; for equal-mass bins, of its lowest and highest p).
    ``mean_confidence``: mean predicted p(roadwork) in the bin. ``accuracy``: observed fraction of roadwork
    (label 1) in the bin. ``counts``: samples in the bin. Empty equal-width bins have count 0 and nan means.
    """

    centers: NDArray[np.float64]
    mean_confidence: NDArray[np.float64]
    accuracy: NDArray[np.float64]
    counts: NDArray[np.int64]


def reliability_curve(
    y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15, strategy: Literal["uniform", "quantile"] = "uniform"
) -> ReliabilityCurve:
    """Bin p(roadwork) and compare mean prediction with observed frequency in each bin.

    ``strategy="uniform"``: ``n_bins`` equal-width bins [i/n, (i+1)/n), the last one closed at 1.
    ``strategy="quantile"``: equal-mass bins, the sorted p split into min(n_bins, N) consecutive chunks whose
    sizes differ by at most one (ties may straddle two chunks; the order among ties is the input order).
    """
    y, prob = _check(y_true, p)
    n = check_n_bins(n_bins)
    if strategy == "uniform":
        idx = np.minimum((prob * n).astype(np.int64), n - 1)
        counts = np.bincount(idx, minlength=n)
        sum_p = np.bincount(idx, weights=prob, minlength=n)
        sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = np.where(counts > 0, sum_p / counts, np.nan)
            frac_y = np.where(counts > 0, sum_y / counts, np.nan)
        centers = (np.arange(n) + 0.5) / n
        return ReliabilityCurve(centers, mean_p, frac_y, counts.astype(np.int64))
    if strategy == "quantile":
        order = np.argsort(prob, kind="stable")
        chunks = np.array_split(order, min(n, len(prob)))
        counts = np.array([len(c) for c in chunks], dtype=np.int64)
        mean_p = np.array([prob[c].mean() for c in chunks])
        frac_y = np.array([y[c].mean() for c in chunks])
        centers = np.array([(prob[c[0]] + prob[c[-1]]) / 2 for c in chunks])
        return ReliabilityCurve(centers, mean_p, frac_y, counts)
    raise ValueError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}.")


def _weighted_gap(curve: ReliabilityCurve) -> float:
    filled = curve.counts > 0
    gaps = np.abs(curve.accuracy[filled] - curve.mean_confidence[filled])
    return float(np.sum(curve.counts[filled] * gaps) / np.sum(curve.counts))


def ece(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15) -> float:
    """Expected calibration error of p(roadwork), equal-width bins: sum_b (n_b/N) |frac_pos_b - mean_p_b|."""
    return _weighted_gap(reliability_curve(y_true, p, n_bins=n_bins, strategy="uniform"))


def mce(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15) -> float:
    """Maximum calibration error: the largest |frac_pos_b - mean_p_b| over non-empty equal-width bins."""
    curve = reliability_curve(y_true, p, n_bins=n_bins, strategy="uniform")
    filled = curve.counts > 0
    return float(np.max(np.abs(curve.accuracy[filled] - curve.mean_confidence[filled])))


def ace(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15) -> float:
    """Adaptive calibration error (Nixon et al. 2019) of p(roadwork): the ECE formula on equal-mass bins.

    Bins hold N / n_bins samples each (+-1), so the count-weighted mean used here and Nixon et al.'s plain
    mean over bins coincide up to that rounding.
    """
    return _weighted_gap(reliability_curve(y_true, p, n_bins=n_bins, strategy="quantile"))


def _reflected_gaussian(n_grid: int, sigma: float) -> NDArray[np.float64]:
    """K[i, j] on the grid j / (n_grid - 1): Gaussian of width sigma reflected at 0 and 1 (columns sum to 1).

    On a uniform grid K depends only on i - j and i + j, so the exponentials are evaluated on 2 * n_grid
    offsets and gathered, instead of on n_grid^2 pairs.
    """
    h = 1.0 / (n_grid - 1)
    offsets = np.arange(-(n_grid - 1), 2 * n_grid - 1) * h
    images = sum(np.exp(-0.5 * ((offsets - 2 * m) / sigma) ** 2) for m in range(-3, 4))
    i = np.arange(n_grid)
    k = images[(i[:, None] - i[None, :]) + n_grid - 1] + images[(i[:, None] + i[None, :]) + n_grid - 1]
    return k / (sigma * np.sqrt(2 * np.pi))


def smooth_ece(
    y_true: ArrayLike, p: ArrayLike, *, sigma: float | None = None, n_grid: int = 401, tol: float = 1e-5
) -> float:
    """Smooth ECE of p(roadwork) (Błasiok & Nakkiran 2023, "Smooth ECE: Principled Reliability Diagrams").

    Definition used: with residuals r_i = y_i - p_i and the Gaussian kernel of width sigma reflected at the
    ends of [0, 1] (K_sigma(t, s)), smECE_sigma = ∫_0^1 |(1/N) sum_i r_i K_sigma(t, p_i)| dt. By default sigma
    is the paper's fixed point sigma* with smECE_{sigma*} = sigma* (smECE_sigma decreases in sigma, so it is
    unique), found by bisection to ``tol``; pass ``sigma`` to use a fixed bandwidth instead.

    Numerics: residual mass is spread linearly onto ``n_grid`` equally spaced points and the integral is a
    trapezoid rule on that grid, so values below about 1 / n_grid are resolution-limited; if the fixed point
    lies below the grid spacing the value at that spacing is returned. A point mass of residual r gives |r|.
    """
    y, prob = _check(y_true, p)
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 11:
        raise ValueError(f"n_grid must be an int >= 11; got {n_grid!r}.")
    n_grid = int(n_grid)
    h = 1.0 / (n_grid - 1)
    pos = prob / h
    lo = np.minimum(np.floor(pos).astype(np.int64), n_grid - 2)
    frac = pos - lo
    resid = (y - prob) / len(prob)
    mass = np.bincount(lo, weights=resid * (1 - frac), minlength=n_grid) + np.bincount(
        lo + 1, weights=resid * frac, minlength=n_grid
    )
    weights = np.full(n_grid, h)
    weights[[0, -1]] = h / 2

    def at(s: float) -> float:
        return float(np.sum(weights * np.abs(_reflected_gaussian(n_grid, s) @ mass)))

    if sigma is not None:
        if not 0.0 < float(sigma) <= 10.0:
            raise ValueError(f"sigma must be in (0, 10]; got {sigma}.")
        return at(float(sigma))
    low, high = h, 1.0
    if at(low) <= low:
        return at(low)
    if at(high) >= high:
        return at(high)
    while high - low > tol:
        mid = 0.5 * (low + high)
        if at(mid) > mid:
            low = mid
        else:
            high = mid
    return at(0.5 * (low + high))
