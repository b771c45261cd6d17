"""split stage: stratified group split into train / val_select / val_calib / val_test.

The groups kept whole are dedupe's joined with the groups the user knows (``split.group_by``,
``split.time_window_s``: :mod:`roadwork.data.groups`); splits.csv's ``group`` column holds the joined group,
so evaluate's group bootstrap resamples drives, not frames.
With ``data.sources`` the split stratifies by source as well as label (each source's positives and
negatives are split in the fractions) and ``metrics.json`` counts each source's images per split.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.groups import UserGrouping, check_columns, describe_group, split_groups
from roadwork.data.images import sha256_file
from roadwork.data.split import (
    SPLITS,
    achieved_fractions,
    check_split,
    fraction_miss,
    group_stratified_split,
)
from roadwork.layout import GROUPS_CSV, KNOWN_DUPLICATES_CSV, SPLITS_CSV, stage_dir
from roadwork.stages.common import tracked, write_json

DROPPED_COLUMNS = ["keep", "drop_reason", "phash"]


def pairs_across_splits(splits: pd.DataFrame, pairs: pd.DataFrame) -> int:
    """How many pairs have their two members in different splits (both members present)."""
    where = splits.set_index("path")["split"]
    present = pairs[pairs["path_a"].isin(where.index) & pairs["path_b"].isin(where.index)]
    return int((where.loc[present["path_a"]].to_numpy() != where.loc[present["path_b"]].to_numpy()).sum())


def user_grouping(cfg: RoadworkConfig) -> UserGrouping:
    return UserGrouping(
        group_by=tuple(cfg.split.group_by),
        time_window_s=cfg.split.time_window_s,
        time_column=cfg.split.time_column,
        drive_column=cfg.split.drive_column,
    )


def read_kept(cfg: RoadworkConfig, grouping: UserGrouping) -> pd.DataFrame:
    """dedupe's kept rows; the columns the grouping reads stay text, exactly as written."""
    text_columns = dict.fromkeys(["path", "sha256", *grouping.columns()], str)
    groups = pd.read_csv(GROUPS_CSV, dtype=text_columns, keep_default_na=False)
    data_dir = Path(cfg.data.dir)
    check_columns(
        groups,
        grouping,
        str(GROUPS_CSV),
        f"its columns are ingest's manifest columns plus those of {data_dir / 'metadata.csv'} (keyed by "
        f"path) and of the parquet files under {data_dir}: add the column there, or change the split.* key",
    )
    return groups[groups["keep"].astype(str) == "True"].drop(columns=DROPPED_COLUMNS)


def check_group_sizes(
    kept: pd.DataFrame, fractions: dict[str, float], tolerance: float, grouping: UserGrouping
) -> None:
    """Fail, naming the group, when whole groups miss the fractions by more than ``tolerance`` and the user's
    grouping is in play; with dedupe's groups alone (the default) only warn, as the split did before
    split.group_tolerance existed."""
    miss = fraction_miss(kept, fractions, tolerance, lambda group: describe_group(kept, group, grouping))
    if miss is None:
        return
    if grouping.joins_anything():
        raise ValueError(f"split: {miss}")
    print(f"split: warning: {miss}", file=sys.stderr)


def split_metrics(kept: pd.DataFrame, n_dedupe_groups: int, fractions: dict[str, float]) -> dict[str, float]:
    counts = kept.groupby(["split", "label"]).size()
    sizes = kept["group"].value_counts()
    achieved = achieved_fractions(kept["split"].to_numpy())
    metrics: dict[str, float] = {
        "n_images": len(kept),
        "n_groups": int(kept["group"].nunique()),
        "n_dedupe_groups": n_dedupe_groups,
        "largest_group": int(sizes.max()),
        "largest_group_fraction": float(sizes.max() / len(kept)),
        "max_fraction_miss": max(abs(achieved[name] - fractions[name]) for name in SPLITS),
    }
    for name, share in achieved.items():
        metrics[f"{name}_n"] = int(counts.loc[name].sum())
        metrics[f"{name}_fraction"] = share
        metrics[f"{name}_positive_rate"] = float(counts.loc[name].get(1, 0) / counts.loc[name].sum())
    return metrics


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    out = stage_dir("split")
    grouping = user_grouping(cfg)
    kept = read_kept(cfg, grouping)
    with tracked("split", cfg, ("split",), overrides) as run:
        n_dedupe_groups = int(kept["group"].nunique())
        kept = kept.assign(group=split_groups(kept, grouping))
        fractions = asdict(cfg.split.fractions)
        kept = kept.assign(
            split=group_stratified_split(
                kept["label"].to_numpy(),
                kept["group"].to_numpy(),
                fractions,
                cfg.split.seed,
                strata=kept["source"].to_numpy() if cfg.data.sources else None,
            )
        )
        # Fractions first: a group too large to place is the cause a missing class would only hint at.
        check_group_sizes(kept, fractions, cfg.split.group_tolerance, grouping)
        check_split(kept)
        atomic_write_csv(SPLITS_CSV, kept.sort_values("path"))
        content_hash = sha256_file(SPLITS_CSV)
        metrics = split_metrics(kept, n_dedupe_groups, fractions)
        for column in grouping.columns():
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", column)  # MLflow's metric-name alphabet
            metrics[f"n_empty_{name}"] = int((kept[column].str.strip() == "").sum())
        if cfg.data.sources:
            by_source = kept.groupby(["source", "split"]).size()
            metrics.update({f"{name}_source_{src}_n": int(n) for (src, name), n in by_source.items()})
        metrics["known_pairs_across_splits"] = pairs_across_splits(
            kept, pd.read_csv(KNOWN_DUPLICATES_CSV, dtype=str)
        )
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.set_tags({"roadwork.splits_sha256": content_hash})
        run.log_artifact(out / "metrics.json")
    largest = kept["group"].value_counts().index[0]
    print(
        f"split: {len(kept)} images in {metrics['n_groups']} groups -> "
        + ", ".join(f"{s} {metrics[f'{s}_n']} ({metrics[f'{s}_fraction']:.1%})" for s in SPLITS)
        + f"; largest group {describe_group(kept, largest, grouping)}; splits.csv sha256 {content_hash[:12]}"
    )
