"""split stage: stratified group split into train / val_select / val_calib / val_test.

With ``data.sources`` the split stratifies by source as well as label (each source's positives and
negatives are split in the fractions) and ``metrics.json`` counts each source's images per split.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from roadwork.config import RoadworkConfig
from roadwork.data.split import SPLITS, check_split, file_hash, group_stratified_split
from roadwork.stages.common import stage_dir, tracked, write_csv, write_json

GROUPS = Path("outputs/dedupe/groups.csv")
KNOWN_DUPLICATES = Path("outputs/ingest/known_duplicates.csv")
SPLITS_CSV = Path("outputs/split/splits.csv")
DROPPED_COLUMNS = ["keep", "drop_reason", "phash"]


def pairs_across_splits(splits: pd.DataFrame, pairs: pd.DataFrame) -> int:
    """How many pairs have their two members in different splits (both members present)."""
    where = splits.set_index("path")["split"]
    present = pairs[pairs["path_a"].isin(where.index) & pairs["path_b"].isin(where.index)]
    return int((where.loc[present["path_a"]].to_numpy() != where.loc[present["path_b"]].to_numpy()).sum())


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    out = stage_dir("split")
    groups = pd.read_csv(GROUPS, dtype={"path": str, "sha256": str}, keep_default_na=False)
    kept = groups[groups["keep"].astype(str) == "True"].drop(columns=DROPPED_COLUMNS)
    with tracked("split", cfg, ("split",), overrides) as run:
        kept = kept.assign(
            split=group_stratified_split(
                kept["label"].to_numpy(),
                kept["group"].to_numpy(),
                asdict(cfg.split.fractions),
                cfg.split.seed,
                strata=kept["source"].to_numpy() if cfg.data.sources else None,
            )
        )
        check_split(kept)
        write_csv(kept.sort_values("path"), SPLITS_CSV)
        content_hash = file_hash(SPLITS_CSV)
        counts = kept.groupby(["split", "label"]).size()
        metrics: dict[str, float] = {"n_images": len(kept), "n_groups": int(kept["group"].nunique())}
        for name in SPLITS:
            metrics[f"{name}_n"] = int(counts.loc[name].sum())
            metrics[f"{name}_positive_rate"] = float(counts.loc[name].get(1, 0) / counts.loc[name].sum())
        if cfg.data.sources:
            by_source = kept.groupby(["source", "split"]).size()
            metrics.update({f"{name}_source_{src}_n": int(n) for (src, name), n in by_source.items()})
        metrics["known_pairs_across_splits"] = pairs_across_splits(
            kept, pd.read_csv(KNOWN_DUPLICATES, dtype=str)
        )
        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.set_tags({"roadwork.splits_sha256": content_hash})
        run.log_artifact(out / "metrics.json")
    print(
        f"split: {len(kept)} images -> "
        + ", ".join(f"{s} {metrics[f'{s}_n']}" for s in SPLITS)
        + f"; splits.csv sha256 {content_hash[:12]}"
    )
