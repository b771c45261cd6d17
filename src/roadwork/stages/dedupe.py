"""dedupe stage: exact and near-duplicate groups over the ingested images, label conflicts reported."""

from __future__ import annotations

import numpy as np
import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.dedupe import compute_phashes, find_duplicate_groups
from roadwork.data.pairs import cosine_pairs
from roadwork.layout import INGEST, stage_dir
from roadwork.stages.common import tracked, write_json
from roadwork.stages.modelling import build_backbone, feature_cache, place_on_device, render_store


def pair_recall(groups: pd.DataFrame, pairs: pd.DataFrame) -> tuple[int, int]:
    """(pairs whose two members share a group, pairs with both members present and kept)."""
    kept = groups[groups["keep"]].set_index("path")["group"]
    present = pairs[pairs["path_a"].isin(kept.index) & pairs["path_b"].isin(kept.index)]
    same = (kept.loc[present["path_a"]].to_numpy() == kept.loc[present["path_b"]].to_numpy()).sum()
    return int(same), len(present)


# float32 on whatever device embed uses: the device changes no decision of a 0.97 cosine check in practice,
# while a bf16 run would, so precision is pinned and the device is not a dedupe param
DEDUPE_PRECISION = "32"


def embedding_edges(cfg: RoadworkConfig, manifest: pd.DataFrame, threshold: float) -> np.ndarray:
    """Index pairs whose global features (clean render, ``dedupe.backbone``) have cosine >= ``threshold``.

    ``dedupe.*`` alone pins the network (seed 0, average pooling, float32), never ``backbone.*``/``embed.*``.
    The features go to the shared feature cache, where ``embed@base`` finds them again when it runs the same
    network the same way.
    """
    from roadwork.data.render import Render
    from roadwork.models.inference import ViewSpec
    from roadwork.train.embed import embed_images

    params = cfg.dedupe
    backbone = build_backbone(
        params.backbone, seed=0, attn_implementation="sdpa", input_size=params.input_size, pooling="avg"
    )
    cache = feature_cache(cfg, place_on_device(cfg, backbone), precision=DEDUPE_PRECISION)
    features, _ = embed_images(
        backbone,
        [INGEST / p for p in manifest["working_path"]],
        manifest["sha256"].tolist(),
        render=Render(),
        spec=ViewSpec("global"),
        cache=cache,
        store=render_store(),
        batch_size=params.batch_size,
        desc="dedupe embeddings",
        precision=DEDUPE_PRECISION,
    )
    return cosine_pairs(features[:, 0], threshold)


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    out = stage_dir("dedupe")
    manifest = pd.read_csv(INGEST / "manifest.csv", dtype={"path": str, "sha256": str})
    threshold = cfg.dedupe.embedding_cosine
    with tracked("dedupe", cfg, ("dedupe",), overrides) as run:
        hashes = compute_phashes(
            [INGEST / p for p in manifest["working_path"]], hash_size=cfg.dedupe.hash_size
        )
        extra = [embedding_edges(cfg, manifest, threshold)] if threshold is not None else []
        result = find_duplicate_groups(
            manifest["sha256"].tolist(),
            manifest["label"].to_numpy(),
            hashes,
            radius=cfg.dedupe.phash_radius,
            extra_edges=extra,
        )
        groups = manifest.assign(
            phash=[f"{h:016x}" for h in hashes.tolist()],
            group=result.group,
            keep=result.keep,
            drop_reason=pd.Series(result.drop_reason, dtype=object).fillna(""),
        )
        atomic_write_csv(out / "groups.csv", groups)
        report = out / "report"
        for name in ("exact_duplicates", "label_conflicts", "near_duplicate_pairs", "mixed_label_groups"):
            atomic_write_csv(report / f"{name}.csv", getattr(result, name))

        found, planted = pair_recall(groups, pd.read_csv(INGEST / "known_duplicates.csv", dtype=str))
        kept_groups = groups.loc[groups["keep"], "group"]
        metrics = {
            "n_items": len(groups),
            "n_kept": int(groups["keep"].sum()),
            "n_groups": int(kept_groups.nunique()),
            "largest_group": int(kept_groups.value_counts().max()),
            "n_exact_duplicates_dropped": int((groups["drop_reason"] == "exact_duplicate").sum()),
            "n_label_conflicts_dropped": int((groups["drop_reason"] == "label_conflict").sum()),
            "n_near_duplicate_pairs": len(result.near_duplicate_pairs),
            "n_pairs_phash": result.summary["n_pairs_phash"],
            "n_pairs_embedding": result.summary.get("n_pairs_extra_0", 0),
            "n_mixed_label_groups": len(result.mixed_label_groups),
            "known_pairs": planted,
            "known_pairs_recall": float(found / planted) if planted else float("nan"),
        }
        write_json(out / "metrics.json", {k: v for k, v in metrics.items() if not np.isnan(v)})
        run.log_metrics(metrics)
        run.log_artifact(report, "report")
        run.log_artifact(out / "metrics.json")
    recall = f", known-pair recall {found}/{planted}" if planted else ""
    print(f"dedupe: {metrics['n_kept']} kept images in {metrics['n_groups']} groups{recall}")
