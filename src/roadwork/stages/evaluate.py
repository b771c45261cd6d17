"""evaluate stage: the variant's model with its policy on val_test, once: metrics, CIs, slices, robustness.

The only stage (with ``promote``) that reads val_test. It computes the val_test logits itself from the
cached features and the trained head, applies ``policy.json``, and writes to ``outputs/evaluate/<variant>/``:

* ``metrics.json`` (DVC metrics): every scalar of :func:`roadwork.metrics.classification_report` at the
  policy, bootstrap confidence intervals (resampling dedupe groups, not images) for MCC, accuracy, FNR and
  AUROC, coverage / abstention of the conformal sets, and MCC / accuracy per validator level L0-L3;
* ``slices.csv``: per value of every metadata column: n, accuracy with its Wilson interval, MCC, FNR, FPR;
* ``robustness.csv``: val_test re-rendered as the validator's 224x224 JPEGs at each level L0-L3;
* ``predictions.csv``, ``errors.csv`` (false positives / negatives, worst first), ``hard_negatives.csv``;
* ``plots/``: ROC, PR, reliability, threshold sweep, confusion matrix, risk-coverage, error contact sheet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.stages.common import (
    INGEST,
    SPLITS_CSV,
    load_model,
    model_logits,
    stage_dir,
    tracked,
    write_csv,
    write_json,
)

# splits.csv columns that are not slice metadata
_NOT_METADATA = {"path", "sha256", "size_bytes", "width", "height", "label", "working_path", "group", "split"}


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _NOT_METADATA]


def slice_table(frame: pd.DataFrame, decision: np.ndarray, level: float) -> pd.DataFrame:
    """Per (column, value) of the metadata: n, positives, accuracy and its Wilson interval, MCC, FNR, FPR."""
    from roadwork import metrics as M

    rows = []
    y = frame["label"].to_numpy()
    correct = decision.astype(int) == y
    for column in metadata_columns(frame):
        for value, index in frame.groupby(column, dropna=False).indices.items():
            ys, ds = y[index], decision[index].astype(int)
            counts = M.confusion_counts(ys, ds)
            low, high = M.wilson_interval(int(correct[index].sum()), len(index), level)
            rows.append(
                {
                    "column": column,
                    "value": value,
                    "n": len(index),
                    "n_positive": int(ys.sum()),
                    "accuracy": float(correct[index].mean()),
                    "accuracy_low": low,
                    "accuracy_high": high,
                    "mcc": M.mcc_from_counts(*counts),
                    "fnr": M.fnr_from_counts(counts.tp, counts.fn),
                    "fpr": M.fpr_from_counts(counts.fp, counts.tn),
                }
            )
    return pd.DataFrame(rows)


def robustness(
    cfg: RoadworkConfig,
    variant: str,
    frame: pd.DataFrame,
    backbone: Any,
    head: Any,
    policy: Any,
    fingerprint: str | None = None,
) -> pd.DataFrame:
    """MCC and accuracy of the policy on val_test rendered as the validator renders, per level L0-L3."""
    from roadwork import metrics as M
    from roadwork.data.preprocess import TrainAugment
    from roadwork.train.embed import Render

    y = frame["label"].to_numpy()
    rows = []
    for level in range(4):
        # a one-level TrainAugment with its JPEG step is exactly the validator's render of that level
        augment = TrainAugment(tuple(float(i == level) for i in range(4)), jpeg=True)
        copies = 1 if level == 0 else cfg.evaluate.robustness_copies  # level 0 draws nothing random
        decisions = []
        for copy in range(copies):
            render = Render("augmented", copy=copy, augment=augment, seed=cfg.evaluate.seed)
            logits = model_logits(
                cfg,
                backbone,
                head,
                frame,
                render=render,
                desc=f"evaluate@{variant} L{level}",
                fingerprint=fingerprint,
            )
            decisions.append(policy.apply(logits[:, 1] - logits[:, 0])["decision"].astype(int))
        d, yy = np.concatenate(decisions), np.tile(y, copies)
        rows.append({"level": level, "n": len(yy), "mcc": M.mcc(yy, d), "accuracy": M.accuracy(yy, d)})
    return pd.DataFrame(rows)


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from roadwork import metrics as M
    from roadwork import plots
    from roadwork.policy import Policy, mcc_sweep

    out = stage_dir("evaluate", variant)
    plot_dir = out / "plots"
    params = cfg.evaluate
    frame = read_split(SPLITS_CSV, "evaluate", ["val_test"]).sort_values("path").reset_index(drop=True)
    policy = Policy.from_json(Path("outputs/calibrate") / variant / "policy.json")
    backbone, head = load_model(cfg, variant)
    fingerprint = backbone.fingerprint()
    logits = model_logits(
        cfg, backbone, head, frame, desc=f"evaluate@{variant} val_test", fingerprint=fingerprint
    )
    y = frame["label"].to_numpy(dtype=np.int64)
    margin = (logits[:, 1] - logits[:, 0]).astype(np.float64)
    applied = policy.apply(margin)
    p_deployed, p_cal = applied["probability"], applied["calibrated_probability"]
    decision = applied["decision"].astype(int)

    with tracked("evaluate", cfg, ("evaluate",), overrides, variant=variant) as run:
        report = M.classification_report(y, p_cal, policy.threshold, n_bins=cfg.calibrate.ece_bins)
        metrics: dict[str, float] = {f"test_{k}": v for k, v in report.items()}
        groups = frame["group"].to_numpy()
        interval_metrics = {
            "mcc": lambda yy, d: M.mcc(yy, d.astype(int)),
            "accuracy": lambda yy, d: M.accuracy(yy, d.astype(int)),
            "fnr": lambda yy, d: M.fnr_from_counts(
                int(((d > 0) & (yy == 1)).sum()), int(((d == 0) & (yy == 1)).sum())
            ),
        }
        for name, fn in interval_metrics.items():
            _, low, high = M.bootstrap_ci(
                fn,
                y,
                decision,
                groups=groups,
                n_resamples=params.bootstrap_resamples,
                level=params.ci_level,
                seed=params.seed,
            )
            metrics[f"test_{name}_low"], metrics[f"test_{name}_high"] = low, high
        _, low, high = M.bootstrap_ci(
            M.auroc,
            y,
            margin,
            groups=groups,
            n_resamples=params.bootstrap_resamples,
            level=params.ci_level,
            seed=params.seed,
        )
        metrics["test_auroc_low"], metrics["test_auroc_high"] = low, high
        metrics["test_abstention_rate"] = float(applied["abstain"].mean())
        metrics["test_deployed_agrees_with_decision"] = float(np.all((p_deployed > 0.5) == (decision == 1)))

        levels = robustness(cfg, variant, frame, backbone, head, policy, fingerprint)
        write_csv(levels, out / "robustness.csv")
        for level in levels.itertuples():
            metrics[f"test_L{level.level}_mcc"] = level.mcc
            metrics[f"test_L{level.level}_accuracy"] = level.accuracy

        write_csv(slice_table(frame, decision, params.ci_level), out / "slices.csv")
        predictions = frame[["path", "sha256", "label", "group"]].assign(
            margin=margin,
            calibrated_probability=p_cal,
            probability=p_deployed,
            decision=decision,
            abstain=applied["abstain"],
        )
        write_csv(predictions, out / "predictions.csv")
        errors = predictions[predictions["decision"] != predictions["label"]].assign(
            kind=lambda e: np.where(e["label"] == 1, "false_negative", "false_positive"),
            severity=lambda e: np.where(e["label"] == 1, 1 - e["probability"], e["probability"]),
        )
        errors = errors.sort_values(["severity", "path"], ascending=[False, True])
        write_csv(errors, out / "errors.csv")
        negatives = predictions[predictions["label"] == 0].sort_values(
            ["calibrated_probability", "path"], ascending=[False, True]
        )
        hard = negatives.head(max(params.worst_errors, int((negatives["decision"] == 1).sum())))
        write_csv(hard, out / "hard_negatives.csv")

        plots.roc_plot(y, margin, plot_dir / "roc.png")
        plots.pr_plot(y, margin, plot_dir / "pr.png")
        plots.reliability_plot(
            y, {"calibrated": p_cal}, plot_dir / "reliability.png", n_bins=cfg.calibrate.ece_bins
        )
        plots.threshold_sweep_plot(
            mcc_sweep(y, p_cal).to_frame(),
            plot_dir / "threshold_sweep.png",
            chosen_threshold=policy.threshold,
        )
        plots.confusion_plot(y, decision, plot_dir / "confusion.png")
        plots.risk_coverage_plot(y, p_deployed, plot_dir / "risk_coverage.png")
        worst = errors.head(params.worst_errors)
        thumbs = []
        for path in frame.set_index("sha256").loc[worst["sha256"], "working_path"]:
            with Image.open(INGEST / path) as image:
                thumbs.append(image.convert("RGB"))
        captions = [
            f"{'FN' if e.label == 1 else 'FP'} p={e.probability:.2f} {Path(e.path).name}"
            for e in worst.itertuples()
        ]
        plots.contact_sheet(
            thumbs, captions, plot_dir / "worst_errors.png", title=f"worst errors ({variant})"
        )

        write_json(out / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(plot_dir, "plots")
        for name in ("metrics.json", "slices.csv", "robustness.csv", "errors.csv", "hard_negatives.csv"):
            run.log_artifact(out / name)
    print(
        f"evaluate@{variant}: val_test MCC {metrics['test_mcc']:.3f} "
        f"[{metrics['test_mcc_low']:.3f}, {metrics['test_mcc_high']:.3f}], "
        f"accuracy {metrics['test_accuracy']:.3f}, AUROC {metrics['test_auroc']:.3f}; "
        + ", ".join(f"L{r.level} MCC {r.mcc:.3f}" for r in levels.itertuples())
    )
