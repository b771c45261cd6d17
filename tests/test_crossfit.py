"""Cross-fitting on the train split: group folds, and each row scored by the head fitted without its fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.feature_sets import feature_set
from roadwork.models.head import HeadModel
from roadwork.train.crossfit import crossfit_margins, group_folds
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureSet


def test_group_folds_keep_groups_whole_and_balanced() -> None:
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), rng.choice([1, 2, 3, 6], size=300))
    folds = group_folds(groups, 5, seed=2)
    assert set(folds.tolist()) == set(range(5))
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 6
    assert (group_folds(groups, 5, seed=2) == folds).all()
    with pytest.raises(ValueError, match="cannot fill"):
        group_folds(np.array([0, 0, 1]), 3, seed=0)


def test_each_row_is_scored_by_the_head_fitted_without_its_fold() -> None:
    train = feature_set("t", 40, 3, seed=0)
    val_select = feature_set("v", 10, 1, seed=1)
    folds = group_folds(np.array([int(i[1:]) // 2 for i in train.ids]), 4, seed=0)
    weights = np.arange(len(train.ids), dtype=np.float64)
    calls: list[set[str]] = []

    def fit(part: FeatureSet, val: FeatureSet, part_weights: np.ndarray) -> HeadModel:
        assert val is val_select and np.array_equal(part_weights, weights[np.isin(train.ids, part.ids)])
        calls.append(set(part.ids.tolist()))
        torch.manual_seed(0)
        model = HeadModel.from_config(HeadTrainConfig(dropout=0.0), feature_dim=4, num_views=1)
        with torch.no_grad():  # margin = feature sum + the call's index: which fold model scored a row
            model.classifier[-1].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
            model.classifier[-1].bias.copy_(torch.tensor([0.0, float(len(calls) - 1)]))
        return model.eval()

    margins = crossfit_margins(train, val_select, folds, weights, fit)
    assert len(calls) == 4 and margins.dtype == np.float32
    for fold, trained in enumerate(calls):  # folds in order; the model never trained on its fold's rows
        held = folds == fold
        assert trained == set(train.ids[~held].tolist()) and not trained & set(train.ids[held].tolist())
    expected = train.features.sum(axis=(1, 2)) + folds  # the brute-force oracle
    np.testing.assert_allclose(margins, expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="each of the 120 train rows a fold"):
        crossfit_margins(train, val_select, folds[:-1], weights, fit)
