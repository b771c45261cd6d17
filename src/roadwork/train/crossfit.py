"""Cross-fitting on the train split: every row scored by a head that never saw its dedupe group.

Two users: the hard-negative loop (:mod:`roadwork.train.hard_negatives`, train's negatives scored out of
fold) and the decision policy: ``train`` writes the cross-fitted margin of every train render
(``train.crossfit_folds``) and ``calibrate`` chooses its threshold on them (``calibrate.threshold_data:
train_crossfit``), about four times val_calib's images, so the cut does not follow one small set's noise
(``bench/threshold_policy.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray


def group_folds(groups: np.ndarray, k: int, seed: int, param: str = "the number of folds") -> np.ndarray:
    """Fold index (0..k-1) of each item; items sharing a group share a fold.

    Groups go largest first (ties in a seeded random order), each to the fold holding the fewest items so
    far (the lowest index on ties), so folds differ in size by at most the largest group. Fewer groups
    than ``k`` raise ValueError telling the caller to lower ``param`` (the params key of ``k``).
    """
    groups = np.asarray(groups)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    unique, inverse = np.unique(groups, return_inverse=True)
    if unique.size < k:
        raise ValueError(f"{unique.size} groups cannot fill {k} folds; lower {param}")
    sizes = np.bincount(inverse.reshape(-1))
    shuffled = np.random.default_rng(seed).permutation(unique.size)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]
    filled = np.zeros(k, dtype=np.int64)
    fold_of_group = np.empty(unique.size, dtype=np.int64)
    for g in order:
        fold = int(np.argmin(filled))
        fold_of_group[g] = fold
        filled[fold] += sizes[g]
    return fold_of_group[inverse.reshape(-1)]


def crossfit_margins(
    train: Any, val_select: Any, folds: np.ndarray, weights: np.ndarray, fit: Callable[..., Any]
) -> NDArray[np.float32]:
    """Each row's margin under the head fitted on the other folds.

    ``train`` / ``val_select`` are :class:`~roadwork.train.head.FeatureSet`; ``folds`` gives each of train's
    rows its fold (:func:`group_folds`); ``weights`` its sampling weight; ``fit(train_part, val_select,
    sample_weights)`` returns a fitted :class:`~roadwork.train.head.HeadModel` (val_select chooses each fold
    model's epoch, as in the real fit). One fit per fold; returns float32 margins aligned with train's rows.
    """
    from roadwork.models.head import predict_margins
    from roadwork.train.head_data import FeatureSet

    folds = np.asarray(folds)
    if folds.shape != (len(train.ids),):
        raise ValueError(f"folds must give each of the {len(train.ids)} train rows a fold; got {folds.shape}")
    margins = np.empty(len(train.ids), dtype=np.float32)
    for fold in np.unique(folds):
        held = folds == fold
        part = FeatureSet(train.features[~held], train.labels[~held], train.ids[~held])
        margins[held] = predict_margins(fit(part, val_select, weights[~held]), train.features[held])
    return margins
