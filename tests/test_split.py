from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from roadwork.data.split import (
    SPLITS,
    STAGE_SPLITS,
    SplitAccessError,
    check_split,
    group_stratified_split,
    read_split,
)

FRACTIONS = {"train": 0.6, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1}


def corpus(seed: int = 0, n_groups: int = 700) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 1, 1, 2, 3, 5], size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    group_label = (rng.random(n_groups) < 0.8).astype(int)  # 80% positive, like the NATIX set
    return group_label[groups], groups


def test_groups_never_cross_splits() -> None:
    labels, groups = corpus()
    split = group_stratified_split(labels, groups, FRACTIONS, seed=1)
    frame = pd.DataFrame({"group": groups, "split": split, "label": labels})
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    check_split(frame)


def test_each_class_is_stratified_within_one_group_size() -> None:
    labels, groups = corpus()
    split = group_stratified_split(labels, groups, FRACTIONS, seed=1)
    largest = np.bincount(groups).max()
    for cls in (0, 1):
        total = (labels == cls).sum()
        for name, share in FRACTIONS.items():
            got = ((split == name) & (labels == cls)).sum()
            assert abs(got - share * total) <= largest, (name, cls, got, share * total)


def test_deterministic_and_seed_sensitive() -> None:
    labels, groups = corpus()
    a = group_stratified_split(labels, groups, FRACTIONS, seed=7)
    b = group_stratified_split(labels, groups, FRACTIONS, seed=7)
    c = group_stratified_split(labels, groups, FRACTIONS, seed=8)
    assert (a == b).all()
    assert (a != c).any()


def test_input_validation() -> None:
    labels, groups = corpus()
    with pytest.raises(ValueError, match="equal length"):
        group_stratified_split(labels, groups[:-1], FRACTIONS, 0)
    with pytest.raises(ValueError, match="must be 0 or 1"):
        group_stratified_split(labels + 1, groups, FRACTIONS, 0)
    with pytest.raises(ValueError, match="must name exactly"):
        group_stratified_split(labels, groups, {"train": 1.0}, 0)
    with pytest.raises(ValueError, match="sum to 1"):
        group_stratified_split(labels, groups, {**FRACTIONS, "train": 0.5}, 0)


def test_check_split_catches_crossing_group_and_missing_class() -> None:
    frame = pd.DataFrame(
        {
            "group": [0, 0, 1, 2, 3, 4, 5, 6, 7],
            "label": [1, 1, 0, 1, 0, 1, 0, 1, 0],
            "split": [
                "train",
                "val_test",
                "train",
                "val_select",
                "val_select",
                "val_calib",
                "val_calib",
                "val_test",
                "val_test",
            ],
        }
    )
    with pytest.raises(ValueError, match="cross splits"):
        check_split(frame)
    frame.loc[1, "split"] = "train"
    frame.loc[8, "label"] = 1
    frame.loc[8, "split"] = "val_test"
    frame.loc[7, "label"] = 1
    with pytest.raises(ValueError, match="split 'val_test' holds labels \\[1\\]"):
        check_split(frame)


def test_contract_allows_and_refuses(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "path": [f"{i}.jpg" for i in range(8)],
            "sha256": ["x"] * 8,
            "label": [0, 1] * 4,
            "group": range(8),
            "split": [s for s in SPLITS for _ in (0, 1)],
        }
    )
    csv = tmp_path / "splits.csv"
    frame.to_csv(csv, index=False)
    rows = read_split(csv, "train", ["train", "val_select"])
    assert set(rows["split"]) == {"train", "val_select"} and len(rows) == 4
    with pytest.raises(SplitAccessError, match="stage 'train' may not read split 'val_test'"):
        read_split(csv, "train", ["val_test"])
    with pytest.raises(SplitAccessError, match="stage 'calibrate' may not read split 'val_select'"):
        read_split(csv, "calibrate", ["val_select"])
    with pytest.raises(SplitAccessError, match="stage 'dedupe' may not read"):
        read_split(csv, "dedupe", ["train"])
    with pytest.raises(ValueError, match="unknown split"):
        read_split(csv, "embed", ["test"])


def test_only_evaluate_and_promote_may_read_val_test() -> None:
    assert {s for s, allowed in STAGE_SPLITS.items() if "val_test" in allowed} == {
        "evaluate",
        "promote",
        "embed",
    }
