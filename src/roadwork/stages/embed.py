"""embed stage: features of every split through the variant's frozen backbone, via the feature cache.

Rows per split, each the features of the bytes a miner would receive (through the one inference path,
:func:`roadwork.models.inference.embed_inputs`): one clean row per image (the validator's level-0 JPEG, every
split); for train, ``embed.train_copies`` augmented copies per image drawn from the validator's level mix
(``embed.augment``); for val_select and val_calib, ``embed.val_renders_per_level`` renders per image at each
of levels 1-3, so model selection and calibration see the validator's mix (with one render per level, each
level is 25 % of the rows, as the validator draws them); for val_test, :func:`evaluation_renders` (what
evaluate scores). With ``embed.tta_flip`` the non-train splits also get the features of the mirrored
picture (``features_flip``), for the flip-averaged inference path.
Outputs in ``outputs/embed/<variant>/``: ``features/<split>.safetensors`` (``features [N, V, D]`` float32,
``features_flip`` when on; metadata: the feature-cache numerics key; the backbone fingerprint is in
``backbone.json``),
``index.csv`` (split, row, sha256, path, render, level, input_key; level -1 for a mix; input_key the sha256
of the rendered bytes, the feature cache's key), ``backbone.json`` and ``metrics.json``. Labels are not
written: embedding is label-free.

These outputs are the features' one home: the stages after embed copy them into the feature cache
(:func:`roadwork.stages.modelling.variant_feature_cache`) before the one inference path reads it, so after
``dvc pull`` with an empty cache, train and evaluate of a frozen-backbone variant run no backbone (bundle's
export check runs the model on purpose: it compares the export with it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.split import SPLITS, read_split
from roadwork.layout import INGEST, SPLITS_CSV, stage_dir
from roadwork.stages.common import tracked, write_json
from roadwork.stages.modelling import (
    feature_cache,
    load_variant_backbone,
    render_store,
    train_augment,
    view_spec,
)

FEATURES = "features"
INDEX = "index.csv"
NUMERICS = "numerics_key"  # safetensors metadata: the feature-cache key the rows were computed under


def evaluation_renders(cfg: RoadworkConfig) -> list[Any]:
    """The val_test renders: the clean level-0 render, then ``renders_per_level`` copies of L1, L2, L3."""
    from roadwork.data.render import Render, level_render

    return [Render()] + [
        level_render(level, copy, cfg.evaluate.seed)
        for level in (1, 2, 3)
        for copy in range(cfg.evaluate.renders_per_level)
    ]


def split_renders(cfg: RoadworkConfig) -> dict[str, list[Any]]:
    """The renders ``embed`` computes for each split (clean first); val_test's are
    :func:`evaluation_renders`, so evaluate finds every feature it needs in embed's outputs."""
    from roadwork.data.render import Render, level_render

    renders: dict[str, list[Render]] = {split: [Render()] for split in SPLITS}
    renders["val_test"] = evaluation_renders(cfg)
    augment = train_augment(cfg)
    renders["train"] += [
        Render("augmented", copy=k, augment=augment, seed=cfg.embed.seed)
        for k in range(cfg.embed.train_copies)
    ]
    for split in ("val_select", "val_calib"):
        renders[split] += [
            level_render(level, copy, cfg.embed.seed)
            for level in (1, 2, 3)
            for copy in range(cfg.embed.val_renders_per_level)
        ]
    return renders


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    out = stage_dir("embed", variant)
    frame = read_split(SPLITS_CSV, "embed", SPLITS)
    spec = view_spec(cfg)
    store = render_store()
    with tracked("embed", cfg, ("backbone", "embed"), overrides, variant=variant) as run:
        backbone = load_variant_backbone(cfg, variant)
        fingerprint = backbone.fingerprint()
        cache = feature_cache(cfg, backbone, fingerprint)
        embed = _Embedder(cfg, backbone, spec, cache, store)
        index_rows: list[pd.DataFrame] = []
        metrics: dict[str, Any] = {}
        for split, renders in split_renders(cfg).items():
            rows = frame[frame["split"] == split].sort_values("path")
            flip = cfg.embed.tta_flip and split != "train"
            desc = f"embed@{variant} {split}"
            tensors, split_index = _embed_split(embed, split, rows, renders, flip=flip, desc=desc)
            _write_features(out / FEATURES / f"{split}.safetensors", tensors, cache.fingerprint)
            index_rows += split_index
            metrics[f"{split}_rows"] = len(tensors["features"])
            metrics[f"{split}_images"] = len(rows)
        index = pd.concat(index_rows, ignore_index=True)
        index.insert(1, "row", index.groupby("split").cumcount())
        atomic_write_csv(out / INDEX, index)
        metrics.update({"num_views": spec.num_views, "feature_dim": backbone.feature_dim})
        # metrics.json holds what the outputs are (same inputs => same file); how much work the cache saved
        # and how fast it ran go to MLflow only
        write_json(out / "metrics.json", metrics)
        run.log_metrics(embed.work_metrics())
        write_json(out / "backbone.json", _backbone_record(cfg, backbone, fingerprint, cache))
        run.log_metrics(metrics)
        run.set_tags({"roadwork.backbone_fingerprint": fingerprint})
        run.log_artifact(out / "metrics.json")
        run.log_artifact(out / "backbone.json")
    print(
        f"embed@{variant}: "
        + ", ".join(f"{s} {metrics[f'{s}_rows']} rows" for s in SPLITS)
        + f"; {embed.computed} inputs computed, the rest from the cache {cache.root}"
    )


class _Embedder:
    """:func:`~roadwork.train.embed.embed_images` with the stage's backbone, views, cache and settings,
    tallying the work done (inputs requested and computed, views computed, seconds)."""

    def __init__(self, cfg: RoadworkConfig, backbone: Any, spec: Any, cache: Any, store: Any) -> None:
        self.cfg, self.backbone, self.spec, self.cache, self.store = cfg, backbone, spec, cache, store
        self.requested = self.computed = self.views = 0
        self.seconds = 0.0

    def __call__(
        self, paths: list[Path], shas: list[str], render: Any, flip: bool, desc: str
    ) -> tuple[np.ndarray, list[str]]:
        """The features of ``render`` of the images, and each rendered input's feature-cache key."""
        from roadwork.train.embed import embed_images

        features, stats = embed_images(
            self.backbone,
            paths,
            shas,
            render=render,
            spec=self.spec,
            cache=self.cache,
            store=self.store,
            flip=flip,
            batch_size=self.cfg.embed.batch_size,
            desc=desc,
            precision=self.cfg.embed.precision,
        )
        self.requested += stats.n_items
        self.computed += stats.n_computed
        self.views += stats.n_views_computed
        self.seconds += stats.seconds
        return features, [str(key) for key in stats.input_keys]

    def work_metrics(self) -> dict[str, float]:
        """How much work the cache saved and how fast the rest ran (MLflow only: they vary between runs)."""
        return {
            "images_computed": self.computed,
            "views_computed": self.views,
            "cache_hit_rate": 1 - self.computed / max(1, self.requested),
            "views_per_second": self.views / self.seconds if self.seconds > 0 else 0.0,
        }


def _embed_split(
    embed: _Embedder, split: str, rows: pd.DataFrame, renders: list[Any], *, flip: bool, desc: str
) -> tuple[dict[str, np.ndarray], list[pd.DataFrame]]:
    """One split's feature arrays (``features``, and ``features_flip`` with ``flip``), a block of rows per
    render in order, and the index rows that describe them."""
    paths = [INGEST / p for p in rows["working_path"]]
    shas = rows["sha256"].tolist()
    blocks, flips, index = [], [], []
    for render in renders:
        features, keys = embed(paths, shas, render, False, desc)
        blocks.append(features)
        level = -1 if render.level is None else render.level
        index.append(
            pd.DataFrame(
                {
                    "split": split,
                    "sha256": shas,
                    "path": rows["path"],
                    "render": render.key,
                    "level": level,
                    "input_key": keys,
                }
            )
        )
        if flip:
            flips.append(embed(paths, shas, render, True, f"{desc} (flip)")[0])
    tensors = {"features": np.concatenate(blocks)}
    if flips:
        tensors["features_flip"] = np.concatenate(flips)
    return tensors, index


def _write_features(target: Path, tensors: dict[str, np.ndarray], numerics: str) -> None:
    """One safetensors file of a split's features. One metadata key only: safetensors writes its metadata
    map in an order that changes from process to process, so two keys made the same features differ in
    bytes (and dvc.lock with them). The backbone's fingerprint is in backbone.json beside them."""
    from safetensors.numpy import save_file

    from roadwork.atomic import atomic_write

    atomic_write(target, lambda path: save_file(tensors, str(path), metadata={NUMERICS: numerics}))


def _backbone_record(cfg: RoadworkConfig, backbone: Any, fingerprint: str, cache: Any) -> dict[str, Any]:
    """``backbone.json``: which backbone computed the features, how, and the cache they are keyed by."""
    return {
        "id": backbone.backbone_id,
        "family": backbone.family,
        "fingerprint": fingerprint,
        "feature_dim": backbone.feature_dim,
        "preprocess": backbone.preprocess.to_dict(),
        "device": next(backbone.parameters()).device.type,
        "precision": cfg.embed.precision,
        "cache_key": cache.fingerprint,
    }
