"""Small labelled FeatureSets for the cross-fitting and hard-negative tests."""

from __future__ import annotations

import numpy as np

from roadwork.train.head_data import FeatureSet


def feature_set(prefix: str, n_images: int, copies: int, seed: int) -> FeatureSet:
    """``n_images`` images x ``copies`` rows of 4 features (one view) shifted by the label; ids
    ``<prefix><index>``; the first image is a negative and the second a positive."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, 2, n_images), copies)
    labels[:copies], labels[copies : 2 * copies] = 0, 1
    features = rng.normal(size=(n_images * copies, 1, 4)).astype(np.float32) + labels[:, None, None]
    ids = np.repeat([f"{prefix}{i:03d}" for i in range(n_images)], copies)
    return FeatureSet(features, labels, ids)
