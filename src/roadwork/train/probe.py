"""The plain baseline every evaluation reports: a standardised logistic-regression probe on cached features.

scikit-learn only (no torch, no Lightning): ``make_pipeline(StandardScaler(), LogisticRegression(C=C,
max_iter=2000))`` fitted on train features for each C of a small grid, C chosen on val_select. The pipeline's
lift over this probe says what the head, adaptation and policy add beyond a linear read-out of the same
features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from roadwork.metrics import mcc
from roadwork.validation import check_real

DEFAULT_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)


def _features(x: ArrayLike, name: str) -> NDArray[np.float64]:
    """[N, D] float64 features; a 3-D [N, V, D] multi-view array gives its view 0 (the global view)."""
    arr = check_real(x, name)
    if arr.ndim == 3:
        arr = arr[:, 0, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must be features of shape [N, D] (or [N, V, D], of which view 0 is used) with "
            f"N, D >= 1; got shape {np.shape(x)}."
        )
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains {int(np.count_nonzero(~np.isfinite(out)))} non-finite value(s).")
    return out


def _labels(y: ArrayLike, n: int, name: str, x_name: str) -> NDArray[np.int64]:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one 0/1 label per row); got shape {arr.shape}.")
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} labels but {x_name} has {n} rows.")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise TypeError(f"{name} must hold 0/1 labels; got dtype {arr.dtype}.")
    if np.any((arr != 0) & (arr != 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (1 = roadwork).")
    if len(np.unique(arr)) < 2:
        raise ValueError(f"{name} must contain both labels (0 and 1) to fit and select a probe.")
    return arr.astype(np.int64)


def _check_cs(cs: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(c) for c in cs)
    if not values or not all(math.isfinite(c) and c > 0 for c in values):
        raise ValueError(f"Cs must be a non-empty sequence of finite positive floats; got {tuple(cs)}.")
    return values


@dataclass(frozen=True)
class Probe:
    """A fitted probe: ``pipeline`` (StandardScaler + LogisticRegression), its ``C`` and val_select scores.

    ``select_mcc`` / ``select_log_loss`` are the chosen C's MCC (decision ``proba > 0.5``) and log loss on
    val_select; ``candidates`` maps every C tried to its (select MCC, select log loss).
    """

    pipeline: Pipeline
    C: float
    select_mcc: float
    select_log_loss: float
    candidates: dict[float, tuple[float, float]] = field(default_factory=dict)

    def proba(self, x: ArrayLike) -> NDArray[np.float64]:
        """p(roadwork) per row, ``predict_proba(x)[:, 1]``; x as in :func:`fit_probe` (view 0 of 3-D)."""
        return np.asarray(self.pipeline.predict_proba(_features(x, "x"))[:, 1], dtype=np.float64)

    def margin(self, x: ArrayLike) -> NDArray[np.float64]:
        """The logit ``decision_function(x)`` per row: w . standardise(x) + b (> 0 means roadwork)."""
        return np.asarray(self.pipeline.decision_function(_features(x, "x")), dtype=np.float64)

    def decision(self, x: ArrayLike) -> NDArray[np.int64]:
        """0/1 decisions ``proba(x) > 0.5`` (strict, as the validator's round(p) at 0.5)."""
        return (self.proba(x) > 0.5).astype(np.int64)


def fit_probe(
    x_train: ArrayLike,
    y_train: ArrayLike,
    x_select: ArrayLike,
    y_select: ArrayLike,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
) -> Probe:
    """Fit a standardised logistic regression per C on train; keep the C best on val_select.

    Each candidate is ``make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))``.

    Features are float arrays [N, D]; a 3-D [N, V, D] multi-view cache is reduced to view 0, the global view
    (the probe is the plain baseline: one clean view, no tiles). Features are cast to float64 first (here and
    in :class:`Probe`'s methods), so float32 caches are standardised without float32 rounding. C is chosen
    by the MCC on val_select of the decision ``predict_proba[:, 1] > 0.5``; ties go to the smaller
    val_select log loss, then the smaller C. The solver is scikit-learn's default lbfgs, which is
    deterministic (``random_state=seed`` is passed for completeness; lbfgs does not use it). Raises
    ValueError naming the argument for bad shapes, non-0/1 labels, one-class labels, non-finite features
    or mismatched feature widths.
    """
    xt = _features(x_train, "x_train")
    xs = _features(x_select, "x_select")
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"x_select has {xs.shape[1]} features per row but x_train has {xt.shape[1]}.")
    yt = _labels(y_train, len(xt), "y_train", "x_train")
    ys = _labels(y_select, len(xs), "y_select", "x_select")
    best: tuple[tuple[float, float, float], float, Pipeline] | None = None
    candidates: dict[float, tuple[float, float]] = {}
    for c in _check_cs(Cs):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        pipe.fit(xt, yt)
        p = pipe.predict_proba(xs)[:, 1]
        score = (mcc(ys, (p > 0.5).astype(np.int64)), float(log_loss(ys, p, labels=[0, 1])))
        candidates[c] = score
        key = (-score[0], score[1], c)
        if best is None or key < best[0]:
            best = (key, score[0], pipe)
    assert best is not None  # Cs is non-empty
    (_, loss, chosen), select_mcc, pipeline = best
    return Probe(pipeline, C=chosen, select_mcc=select_mcc, select_log_loss=loss, candidates=candidates)
