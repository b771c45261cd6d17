"""adapt stage: ExPLoRA domain adaptation of the configured backbone, for the ``adapted`` variant.

Continues the backbone's self-supervised pretraining (DINO self-distillation with an EMA teacher; iBOT for
ViTs) on the **train split's images only**, plus the images of ``adapt.unlabeled_dir`` when set and of every
``data.sources`` folder of role ``unlabeled`` (inside ``data.dir``), with the
last ``adapt.unfreeze_last_blocks`` blocks and all norms unfrozen and LoRA/DoRA on the other blocks; merges
the adapters and checks the merge (see :mod:`roadwork.adapt.explora`). val_select, val_calib and val_test are
never read: the split contract allows this stage the train split only, and an unlabeled image that is one of
the data set's own images outside the train split (same sha256) is excluded and counted.

Outputs in ``outputs/adapt/``: ``backbone/`` (the merged backbone, loadable by ``load_backbone``; embed,
train and evaluate of the ``adapted`` variant read it), ``history.csv`` (one row per step, a DVC plot),
``ssl_curves.png``, ``adapt.json`` (settings, adapter layout, parameter counts, fingerprints),
``unlabeled.csv`` (every file found in those folders and whether it was used, with the reason when
not) and ``metrics.json``. Where a run resumed goes to MLflow only, so the outputs depend on the inputs alone.

Resumption: checkpoints go to ``.cache/checkpoints/adapt/<key>``, the key a digest of everything the
training depends on, so a ``kill -9`` followed by ``dvc repro`` continues from the last checkpoint (every
epoch end and every ``adapt.checkpoint_every_steps`` steps) and ends with the outputs of an uninterrupted
run; changed settings start afresh in another folder, and the folders of older settings are removed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig, adapt_config, to_dict
from roadwork.data.split import read_split
from roadwork.layout import INGEST, SPLITS_CSV, checkpoint_dir, stage_dir
from roadwork.stages.common import tracked, write_json
from roadwork.stages.modelling import configured_backbone

UNLABELED_CSV = "unlabeled.csv"
POOL_COLUMNS = ["path", "sha256", "used", "reason"]


def unlabeled_images(
    folder: Path, *, max_pixels: int, outside_train: set[str]
) -> tuple[list[Path], pd.DataFrame]:
    """The usable images under ``folder`` (recursive, sorted) and one row per file found.

    A file is used when its extension is an image extension, it decodes (within ``max_pixels``) and its
    sha256 is not one of ``outside_train`` (the labelled data set's images that are not in the train split).
    Rows: ``path``, ``sha256``, ``used`` (bool), ``reason`` (empty when used). Symbolic links are skipped:
    ingest's rule, so the pool cannot point the stage outside the folder.

    Raises:
        FileNotFoundError: ``folder`` is not a directory (naming the settings that point at it).
    """
    from roadwork.data.images import ImageRejected, decode_image, sha256_file
    from roadwork.data.ingest_scan import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise FileNotFoundError(
            f"unlabeled folder {folder} (adapt.unlabeled_dir, or an unlabeled data.sources entry's dir "
            "inside data.dir) is not a directory; point it at a folder of images, or set "
            "adapt.unlabeled_dir to null / remove the entry."
        )
    used: list[Path] = []
    rows: list[dict[str, Any]] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        sha, reason = "", ""
        if path.is_symlink():
            reason = "symlink (not followed)"
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            reason = f"extension {path.suffix or '(none)'} is not an image extension"
        else:
            sha = sha256_file(path)
            if sha in outside_train:
                reason = "one of the data set's images outside the train split (adapt never sees those)"
            else:
                try:
                    decode_image(path, max_pixels=max_pixels, min_side=16, draft_size=512)
                except ImageRejected as exc:
                    reason = str(exc)
        if not reason:
            used.append(path)
        rows.append({"path": str(path), "sha256": sha, "used": not reason, "reason": reason})
    return used, pd.DataFrame(rows, columns=POOL_COLUMNS)


def unlabeled_folders(cfg: RoadworkConfig) -> list[Path]:
    """The unlabeled pool's folders: ``adapt.unlabeled_dir`` (if set), then each ``unlabeled`` source's."""
    folders = [Path(cfg.adapt.unlabeled_dir)] if cfg.adapt.unlabeled_dir else []
    return folders + [Path(cfg.data.dir) / s.dir for s in cfg.data.sources if s.role == "unlabeled"]


def _checkpoint_key(cfg: RoadworkConfig, images: list[Path]) -> str:
    """Digest of what ExPLoRA's result depends on: its settings, the backbone, the images and the devices."""
    resolved = to_dict(cfg)
    material = {
        "adapt": resolved["adapt"],
        "backbone": resolved["backbone"],
        "devices": cfg.trainer.devices,
        "images": [str(p) for p in images],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _resume_dir(cfg: RoadworkConfig, images: list[Path]) -> Path:
    root = checkpoint_dir("adapt")
    key = _checkpoint_key(cfg, images)
    if root.is_dir():
        for stale in root.iterdir():
            if stale.name != key:
                shutil.rmtree(stale, ignore_errors=True)
    return root / key


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = ()) -> None:
    from roadwork.adapt.explora import ADAPT_META, HISTORY_FILE, adapt_backbone
    from roadwork.plots import ssl_curves_plot

    out = stage_dir("adapt")
    train = read_split(SPLITS_CSV, "adapt", ["train"]).sort_values("path")
    images = [INGEST / p for p in train["working_path"]]
    pools = []
    folders = unlabeled_folders(cfg)
    if folders:
        manifest = pd.read_csv(INGEST / "manifest.csv", dtype={"sha256": str})
        outside_train = set(manifest["sha256"]) - set(train["sha256"])
        for folder in folders:
            extra, found = unlabeled_images(
                folder, max_pixels=cfg.ingest.max_pixels, outside_train=outside_train
            )
            images += extra
            pools.append(found)
    pool = pd.concat(pools, ignore_index=True) if pools else pd.DataFrame(columns=POOL_COLUMNS)
    backbone = configured_backbone(cfg, cfg.backbone.id)
    with tracked("adapt", cfg, ("adapt", "backbone", "trainer"), overrides) as run:
        result = adapt_backbone(
            backbone,
            images,
            adapt_config(cfg.adapt),
            out_dir=out,
            checkpoint_dir=_resume_dir(cfg, images),
            checkpoint_every_steps=cfg.adapt.checkpoint_every_steps,
            loggers=run.loggers(),
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
        )
        if result.global_rank != 0:
            return
        atomic_write_csv(out / UNLABELED_CSV, pool)
        # metrics.json is the record DVC compares: a function of the inputs only (no timings, no resume step)
        metrics = {
            "train_images": len(train),
            "unlabeled_images": int(pool["used"].sum()),
            "unlabeled_excluded": int((~pool["used"].astype(bool)).sum()),
            "steps": result.steps,
            "trainable_params": result.trainable_params,
            "total_params": result.total_params,
            "trainable_pct": result.trainable_pct,
            "ssl_loss_start": result.loss_start,
            "ssl_loss_end": result.loss_end,
            "agreement_end": result.agreement_end,
            "merge_max_abs_diff": result.merge_max_abs_diff,
        }
        write_json(out / "metrics.json", metrics)
        ssl_curves_plot(result.history, out / "ssl_curves.png")
        run.log_metrics({"resumed_from_step": result.resumed_from_step})
        run.set_tags({"roadwork.backbone_fingerprint": result.backbone.fingerprint()})
        for name in ("metrics.json", HISTORY_FILE, "ssl_curves.png", ADAPT_META, UNLABELED_CSV):
            run.log_artifact(out / name)
    print(
        f"adapt: {result.steps} ExPLoRA steps on {len(images)} images "
        f"({result.trainable_pct:.1f} % of {result.total_params:,} backbone weights trained); "
        f"SSL loss {result.loss_start:.3f} -> {result.loss_end:.3f}, merge check "
        f"{result.merge_max_abs_diff:.1e}"
        + (f"; resumed at step {result.resumed_from_step}" if result.resumed_from_step else "")
    )
