"""train stage: the head on cached features, selected on val_select; logits for val_select and val_calib.

Reads ``outputs/embed/<variant>`` and the labels of train and val_select (the split contract); val_calib
is only run through the selected head, label-free, so that ``calibrate`` gets its logits. With
``embed.tta_flip`` the written logits are the mean of the plain and mirrored renderings' logits.
Outputs in ``outputs/train/<variant>/``: ``head.safetensors``, ``head.json``, ``history.csv`` (per-epoch
curves, a DVC plot), ``training_curves.png``, ``logits/<split>.csv`` (sha256, path, z0, z1, margin) and
``metrics.json``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from roadwork.config import RoadworkConfig, head_train_config
from roadwork.data.split import read_split
from roadwork.stages.common import SPLITS_CSV, stage_dir, tracked, write_csv, write_json
from roadwork.stages.embed import features_path, index_path

LOGIT_SPLITS = ("val_select", "val_calib")


def load_features(variant: str, split: str) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The arrays of ``outputs/embed/<variant>/features/<split>.safetensors`` and that split's index rows."""
    from safetensors.numpy import load_file

    path = features_path(variant, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `roadwork embed --variant {variant}` first.")
    index = pd.read_csv(index_path(variant), dtype={"sha256": str, "path": str, "render": str})
    rows = index[index["split"] == split].sort_values("row").reset_index(drop=True)
    arrays = load_file(str(path))
    if len(arrays["features"]) != len(rows):
        raise ValueError(
            f"{path}: {len(arrays['features'])} rows but {index_path(variant)} lists {len(rows)} "
            f"for {split}; "
            "re-run embed."
        )
    return arrays, rows


def _labels_for(rows: pd.DataFrame, labelled: pd.DataFrame, split: str) -> np.ndarray:
    by_sha = labelled.drop_duplicates("sha256").set_index("sha256")["label"]
    missing = ~rows["sha256"].isin(by_sha.index)
    if missing.any():
        raise ValueError(
            f"{missing.sum()} {split} feature rows have no {split} label in {SPLITS_CSV} "
            f"(first sha256 {rows.loc[missing, 'sha256'].iloc[0]}); embed and split disagree — re-run embed."
        )
    return by_sha.loc[rows["sha256"]].to_numpy(dtype=np.int64)


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    from roadwork import metrics as M
    from roadwork.plots import training_curves_plot
    from roadwork.train.head import FeatureSet, fit_head, predict_logits

    out = stage_dir("train", variant)
    labelled = read_split(SPLITS_CSV, "train", ["train", "val_select"])
    head_cfg = head_train_config(cfg.train)
    if cfg.train.mode != "head":
        raise ValueError(
            f"train.mode={cfg.train.mode!r} needs images, not the feature cache: it is run by "
            "`roadwork train` only where implemented; use train.mode=head."
        )
    sets = {}
    for split in ("train", "val_select"):
        arrays, rows = load_features(variant, split)
        labels = _labels_for(rows, labelled[labelled["split"] == split], split)
        sets[split] = FeatureSet(arrays["features"], labels, rows["sha256"].to_numpy(dtype=str))
    with tracked("train", cfg, ("train", "embed", "backbone"), overrides, variant=variant) as run:
        import mlflow

        logger = MLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=run.run_id)
        result = fit_head(sets["train"], sets["val_select"], head_cfg, out_dir=out, loggers=[logger])
        metrics: dict[str, float] = {
            "best_epoch": result.best_epoch,
            "selection_metric": result.best_metric,
            "epochs_run": result.epochs_run,
            "optimizer_steps": result.optimizer_steps,
            "train_rows": len(sets["train"].labels),
            "train_images": int(np.unique(sets["train"].ids).size),
        }
        for split in LOGIT_SPLITS:
            arrays, rows = load_features(variant, split)
            logits = predict_logits(result.model, arrays["features"])
            if "features_flip" in arrays:
                logits = (logits + predict_logits(result.model, arrays["features_flip"])) / 2
            margin = logits[:, 1] - logits[:, 0]
            frame = rows[["sha256", "path"]].assign(z0=logits[:, 0], z1=logits[:, 1], margin=margin)
            write_csv(frame, out / "logits" / f"{split}.csv")
            if split == "val_select":
                y = sets["val_select"].labels
                metrics["val_select_mcc"] = M.mcc(y, (margin > 0).astype(int))
                metrics["val_select_accuracy"] = M.accuracy(y, (margin > 0).astype(int))
                metrics["val_select_auroc"] = M.auroc(y, margin)
        write_json(out / "metrics.json", metrics)
        training_curves_plot(result.history, out / "training_curves.png", best_epoch=result.best_epoch)
        run.log_metrics(metrics)
        for name in ("metrics.json", "head.json", "history.csv", "training_curves.png"):
            run.log_artifact(out / name)
    print(
        f"train@{variant}: best epoch {result.best_epoch} of {result.epochs_run}, "
        f"val_select MCC {metrics['val_select_mcc']:.3f}, AUROC {metrics['val_select_auroc']:.3f}"
    )
