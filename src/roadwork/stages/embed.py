"""embed stage: features of every split through the variant's frozen backbone, via the feature cache.

Rows per split: one clean row per image (validator level 0, every split) and, for train only,
``embed.train_copies`` augmented copies per image. With ``embed.tta_flip`` the non-train splits also get
the features of the mirrored rendering (``features_flip``), which ``train`` averages with the plain ones.
Outputs in ``outputs/embed/<variant>/``: ``features/<split>.safetensors`` (``features [N, V, D]`` float32,
``features_flip`` when on), ``index.csv`` (split, row, sha256, path, render), ``backbone.json`` and
``metrics.json``. Labels are not written: embedding is label-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from roadwork.config import RoadworkConfig
from roadwork.data.split import SPLITS, read_split
from roadwork.stages.common import (
    INGEST,
    SPLITS_CSV,
    feature_cache,
    load_variant_backbone,
    stage_dir,
    tracked,
    train_augment,
    view_spec,
    write_csv,
    write_json,
)

FEATURES = "features"
INDEX = "index.csv"


def features_path(variant: str, split: str) -> Path:
    return Path("outputs/embed") / variant / FEATURES / f"{split}.safetensors"


def index_path(variant: str) -> Path:
    return Path("outputs/embed") / variant / INDEX


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from safetensors.numpy import save_file

    from roadwork.train.embed import Render, embed_images

    out = stage_dir("embed", variant)
    frame = read_split(SPLITS_CSV, "embed", SPLITS)
    spec = view_spec(cfg)
    with tracked("embed", cfg, ("backbone", "embed"), overrides, variant=variant) as run:
        backbone = load_variant_backbone(cfg, variant)
        fingerprint = backbone.fingerprint()
        cache = feature_cache(cfg, backbone, fingerprint)
        renders: dict[str, list[Render]] = {split: [Render()] for split in SPLITS}
        augment = train_augment(cfg)
        renders["train"] += [
            Render("augmented", copy=k, augment=augment, seed=cfg.embed.seed)
            for k in range(cfg.embed.train_copies)
        ]
        index_rows, metrics = [], {}
        requested = computed = views = 0
        seconds = 0.0
        for split in SPLITS:
            rows = frame[frame["split"] == split].sort_values("path")
            paths = [INGEST / p for p in rows["working_path"]]
            shas = rows["sha256"].tolist()
            blocks, flips = [], []
            for render in renders[split]:
                features, stats = embed_images(
                    backbone,
                    paths,
                    shas,
                    render=render,
                    spec=spec,
                    cache=cache,
                    batch_size=cfg.embed.batch_size,
                    desc=f"embed@{variant} {split}",
                    precision=cfg.embed.precision,
                )
                blocks.append(features)
                requested, computed = requested + stats.n_items, computed + stats.n_computed
                views, seconds = views + stats.n_views_computed, seconds + stats.seconds
                index_rows.append(
                    pd.DataFrame({"split": split, "sha256": shas, "path": rows["path"], "render": render.key})
                )
                if cfg.embed.tta_flip and split != "train":
                    flipped, stats = embed_images(
                        backbone,
                        paths,
                        shas,
                        render=Render(flip=True),
                        spec=spec,
                        cache=cache,
                        batch_size=cfg.embed.batch_size,
                        desc=f"embed@{variant} {split} (flip)",
                        precision=cfg.embed.precision,
                    )
                    flips.append(flipped)
                    requested, computed = requested + stats.n_items, computed + stats.n_computed
                    views, seconds = views + stats.n_views_computed, seconds + stats.seconds
            tensors = {"features": np.concatenate(blocks)}
            if flips:
                tensors["features_flip"] = np.concatenate(flips)
            target = out / FEATURES / f"{split}.safetensors"
            target.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(target), metadata={"backbone_fingerprint": fingerprint})
            metrics[f"{split}_rows"] = len(tensors["features"])
            metrics[f"{split}_images"] = len(rows)
        index = pd.concat(index_rows, ignore_index=True)
        index.insert(1, "row", index.groupby("split").cumcount())
        write_csv(index, out / INDEX)
        metrics.update({"num_views": spec.num_views, "feature_dim": backbone.feature_dim})
        # metrics.json holds what the outputs are (same inputs => same file); how much work the cache saved
        # and how fast it ran go to MLflow only
        write_json(out / "metrics.json", metrics)
        work = {
            "images_computed": computed,
            "views_computed": views,
            "cache_hit_rate": 1 - computed / max(1, requested),
            "views_per_second": views / seconds if seconds > 0 and views else 0.0,
        }
        run.log_metrics(work)
        write_json(
            out / "backbone.json",
            {
                "id": backbone.backbone_id,
                "family": backbone.family,
                "fingerprint": fingerprint,
                "feature_dim": backbone.feature_dim,
                "preprocess": backbone.preprocess.to_dict(),
                "device": next(backbone.parameters()).device.type,
                "precision": cfg.embed.precision,
                "cache_key": cache.fingerprint,
            },
        )
        run.log_metrics(metrics)
        run.set_tags({"roadwork.backbone_fingerprint": fingerprint})
        run.log_artifact(out / "metrics.json")
        run.log_artifact(out / "backbone.json")
    print(
        f"embed@{variant}: "
        + ", ".join(f"{s} {metrics[f'{s}_rows']} rows" for s in SPLITS)
        + f"; {computed} renders computed, the rest from the cache {cache.root}"
    )
