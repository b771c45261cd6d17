"""The one split generator and the split contract.

``group_stratified_split`` assigns whole dedupe groups to train / val_select / val_calib / val_test so that
each split's share of every class matches the requested fractions as closely as whole groups allow. No
group ever crosses splits, so near-duplicates cannot leak from training into validation.

The *contract* is code: :func:`read_split` is how a stage reads rows of a split, and it refuses a split the
stage may not read (DESIGN.md's table), naming both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val_select", "val_calib", "val_test")

# Which splits each stage may read. Stages absent here (ingest, dedupe, split) read none.
STAGE_SPLITS: dict[str, frozenset[str]] = {
    "adapt": frozenset({"train"}),
    "embed": frozenset(SPLITS),  # features only: embedding is label-free
    "train": frozenset({"train", "val_select"}),
    # train: the cross-fitted train margins the threshold is chosen on (calibrate.threshold_data, issue 13)
    "calibrate": frozenset({"train", "val_calib"}),
    "evaluate": frozenset({"train", "val_select", "val_test"}),  # train + val_select: the probe baseline only
    # train + val_select: the probe stand-in for a model the Hugging Face form cannot hold
    "bundle": frozenset({"train", "val_select", "val_calib"}),
    "promote": frozenset({"val_test"}),
    "submission": frozenset({"val_calib"}),  # export-submission: images only, to check the export
}


class SplitAccessError(PermissionError):
    """A stage asked for a split the contract does not let it read."""


def group_stratified_split(
    labels: np.ndarray,
    groups: np.ndarray,
    fractions: Mapping[str, float],
    seed: int,
    strata: np.ndarray | None = None,
) -> np.ndarray:
    """Assign each item to a split; items of one group always share a split.

    Groups are visited largest first (ties in a seeded random order) and each goes to the split whose
    class target is least filled, relative to its size. A class is a label, or with ``strata`` (e.g. each
    item's source) a (stratum, label) pair, so every stratum is split in the fractions too. A group's class
    is its most common one (ties go to the later class: the positive label, without strata). Returns an
    array of split names aligned with ``labels``.

    Raises ValueError when inputs disagree in length, labels are not 0/1, or fractions are not the four
    split names with positive values summing to 1.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.ndim != 1 or labels.shape != groups.shape:
        raise ValueError(
            f"labels and groups must be 1-D of equal length, got {labels.shape} and {groups.shape}"
        )
    if strata is not None and np.shape(strata) != labels.shape:
        raise ValueError(f"strata must match labels' shape {labels.shape}, got {np.shape(strata)}")
    if labels.size == 0:
        raise ValueError("labels is empty: nothing to split")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, found {sorted(set(labels.tolist()) - {0, 1})[:5]}")
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must name exactly {SPLITS}, got {sorted(fractions)}")
    shares = np.array([float(fractions[s]) for s in SPLITS])
    if (shares <= 0).any() or abs(shares.sum() - 1) > 1e-9:
        raise ValueError(f"fractions must be positive and sum to 1, got {dict(fractions)}")

    unique_groups, inverse = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inverse)
    # class of each item: its label, or (stratum, label) numbered stratum-major
    stratum = np.zeros(labels.size, dtype=np.int64)
    if strata is not None:
        stratum = np.unique(np.asarray(strata).astype(str), return_inverse=True)[1].reshape(-1)
    item_class = stratum * 2 + labels.astype(np.int64)
    n_classes = 2 * (int(stratum.max()) + 1)
    members = np.zeros((unique_groups.size, n_classes), dtype=np.int64)  # [group, class]
    np.add.at(members, (inverse, item_class), 1)
    group_class = n_classes - 1 - np.argmax(members[:, ::-1], axis=1)  # most common, ties to the later

    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(unique_groups.size)
    order = shuffled[np.argsort(-sizes[shuffled], kind="stable")]

    class_totals = members.sum(axis=0).astype(float)
    targets = shares[:, None] * class_totals[None, :]  # [split, class]
    filled = np.zeros_like(targets)
    assignment = np.empty(unique_groups.size, dtype=np.int64)
    for g in order:
        c = group_class[g]
        # Fill ratio after adding this group; the split that stays least filled takes it.
        ratio = (filled[:, c] + sizes[g]) / np.maximum(targets[:, c], 1e-12)
        chosen = int(np.argmin(ratio))
        assignment[g] = chosen
        filled[chosen] += members[g]
    return np.asarray(SPLITS, dtype=object)[assignment[inverse]]


def check_split(frame: pd.DataFrame) -> None:
    """Raise ValueError when a group crosses splits or a split lacks a class (or is missing)."""
    crossing = frame.groupby("group")["split"].nunique()
    crossing = crossing[crossing > 1]
    if len(crossing):
        raise ValueError(f"{len(crossing)} group(s) cross splits, e.g. group {crossing.index[0]!r}")
    for name in SPLITS:
        present = set(frame.loc[frame["split"] == name, "label"].tolist())
        if present != {0, 1}:
            raise ValueError(
                f"split '{name}' holds labels {sorted(present)}; every split needs both classes — "
                "add data, or change split.fractions / split.seed"
            )


def achieved_fractions(split: np.ndarray) -> dict[str, float]:
    """Each split's share of all items."""
    split = np.asarray(split)
    return {name: float((split == name).mean()) for name in SPLITS}


def fraction_miss(
    frame: pd.DataFrame,
    fractions: Mapping[str, float],
    tolerance: float,
    describe: Callable[[object], str],
) -> str | None:
    """Why the split misses its fractions, or None when every split's share of the images lies within
    ``tolerance`` of its fraction.

    Whole groups can only approximate the fractions; missing them by more than the tolerance means some
    group is too large to place. The message names the largest group of the most over-filled split
    (``describe(group)``), the split and every split's achieved and target share.
    """
    achieved = achieved_fractions(frame["split"].to_numpy())
    deviation = {name: achieved[name] - float(fractions[name]) for name in SPLITS}
    if max(abs(d) for d in deviation.values()) <= tolerance:
        return None
    fullest = max(SPLITS, key=lambda name: deviation[name])
    sizes = frame.loc[frame["split"] == fullest, "group"].value_counts(sort=False)
    largest = sizes.index[int(np.argmax(sizes.to_numpy()))]
    shares = ", ".join(f"{name} {achieved[name]:.1%} (target {fractions[name]:.0%})" for name in SPLITS)
    return (
        f"whole groups miss the fractions by more than split.group_tolerance = {tolerance:g} ({shares}); "
        f"the largest group of the over-filled split '{fullest}' is {describe(largest)}, too large to place "
        "without breaking them. Give such groups a finer key (e.g. a sequence instead of a drive, or "
        "split.time_window_s), leave them out of the data, or raise split.group_tolerance"
    )


def read_split(splits_csv: Path, stage: str, splits: Iterable[str]) -> pd.DataFrame:
    """Rows of ``splits`` from ``splits_csv``, when ``stage`` may read them (else SplitAccessError)."""
    wanted = list(splits)
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; the splits are {SPLITS}")
    allowed = STAGE_SPLITS.get(stage, frozenset())
    forbidden = [s for s in wanted if s not in allowed]
    if forbidden:
        raise SplitAccessError(
            f"stage '{stage}' may not read split '{forbidden[0]}' "
            f"(it may read: {', '.join(sorted(allowed)) or 'none'}); see the split contract in DESIGN.md"
        )
    frame = pd.read_csv(splits_csv, dtype={"path": str, "sha256": str, "split": str})
    return frame[frame["split"].isin(wanted)].reset_index(drop=True)
