"""train stage: the head (or LoRA + head), selected on val_select; logits for val_select and val_calib.

``train.mode: head`` trains on the cached features of ``outputs/embed/<variant>``; ``finetune`` trains LoRA
adapters and the head end-to-end on the train images (augmented per epoch like the cached copies, the
validator's levels included) and merges the adapters into a backbone of its own. ``trainer.*`` says where:
with ``trainer.devices=2 trainer.strategy=ddp`` head training runs in two processes (Lightning starts
this command again for rank 1; only rank 0 logs and writes). Resume checkpoints go to
``.cache/checkpoints/train@<variant>`` (outside DVC's outputs), so a killed ``dvc repro`` continues after the
last finished epoch. Either way the labels
come through the split contract (train and val_select only); val_calib is only run through the selected
model, label-free, so that ``calibrate`` gets its logits. With ``embed.tta_flip`` the written logits are
the mean of the plain and mirrored renderings' logits.

Outputs in ``outputs/train/<variant>/``: ``model/`` (``head.safetensors``, ``head.json``,
``backbone.json`` naming the backbone, and after finetuning ``backbone/`` and ``finetune.json``),
``history.csv`` (per-epoch curves, a DVC plot), ``training_curves.png``, ``logits/<split>.csv`` (sha256,
path, render, level, margin: one row per validator render) and ``metrics.json``.

Sampling (head mode): with ``data.sources`` every train row is drawn in proportion to its source's
``weight``; with ``train.hard_negatives.rounds`` > 0 the hardest of the train split's negatives, found by
out-of-fold scoring of the train split alone (:mod:`roadwork.train.hard_negatives`), are up-weighted
before the fit, and ``logits/train_out_of_fold.csv`` lists every scored negative per round (its
out-of-fold margin and whether it was selected). Equal weights everywhere leave the plain shuffle.

Cross-fitting (head mode, ``train.crossfit_folds`` > 0): after the sampling weights are settled, one head
per fold of train's dedupe groups is fitted on the other folds (selected on val_select, as the shipped head
is) and scores its fold; ``logits/train_crossfit.csv`` (sha256, path, render, level, fold, margin) holds
every train render's out-of-fold margin, where ``calibrate`` chooses its threshold
(``calibrate.threshold_data``). In finetune mode, or with 0 folds, the file is removed.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig, finetune_config, head_train_config
from roadwork.data.sources import source_weights
from roadwork.data.split import read_split
from roadwork.layout import (
    CROSSFIT_SPLIT,
    INGEST,
    SPLITS_CSV,
    checkpoint_dir,
    features_path,
    index_path,
    logits_path,
    model_dir,
    stage_dir,
)
from roadwork.stages.common import tracked, write_json
from roadwork.stages.modelling import (
    load_variant_backbone,
    model_margins,
    rendered_bytes,
    train_augment,
    variant_feature_cache,
    write_backbone_ref,
)

LOGIT_SPLITS = ("val_select", "val_calib")
OUT_OF_FOLD_CSV = "train_out_of_fold.csv"


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
            f"for {split}; re-run embed."
        )
    return arrays, rows


def fit_variant_probe(cfg: RoadworkConfig, variant: str, labelled: pd.DataFrame) -> Any:
    """The plain baseline: standardised logistic regression on the variant's clean train features (the
    global view), C chosen on val_select's clean features; ``labelled``: the train and val_select rows of
    the split file, read by the calling stage (the split contract)."""
    from roadwork.train.probe import fit_probe

    data = {}
    for split in ("train", "val_select"):
        arrays, rows = load_features(variant, split)
        clean = (rows["level"] == 0).to_numpy()
        labels = labelled[labelled["split"] == split].set_index("sha256")["label"]
        data[split] = (arrays["features"][clean, 0], labels.loc[rows.loc[clean, "sha256"]].to_numpy())
    return fit_probe(*data["train"], *data["val_select"], seed=cfg.evaluate.seed)


def _labels_for(rows: pd.DataFrame, labelled: pd.DataFrame, split: str) -> np.ndarray:
    by_sha = labelled.drop_duplicates("sha256").set_index("sha256")["label"]
    missing = ~rows["sha256"].isin(by_sha.index)
    if missing.any():
        raise ValueError(
            f"{missing.sum()} {split} feature rows have no {split} label in {SPLITS_CSV} "
            f"(first sha256 {rows.loc[missing, 'sha256'].iloc[0]}); embed and split disagree — re-run embed."
        )
    return by_sha.loc[rows["sha256"]].to_numpy(dtype=np.int64)


def _source_weights(cfg: RoadworkConfig, labelled: pd.DataFrame, split: str, ids: np.ndarray) -> np.ndarray:
    """Each feature row's source weight (``data.sources``; all 1 without sources)."""
    if not cfg.data.sources:
        return np.ones(len(ids))
    rows = labelled[labelled["split"] == split].drop_duplicates("sha256").set_index("sha256")
    return source_weights(rows.loc[ids, "source"].to_numpy(), {s.name: s.weight for s in cfg.data.sources})


def _hard_negatives(
    cfg: RoadworkConfig, labelled: pd.DataFrame, sets: dict, groups: np.ndarray, fit: Any
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """The train rows' sampling weights: their sources', times ``train.hard_negatives.weight`` for the
    hardest negatives when the loop is on (then also its report, else None). ``groups``: each train row's
    dedupe group; ``fit``: the fold models' fitter."""
    from roadwork.train.hard_negatives import mine_hard_negatives

    train, params = sets["train"], cfg.train.hard_negatives
    weights = _source_weights(cfg, labelled, "train", train.ids)
    if not params.rounds:
        return weights, None
    rows = labelled[labelled["split"] == "train"].drop_duplicates("sha256").set_index("sha256")
    mined = mine_hard_negatives(
        train,
        sets["val_select"],
        groups,
        weights,
        fit,
        rounds=params.rounds,
        top_fraction=params.top_fraction,
        weight=params.weight,
        folds=params.folds,
        seed=cfg.train.seed,
    )
    report = mined.report.merge(rows["path"], left_on="sha256", right_index=True)
    print(
        f"train: {len(mined.selected)} of the train split's {int((rows['label'] == 0).sum())} negatives "
        f"up-weighted x{params.weight:g} after {params.rounds} round(s) of {params.folds}-fold scoring"
    )
    return mined.weights, report


def _crossfit(
    cfg: RoadworkConfig,
    sets: dict,
    train_rows: pd.DataFrame,
    groups: np.ndarray,
    fit: Any,
    weights: np.ndarray,
) -> pd.DataFrame | None:
    """``logits/train_crossfit.csv``'s rows (sha256, path, render, level, fold, margin): each train render
    (``train_rows``, the index of train's features) scored by a head fitted, as the shipped one is, on the
    other ``train.crossfit_folds`` folds of train's dedupe groups (``groups``, one per row); None when
    ``train.crossfit_folds`` is 0."""
    from roadwork.train.crossfit import crossfit_margins, group_folds

    folds_k = cfg.train.crossfit_folds
    if not folds_k:
        return None
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            "train.crossfit_folds: the train split is one dedupe group, so no render can be scored out of "
            "fold; set train.crossfit_folds=0 and calibrate.threshold_data=val_calib."
        )
    if n_groups < folds_k:  # few, large groups (near-duplicate runs, drives): as many folds as groups
        print(f"train: {n_groups} dedupe groups in the train split: cross-fitting with {n_groups} folds")
        folds_k = n_groups
    folds = group_folds(groups, folds_k, cfg.train.seed, param="train.crossfit_folds")
    margins = crossfit_margins(sets["train"], sets["val_select"], folds, weights, fit)
    print(f"train: {len(margins)} train renders scored out of fold ({folds_k} folds of dedupe groups)")
    frame = train_rows[["sha256", "path", "render", "level"]].assign(fold=folds, margin=margins)
    return frame.sort_values(["path", "render"], ignore_index=True)


def _fit_on_features(
    cfg: RoadworkConfig, variant: str, labelled: pd.DataFrame, head_cfg: Any, out: Path, loggers: list
) -> tuple[Any, pd.DataFrame | None, pd.DataFrame | None]:
    """The head fitted on the cached features (then refitted with ``train.refit``), the hard-negative
    loop's report and the cross-fitted train margins (each None when off)."""
    from roadwork.train.hard_negatives import head_fitter
    from roadwork.train.head import fit_head
    from roadwork.train.head_data import FeatureSet
    from roadwork.train.sampling import sampler_weights

    sets, index = {}, {}
    for split in ("train", "val_select"):
        arrays, index[split] = load_features(variant, split)
        labels = _labels_for(index[split], labelled[labelled["split"] == split], split)
        sets[split] = FeatureSet(arrays["features"], labels, index[split]["sha256"].to_numpy(dtype=str))
    hardware = {
        "accelerator": cfg.trainer.accelerator,
        "devices": cfg.trainer.devices,
        "strategy": cfg.trainer.strategy,
    }
    # both out-of-fold users (hard negatives, cross-fit) share one fitter and train's row groups
    fit = head_fitter(head_cfg, hardware, out.parent)
    train_images = labelled[labelled["split"] == "train"].drop_duplicates("sha256").set_index("sha256")
    groups = train_images.loc[sets["train"].ids, "group"].to_numpy()
    weights, report = _hard_negatives(cfg, labelled, sets, groups, fit)
    crossfit = _crossfit(cfg, sets, index["train"], groups, fit, weights)
    selected = fit_head(
        sets["train"],
        sets["val_select"],
        head_cfg,
        out_dir=out,
        loggers=loggers,
        checkpoint_dir=checkpoint_dir("train", variant),
        sample_weights=sampler_weights(weights),
        **hardware,
    )
    if not cfg.train.refit or selected.global_rank != 0:
        return selected, report, crossfit
    val_weights = _source_weights(cfg, labelled, "val_select", sets["val_select"].ids)
    both = sampler_weights(np.concatenate([weights, val_weights]))
    refit = _refit(sets["train"], sets["val_select"], head_cfg, selected, out, hardware, both)
    return refit, report, crossfit


def _refit(
    train: Any,
    val_select: Any,
    head_cfg: Any,
    selected: Any,
    out: Path,
    hardware: dict,
    sample_weights: np.ndarray | None,
) -> Any:
    """``train.refit``: the head trained again from scratch on train + val_select for the epochs the
    selection run chose (its warmup capped at half of them), the last epoch kept. The selection run's history,
    best epoch and metric stay what the stage reports and plots; the refit only replaces the saved head."""
    from roadwork.train.head import fit_head
    from roadwork.train.head_data import FeatureSet

    epochs = selected.best_epoch + 1
    refit_cfg = replace(
        head_cfg,
        max_epochs=epochs,
        warmup_epochs=min(head_cfg.warmup_epochs, epochs / 2),
        selection_metric="last",
    )
    union = FeatureSet(
        np.concatenate([train.features, val_select.features]),
        np.concatenate([train.labels, val_select.labels]),
        np.concatenate([train.ids, val_select.ids]),
    )
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        refit = fit_head(
            union,
            val_select,
            refit_cfg,
            out_dir=Path(work),
            show_progress=False,
            sample_weights=sample_weights,
            **hardware,
        )
        for path in (refit.head_path, refit.config_path):
            os.replace(path, out / path.name)
    print(f"train: head refit on train + val_select for {epochs} epochs (the selection run's best)")
    return replace(selected, model=refit.model)


def _fit_finetune(
    cfg: RoadworkConfig, variant: str, labelled: pd.DataFrame, head_cfg: Any, out: Path, loggers: list
) -> Any:
    from roadwork.data.render import decode_render
    from roadwork.train.finetune import finetune

    if cfg.trainer.devices != 1:
        raise ValueError(
            f"train.mode=finetune runs in one process, but trainer.devices is {cfg.trainer.devices}; set "
            "trainer.devices=1 (train.mode=head and the adapt stage run on several devices)."
        )
    if cfg.embed.views != "global":
        raise ValueError(
            f"train.mode=finetune trains on the global view, but embed.views is {cfg.embed.views!r}; "
            "set embed.views=global (or use train.mode=head for multi-view)."
        )
    train = labelled[labelled["split"] == "train"].sort_values("path")
    val = labelled[labelled["split"] == "val_select"].sort_values("path")
    # the clean render's bytes, decoded: what the validator sends at level 0
    val_images = [decode_render(data) for data in rendered_bytes(val)]
    return finetune(
        load_variant_backbone(cfg, variant),
        [INGEST / p for p in train["working_path"]],
        train["label"].to_numpy(),
        val_images,
        val["label"].to_numpy(),
        head_cfg,
        finetune_config(cfg.train.finetune),
        out_dir=out,
        augment=train_augment(cfg),
        loggers=loggers,
        accelerator=cfg.trainer.accelerator,
        checkpoint_dir=checkpoint_dir("train", variant),
    )


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from roadwork.plots import training_curves_plot

    out = stage_dir("train", variant)
    model = model_dir(variant)
    labelled = read_split(SPLITS_CSV, "train", ["train", "val_select"])
    head_cfg = head_train_config(cfg.train)
    hard_negatives = crossfit = None  # the hard-negative loop's report, the cross-fitted margins (head mode)
    with tracked("train", cfg, ("train", "embed", "backbone", "trainer"), overrides, variant=variant) as run:
        loggers = run.loggers()
        if cfg.train.mode == "finetune":
            result = _fit_finetune(cfg, variant, labelled, head_cfg, model, loggers)
            backbone, head = result.backbone, result.head
            write_backbone_ref(model, backbone, finetuned=True)
        else:
            result, hard_negatives, crossfit = _fit_on_features(
                cfg, variant, labelled, head_cfg, model, loggers
            )
            if result.global_rank != 0:  # rank 0 writes everything below
                return
            backbone, head = load_variant_backbone(cfg, variant), result.model
            write_backbone_ref(model, backbone, finetuned=False)
        os.replace(model / "history.csv", out / "history.csv")
        metrics: dict[str, float] = {
            "best_epoch": result.best_epoch,
            "selection_metric": result.best_metric,
            "epochs_run": result.epochs_run,
            "optimizer_steps": result.optimizer_steps,
        }
        if hard_negatives is not None:
            atomic_write_csv(out / "logits" / OUT_OF_FOLD_CSV, hard_negatives)
            selected = hard_negatives.loc[hard_negatives["selected"], "sha256"]
            metrics["hard_negatives_selected"] = selected.nunique()
        crossfit_csv = logits_path(variant, CROSSFIT_SPLIT)
        if crossfit is not None:
            atomic_write_csv(crossfit_csv, crossfit)
        else:  # finetune mode or crossfit_folds 0: no stale margins of another model for calibrate to read
            crossfit_csv.unlink(missing_ok=True)
        if cfg.train.mode == "finetune":
            metrics["trainable_parameters"] = result.trainable_parameters
            metrics["merge_max_abs_diff"] = result.merge_max_abs_diff
        val_metrics, computed = _write_val_logits(cfg, variant, backbone, head, labelled, out)
        metrics.update(val_metrics)
        write_json(out / "metrics.json", metrics)
        training_curves_plot(result.history, out / "training_curves.png", best_epoch=result.best_epoch)
        # how many inputs the backbone ran on (0 when embed's features covered them): MLflow only, it
        # depends on the cache, not on the inputs
        run.log_metrics(
            {**metrics, "resumed_epochs": result.resumed_epochs, "backbone_inputs_computed": computed}
        )
        run.log_artifact(model, "model")
        for name in ("metrics.json", "history.csv", "training_curves.png"):
            run.log_artifact(out / name)
    print(
        f"train@{variant} ({cfg.train.mode}): best epoch {result.best_epoch} of {result.epochs_run}, "
        f"val_select MCC {metrics['val_select_mcc']:.3f}, AUROC {metrics['val_select_auroc']:.3f}"
        + (f"; resumed after epoch {result.resumed_epochs - 1}" if result.resumed_epochs else "")
        + f"; backbone inputs computed for the val logits: {computed}"
    )


def _write_val_logits(
    cfg: RoadworkConfig, variant: str, backbone: Any, head: Any, labelled: pd.DataFrame, out: Path
) -> tuple[dict[str, float], int]:
    """Write ``logits/<split>.csv`` for val_select and val_calib, one row per render ``embed`` made
    (sha256, path, render, level, margin), through the one inference path with the cache seeded from
    embed's outputs; return val_select's metrics (MCC / accuracy at margin 0 over the validator's level
    mix and over the clean renders, and AUROC) and how many inputs the backbone had to compute."""
    from roadwork import metrics as M
    from roadwork.stages.embed import split_renders

    fingerprint = backbone.fingerprint()
    cache = variant_feature_cache(cfg, variant, backbone, fingerprint, LOGIT_SPLITS)
    renders = split_renders(cfg)
    metrics: dict[str, float] = {}
    for split in LOGIT_SPLITS:
        rows = labelled[labelled["split"] == split].sort_values("path")
        if split == "val_calib":  # label-free: only the images, through the index of embed's rows
            rows = _val_calib_rows(variant)
        blocks = []
        for render in renders[split]:
            margin = model_margins(
                cfg,
                backbone,
                head,
                rendered_bytes(rows, render),
                desc=f"train@{variant} {split}",
                fingerprint=fingerprint,
                cache=cache,
            )
            level = -1 if render.level is None else render.level
            blocks.append(rows[["sha256", "path"]].assign(render=render.key, level=level, margin=margin))
        frame = pd.concat(blocks, ignore_index=True)
        atomic_write_csv(out / "logits" / f"{split}.csv", frame)
        if split == "val_select":
            labels = rows.drop_duplicates("sha256").set_index("sha256")["label"]
            y = labels.loc[frame["sha256"]].to_numpy()
            margin, clean = frame["margin"].to_numpy(), (frame["level"] == 0).to_numpy()
            metrics["val_select_mcc"] = M.mcc(y, (margin > 0).astype(int))
            metrics["val_select_accuracy"] = M.accuracy(y, (margin > 0).astype(int))
            metrics["val_select_clean_mcc"] = M.mcc(y[clean], (margin[clean] > 0).astype(int))
            metrics["val_select_auroc"] = M.auroc(y, margin)
    return metrics, cache.n_computed


def _val_calib_rows(variant: str) -> pd.DataFrame:
    """val_calib images (sha256, path, working_path) without labels: train may not read val_calib labels."""
    _, rows = load_features(variant, "val_calib")
    rows = rows.drop_duplicates("sha256")
    manifest = pd.read_csv(INGEST / "manifest.csv", dtype={"sha256": str, "path": str})
    return rows[["sha256", "path"]].merge(
        manifest[["sha256", "working_path"]].drop_duplicates("sha256"), on="sha256", how="left"
    )
