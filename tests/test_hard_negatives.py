"""The hard-negative loop: a pure selection, and only the train split ever scored or weighted."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.feature_sets import feature_set
from roadwork.models.head import HeadModel
from roadwork.train.hard_negatives import mine_hard_negatives, select_hard_negatives
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureSet


def test_selection_takes_the_highest_scoring_negatives_ties_by_id() -> None:
    ids = np.array(["e", "d", "c", "b", "a", "p", "q"])
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 2.0, 0.5, 0.5, -1.0, 9.0, 9.0])
    # ceil(0.5 * 5 negatives) = 3: d (2.0), then b and c tied at 0.5; positives never count
    assert select_hard_negatives(ids, labels, scores, 0.5).tolist() == ["b", "c", "d"]
    assert select_hard_negatives(ids, labels, scores, 0.3).tolist() == ["b", "d"]
    assert select_hard_negatives(ids, labels, scores, 1.0).tolist() == ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    for _ in range(20):  # brute force oracle on random draws
        n = int(rng.integers(1, 40))
        ids = np.array([f"{i:03d}" for i in rng.permutation(n)])
        labels, scores = rng.integers(0, 2, n), rng.integers(0, 4, n).astype(float)
        fraction = float(rng.uniform(0.01, 1))
        negatives = sorted(((-s, i) for i, y, s in zip(ids, labels, scores, strict=True) if y == 0))
        expected = sorted(i for _, i in negatives[: math.ceil(fraction * len(negatives))])
        assert select_hard_negatives(ids, labels, scores, fraction).tolist() == expected
    with pytest.raises(ValueError, match="ids repeat"):
        select_hard_negatives(np.array(["a", "a"]), np.zeros(2), np.zeros(2), 0.5)
    with pytest.raises(ValueError, match="top_fraction"):
        select_hard_negatives(np.array(["a"]), np.zeros(1), np.zeros(1), 0.0)


def test_only_train_negatives_are_scored_out_of_fold_and_weighted() -> None:
    """The loop sees val_select only as the fold models' selection set: none of its ids is trained on,
    scored or weighted; each fold model never trained on the images it scores."""
    train = feature_set("t", 60, 3, seed=0)
    val_select = feature_set("v", 20, 1, seed=1)
    groups = np.array([int(i[1:]) // 2 for i in train.ids])  # pairs of images share a group
    calls: list[tuple[set[str], set[str]]] = []
    cfg = HeadTrainConfig(dropout=0.0)

    def fit(part: FeatureSet, val: FeatureSet, weights: np.ndarray) -> HeadModel:
        assert len(weights) == len(part.ids)
        calls.append((set(part.ids.tolist()), set(val.ids.tolist())))
        torch.manual_seed(0)
        model = HeadModel.from_config(cfg, feature_dim=4, num_views=1)
        with torch.no_grad():  # margin = sum of the features: a fixed, fold-independent scorer
            model.classifier[-1].weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
            model.classifier[-1].bias.zero_()
        return model.eval()

    base = np.where(np.char.startswith(train.ids, "t00"), 2.0, 1.0)  # a heavier source for some images
    result = mine_hard_negatives(
        train, val_select, groups, base, fit, rounds=2, top_fraction=0.25, weight=4.0, folds=3, seed=0
    )
    train_ids, val_ids = set(train.ids.tolist()), set(val_select.ids.tolist())
    negatives = set(train.ids[train.labels == 0].tolist())
    report = result.report
    assert len(calls) == 2 * 3
    for trained, val in calls:
        assert trained <= train_ids and not trained & val_ids and val == val_ids
    for round_ in (0, 1):
        scored = report[report["round"] == round_]
        assert set(scored["sha256"]) == negatives  # every train negative exactly once per round
        for fold, rows in scored.groupby("fold"):
            trained = calls[3 * round_ + int(fold)][0]
            assert not set(rows["sha256"]) & trained  # out of fold
    assert not set(report["sha256"]) & val_ids
    # the oracle: mean feature sum per image, top ceil(0.25 * negatives), weights base x 4 there
    sums = pd.Series(train.features.sum(axis=(1, 2)), index=train.ids).groupby(level=0).mean()
    ranked = sums[sorted(negatives)].sort_values(ascending=False, kind="stable")
    expected = set(ranked.index[: math.ceil(0.25 * len(negatives))])
    assert set(result.selected) == expected
    assert np.allclose(result.weights, base * np.where(np.isin(train.ids, list(expected)), 4.0, 1.0))
    assert math.isclose(
        float(report.loc[report["round"] == 0, "oof_margin"].max()), ranked.iloc[0], rel_tol=1e-5
    )


def test_no_rounds_leave_the_source_weights() -> None:
    train = feature_set("t", 10, 1, seed=0)
    result = mine_hard_negatives(
        train,
        train,
        np.arange(10),
        np.ones(10),
        None,
        rounds=0,
        top_fraction=0.1,
        weight=3.0,
        folds=2,
        seed=0,
    )
    assert np.array_equal(result.weights, np.ones(10)) and result.report.empty
