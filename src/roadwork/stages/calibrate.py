"""calibrate stage: calibrator, MCC threshold, FNR bound / guarantee and abstention.

Reads ``outputs/train/<variant>/logits/val_calib.csv`` (one row per validator render of each val_calib image:
the clean level-0 render and ``embed.val_renders_per_level`` renders at each of L1-L3) and the val_calib
labels (the split contract). The policy is fitted for the validator: class prior reweighted to
``calibrate.target_prior`` (its draws are 50/50), threshold by ``calibrate.threshold_rule`` with the
renders of one image resampled together. The calibrator, the FNR guarantee and the conformal sets come from
val_calib; the threshold rule runs on ``calibrate.threshold_data``: by default ``train_crossfit``, train's
``logits/train_crossfit.csv`` (every train render scored by a head that never saw its fold, about four times
val_calib's images, so the cut does not follow one small set's noise; ``bench/threshold_policy.py``
compares the rules and the data), or ``val_calib`` itself.
Outputs in ``outputs/calibrate/<variant>/``: ``policy.json`` (what ships), ``threshold_sweep.csv`` (every
distinct cut on the calibrated probability: threshold, tp, fp, tn, fn, MCC, precision, recall, FNR, FPR; a
DVC plot), ``reliability.png`` (before / after), ``threshold_sweep.png``, ``report.json`` (every figure) and
``metrics.json`` (the :data:`HEADLINE` ones).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.images import sha256_file
from roadwork.data.split import read_split
from roadwork.layout import CROSSFIT_SPLIT, METRICS_JSON, REPORT_JSON, SPLITS_CSV, logits_path, stage_dir
from roadwork.stages.common import tracked, write_metrics

HEADLINE = (
    "val_calib_validator_mcc",
    "val_calib_validator_accuracy",
    "val_calib_predicted_positive_rate",
    "val_calib_mcc",
    "val_calib_accuracy",
    "val_calib_fnr",
    "val_calib_fpr",
    "threshold",
    "decision_margin",
    "ece_before",
    "ece_after",
    "abstention_rate",
    "conformal_coverage",
)
"""metrics.json: the policy's figures on val_calib (the validator mix where level renders exist), its cut and
its calibration; every other figure is in report.json."""


def labelled_margins(variant: str, split: str, labels: pd.DataFrame) -> pd.DataFrame:
    """The split's logits joined with its labels (and group / metadata columns) by sha256."""
    path = logits_path(variant, split)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `roadwork train --variant {variant}` first.")
    logits = pd.read_csv(path, dtype={"sha256": str, "path": str, "render": str})
    joined = logits.merge(labels.drop(columns=["path"]), on="sha256", how="left", validate="many_to_one")
    if joined["label"].isna().any() or logits["sha256"].nunique() != len(labels):
        raise ValueError(
            f"{path} holds {len(logits)} rows but {SPLITS_CSV} has {len(labels)} {split} images "
            "(or their sha256 differ); the logits are stale — re-run train."
        )
    return joined.astype({"label": int})


def threshold_data(cfg: RoadworkConfig, variant: str) -> Any:
    """The :class:`~roadwork.policy.ThresholdData` ``calibrate.threshold_data`` names: train's cross-fitted
    margins with their labels (renders grouped by image), or None for val_calib itself."""
    from roadwork.policy import ThresholdData

    if cfg.calibrate.threshold_data == "val_calib":
        return None
    if not logits_path(variant, CROSSFIT_SPLIT).is_file():
        raise FileNotFoundError(
            f"{logits_path(variant, CROSSFIT_SPLIT)}: missing; train writes it in head mode with "
            f"train.crossfit_folds >= 2 (run `roadwork train --variant {variant}`), or set "
            "calibrate.threshold_data=val_calib."
        )
    train = labelled_margins(variant, CROSSFIT_SPLIT, read_split(SPLITS_CSV, "calibrate", ["train"]))
    return ThresholdData(train["margin"].to_numpy(np.float64), train["label"].to_numpy(), train["sha256"])


def fit_validator_policy(
    cfg: RoadworkConfig, z: np.ndarray, y: np.ndarray, images: np.ndarray, threshold_on: Any = None
) -> Any:
    """The policy ``calibrate.*`` describes, fitted on val_calib margins ``z`` (labels ``y``; ``images``
    groups the renders of one image so they are resampled together), its threshold chosen on
    ``threshold_on`` (:func:`threshold_data`) when given."""
    from roadwork.policy import fit_policy

    params = cfg.calibrate
    guarantee = None
    if params.guarantee_alpha is not None:
        guarantee = (params.guarantee_alpha, params.guarantee_delta)
    return fit_policy(
        z,
        y,
        calibrator=params.method,
        max_fnr=params.max_fnr,
        guarantee=guarantee,
        conformal_alpha=params.conformal_alpha,
        split_hash=sha256_file(SPLITS_CSV),
        target_prior=params.target_prior,
        threshold_rule=params.threshold_rule,
        groups=images,
        threshold_on=threshold_on,
    )


def validator_mix(y: np.ndarray, decision: np.ndarray, levels: np.ndarray, images: np.ndarray) -> dict:
    """The validator-mix figures (:func:`roadwork.metrics.validator_metrics`) of val_calib decisions; {}
    when the renders do not cover levels 0-3 (``embed.val_renders_per_level=0``)."""
    from roadwork import metrics as M

    if set(np.unique(levels)) != {0, 1, 2, 3}:
        return {}
    return M.validator_metrics(y, decision, levels, groups=images)


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from scipy.special import expit

    from roadwork import metrics as M
    from roadwork.plots import reliability_plot, threshold_sweep_plot
    from roadwork.policy import mcc_sweep, prediction_sets

    out = stage_dir("calibrate", variant)
    params = cfg.calibrate
    cal = labelled_margins(variant, "val_calib", read_split(SPLITS_CSV, "calibrate", ["val_calib"]))
    z, y = cal["margin"].to_numpy(dtype=np.float64), cal["label"].to_numpy()
    images, levels = cal["sha256"].to_numpy(), cal["level"].to_numpy()
    with tracked("calibrate", cfg, ("calibrate",), overrides, variant=variant) as run:
        threshold_on = threshold_data(cfg, variant)
        policy = fit_validator_policy(cfg, z, y, images, threshold_on)
        policy.to_json(out / "policy.json")
        applied = policy.apply(z)
        p_raw, p_cal = expit(z), applied["calibrated_probability"]
        sweep = mcc_sweep(y, p_cal).to_frame()
        atomic_write_csv(out / "threshold_sweep.csv", sweep)
        reliability_plot(
            y, {"before": p_raw, "after": p_cal}, out / "reliability.png", n_bins=params.ece_bins
        )
        threshold_sweep_plot(sweep, out / "threshold_sweep.png", chosen_threshold=policy.threshold)

        before = M.classification_report(y, p_raw, 0.5, n_bins=params.ece_bins)
        after = M.classification_report(y, p_cal, policy.threshold, n_bins=params.ece_bins)
        metrics: dict[str, float] = {
            "threshold": policy.threshold,
            "decision_margin": policy.decision_margin,
            "scale": policy.scale,
            "n": len(y),
            "n_positive": int(y.sum()),
            "threshold_rows": len(y) if threshold_on is None else len(threshold_on.label),
            "abstention_rate": float(applied["abstain"].mean()),
        }
        for key in ("ece", "mce", "ace", "smooth_ece", "brier", "nll"):
            metrics[f"{key}_before"] = before[key]
            metrics[f"{key}_after"] = after[key]
        for key in ("mcc", "accuracy", "fnr", "fpr", "precision", "recall"):
            metrics[f"val_calib_{key}"] = after[key]
        metrics["val_calib_mcc_at_0.5_uncalibrated"] = before["mcc"]
        mix = validator_mix(y, applied["decision"].astype(int), levels, images)
        metrics.update({f"val_calib_{k}": v for k, v in mix.items()})
        if policy.conformal is not None:
            sets = prediction_sets(p_cal, policy.conformal)
            metrics["conformal_coverage"] = M.set_coverage(y, sets)
            for label in (0, 1):
                metrics[f"conformal_coverage_class{label}"] = M.set_coverage(y, sets, label=label)
        write_metrics(out, metrics, HEADLINE)
        run.log_metrics(metrics)
        for name in ("policy.json", "threshold_sweep.csv", "reliability.png", "threshold_sweep.png"):
            run.log_artifact(out / name)
        run.log_artifact(out / METRICS_JSON)
        run.log_artifact(out / REPORT_JSON)
    print(
        f"calibrate@{variant}: {params.method}, threshold {policy.threshold:.4f} (calibrated p) "
        f"(margin {policy.decision_margin:+.3f}, {params.threshold_rule} on {params.threshold_data}: "
        f"{metrics['threshold_rows']:.0f} renders); val_calib MCC {metrics['val_calib_mcc']:.3f}; "
        f"ECE {metrics['ece_before']:.3f} -> {metrics['ece_after']:.3f}"
    )
