"""evaluate stage: the variant's model with its policy on val_test, scored as the validator scores it.

The only stage (with ``promote``) that reads val_test labels. Every val_test image is rendered as the
validator would send it (:func:`roadwork.stages.embed.evaluation_renders`: its level-0 JPEG and
``evaluate.renders_per_level`` renders at each of levels 1-3, from the ingest copy), and exactly those bytes
go through the one inference path and ``policy.json``. Beside the model, the plain baseline a user would
build by hand is fitted and scored on the same renders: a standardised logistic regression on the same
backbone's clean train features, C chosen on val_select (:mod:`roadwork.train.probe`; the contract lets
evaluate read train and val_select labels for this and nothing else). Outputs in
``outputs/evaluate/<variant>/``:

* ``report.json``: every figure. ``validator_mcc``, ``validator_accuracy``, ``predicted_positive_rate`` and
  ``expected_reward`` over the validator's level mix (25 % each, labels 50/50), with group-bootstrap
  intervals, per-level MCC and accuracy, the probe's figures (``probe_*``) and ``lift_over_probe`` with its
  paired group-bootstrap interval; then the clean-render figures ``test_*``;
* ``metrics.json`` (DVC metrics): the :data:`HEADLINE` figures of the report only;
* ``robustness.csv``: per level, ours and the probe's MCC / accuracy with intervals;
* ``predictions.csv`` (one row per image and render), ``slices.csv`` (``source`` among its columns),
  ``errors.csv``, ``hard_negatives.csv`` (a report on val_test, never fed back into training; its ``note``
  column says so: ``train.hard_negatives`` mines the train split instead);
* with ``data.sources``, per source in ``metrics.json``: ``source_<name>_n``, ``_fpr`` / ``_fnr`` on the
  validator's level mix and ``_validator_mcc`` where the source holds both labels;
* ``plots/``: ROC, PR, reliability, threshold sweep, confusion matrix, risk-coverage, per-level bars and the
  error contact sheet as PNGs; the ROC, PR and reliability curves also as CSV (DVC plots, so two
  revisions overlay).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from roadwork.atomic import atomic_write_csv
from roadwork.config import RoadworkConfig
from roadwork.data.split import read_split
from roadwork.layout import INGEST, METRICS_JSON, REPORT_JSON, SPLITS_CSV, policy_path, stage_dir
from roadwork.stages.common import tracked, write_metrics
from roadwork.stages.embed import evaluation_renders
from roadwork.stages.modelling import load_model, model_margins, rendered_bytes, variant_feature_cache
from roadwork.stages.scoring import headline, render_predictions, scored_decisions

HARD_NEGATIVES_NOTE = "val_test report only: never fed back into training (train.hard_negatives mines train)"

# splits.csv columns that are not slice metadata
_NOT_METADATA = {"path", "sha256", "size_bytes", "width", "height", "label", "working_path", "group", "split"}
# NATIX's free text: sliced by keywords (evaluate.scene_keywords), not by each distinct text
SCENE_COLUMN = "scene_description"
NO_DESCRIPTION, NO_KEYWORD = "(no description)", "(no keyword)"
# a metadata column with more distinct values than this (a timestamp, a frame or drive id) is an identifier,
# not a slice: one slice per value would only list single images
MAX_SLICE_VALUES = 50


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _NOT_METADATA]


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """``keyword`` as a whole word or phrase: any case, any white space between its words, an optional plural
    ``s``/``es``, and no letter or digit right before or after (``rain`` matches "Rain," and "rains", not
    "rainy" or "terrain")."""
    words = r"\s+".join(re.escape(word) for word in keyword.split())
    return re.compile(rf"(?<!\w){words}(?:e?s)?(?!\w)", re.IGNORECASE)


def keyword_slices(texts: pd.Series, keywords: Sequence[str]) -> dict[str, np.ndarray]:
    """Row indices per keyword found in ``texts`` (an image may be in several), then those of rows with no
    text (:data:`NO_DESCRIPTION`) and of rows whose text holds none of the keywords (:data:`NO_KEYWORD`).
    Slices without rows are left out."""
    text = texts.fillna("").astype(str).to_numpy()
    patterns = {kw: keyword_pattern(kw) for kw in keywords}
    found = {kw: np.array([bool(p.search(t)) for t in text], dtype=bool) for kw, p in patterns.items()}
    empty = np.array([not t.strip() for t in text], dtype=bool)
    any_keyword = np.logical_or.reduce([*found.values(), np.zeros(len(text), dtype=bool)])
    found[NO_DESCRIPTION] = empty
    found[NO_KEYWORD] = ~empty & ~any_keyword
    return {name: np.flatnonzero(mask) for name, mask in found.items() if mask.any()}


def slices(frame: pd.DataFrame, keywords: Sequence[str]) -> Iterator[tuple[str, object, np.ndarray]]:
    """(column, value, row indices) of every slice: one per value of each metadata column with at most
    :data:`MAX_SLICE_VALUES` distinct values, and keyword slices (column ``scene_keyword``) for NATIX's
    ``scene_description``."""
    for column in metadata_columns(frame):
        if column == SCENE_COLUMN:
            for keyword, index in keyword_slices(frame[column], keywords).items():
                yield "scene_keyword", keyword, index
        elif frame[column].nunique(dropna=False) <= MAX_SLICE_VALUES:
            for value, index in frame.groupby(column, dropna=False).indices.items():
                yield column, value, index


def slice_table(
    frame: pd.DataFrame, decision: np.ndarray, level: float, keywords: Sequence[str]
) -> pd.DataFrame:
    """Per slice (:func:`slices`): n, positives, accuracy and its Wilson interval, MCC, FNR, FPR."""
    from roadwork import metrics as M

    rows = []
    y = frame["label"].to_numpy()
    correct = decision.astype(int) == y
    for column, value, index in slices(frame, keywords):
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


def answers(
    cfg: RoadworkConfig,
    variant: str,
    frame: pd.DataFrame,
    model: tuple[Any, Any, Any],
    probe: Any,
    cache: Any,
) -> pd.DataFrame:
    """The model's and the probe's answers on every evaluation render of ``frame``: each render's bytes are
    made once and go through the one inference path for the model and, for the probe, to the same cached
    global features (``cache``: the feature cache, seeded from embed's val_test rows)."""
    from roadwork.models.inference import ViewSpec, embed_inputs

    backbone, head, policy = model

    def predict(render: Any) -> pd.DataFrame:
        inputs = rendered_bytes(frame, render)
        desc = f"evaluate@{variant} L{render.level}"
        margin = model_margins(cfg, backbone, head, inputs, desc=desc, cache=cache)
        applied = policy.apply(margin)
        features, _ = embed_inputs(
            backbone,
            inputs,
            spec=ViewSpec("global"),
            cache=cache,
            batch_size=cfg.embed.batch_size,
            precision=cfg.embed.precision,
            desc=f"{desc} (probe)",
        )
        probe_margin = probe.margin(features[:, 0])
        return pd.DataFrame(
            {
                "margin": margin,
                "calibrated_probability": applied["calibrated_probability"],
                "probability": applied["probability"],
                "decision": applied["decision"].astype(int),
                "abstain": applied["abstain"],
                "probe_margin": probe_margin,
                "probe_decision": (probe_margin > 0).astype(int),
            }
        )

    return render_predictions(frame, evaluation_renders(cfg), predict)


INTERVAL_FIGURES = (
    "expected_reward",
    "validator_mcc",
    "validator_accuracy",
    "L0_mcc",
    "L1_mcc",
    "L2_mcc",
    "L3_mcc",
)
"""The figures given a group-bootstrap interval, for ours and the probe."""


def validator_figures(predictions: pd.DataFrame, cfg: RoadworkConfig) -> dict[str, float]:
    """Headline figures of ours and the probe, with group-bootstrap intervals (resampling dedupe groups,
    an image drawn twice counting twice) and the lift over the probe with its paired interval.

    One pass of resamples serves every interval: each resample scores both models on the same rows, so the
    lift's interval is the paired one of :func:`roadwork.metrics.paired_bootstrap_diff`.
    """
    from roadwork import metrics as M

    params = cfg.evaluate
    ours = headline(predictions, cfg)
    probe = headline(predictions, cfg, decision=predictions["probe_decision"].to_numpy())
    out = dict(ours) | {f"probe_{k}": v for k, v in probe.items()}

    def figures(**kwargs: Any) -> list[float]:
        try:
            metrics = M.validator_metrics(**kwargs)
            # 200 streams per resample: a tenth of the point's cost; its noise is small next to the sampling's
            reward = M.expected_reward(**kwargs, n_streams=200, seed=params.seed)
        except ValueError:  # a resample that drew images of one label only has no validator figure
            return [float("nan")] * len(INTERVAL_FIGURES)
        return [reward, *(metrics[name] for name in INTERVAL_FIGURES[1:])]

    stats = M.group_bootstrap_stats(
        figures,
        (predictions["decision"].to_numpy(), predictions["probe_decision"].to_numpy()),
        predictions["group"].to_numpy(),
        shared={"y_true": predictions["label"].to_numpy(), "level": predictions["level"].to_numpy()},
        stat_groups=predictions["sha256"].to_numpy(),
        n_resamples=params.bootstrap_resamples,
        seed=params.seed,
    )
    for j, name in enumerate(INTERVAL_FIGURES):
        for column, prefix in enumerate(("", "probe_")):
            interval = M.percentile_interval(stats[:, column, j], params.ci_level)
            out[f"{prefix}{name}_low"], out[f"{prefix}{name}_high"] = interval
    mcc = INTERVAL_FIGURES.index("validator_mcc")
    low, high = M.percentile_interval(stats[:, 0, mcc] - stats[:, 1, mcc], params.ci_level)
    lift = out["validator_mcc"] - out["probe_validator_mcc"]
    out.update(lift_over_probe=lift, lift_over_probe_low=low, lift_over_probe_high=high)
    return out


def level_table(predictions: pd.DataFrame, figures: dict[str, float]) -> pd.DataFrame:
    """Per validator level: renders, ours and the probe's MCC / accuracy (labels weighted 50/50, images
    equally, as the validator draws them; ours with its interval) and our predicted-positive rate."""
    rows = []
    for level, part in predictions.groupby("level"):
        key = f"L{int(level)}"
        rows.append(
            {
                "level": int(level),
                "n": len(part),
                **{
                    name: figures[f"{prefix}{key}_{metric}"]
                    for name, prefix, metric in (
                        ("mcc", "", "mcc"),
                        ("mcc_low", "", "mcc_low"),
                        ("mcc_high", "", "mcc_high"),
                        ("accuracy", "", "accuracy"),
                        ("probe_mcc", "probe_", "mcc"),
                        ("probe_accuracy", "probe_", "accuracy"),
                    )
                },
                "predicted_positive_rate": float(part["decision"].mean()),
            }
        )
    return pd.DataFrame(rows)


def source_figures(predictions: pd.DataFrame, frame: pd.DataFrame) -> dict[str, float]:
    """Per source of ``frame`` (val_test's rows), on the validator's level mix (each level counted equally,
    each image equally within a level): its image count, the false-positive rate over its negatives, the
    false-negative rate over its positives and, where it holds both labels, its validator MCC."""
    from roadwork import metrics as M

    source = predictions["sha256"].map(frame.drop_duplicates("sha256").set_index("sha256")["source"])
    decision = scored_decisions(predictions)
    out: dict[str, float] = {}
    for name, index in predictions.groupby(source).indices.items():
        part = predictions.iloc[index]
        y, d, level = part["label"].to_numpy(), decision[index], part["level"].to_numpy()
        out[f"source_{name}_n"] = part["sha256"].nunique()
        for label, rate in ((0, "fpr"), (1, "fnr")):
            wrong = (d != y)[y == label]
            if wrong.size:
                at = level[y == label]
                out[f"source_{name}_{rate}"] = float(
                    np.mean([wrong[at == lv].mean() for lv in np.unique(at)])
                )
        if np.unique(y).size == 2:
            mix = M.validator_metrics(y, d, level, groups=part["sha256"].to_numpy())
            out[f"source_{name}_validator_mcc"] = mix["validator_mcc"]
    return out


def clean_figures(clean: pd.DataFrame, cfg: RoadworkConfig, threshold: float) -> dict[str, float]:
    """``test_*``: every scalar of the classification report on the clean (level-0) renders, with
    group-bootstrap intervals for MCC, accuracy, FNR and AUROC."""
    from roadwork import metrics as M

    params = cfg.evaluate
    y, decision = clean["label"].to_numpy(dtype=np.int64), clean["decision"].to_numpy()
    report = M.classification_report(
        y, clean["calibrated_probability"].to_numpy(), threshold, n_bins=cfg.calibrate.ece_bins
    )
    out: dict[str, float] = {f"test_{k}": v for k, v in report.items()}
    interval_metrics = {
        "mcc": (lambda yy, d: M.mcc(yy, d.astype(int)), decision),
        "accuracy": (lambda yy, d: M.accuracy(yy, d.astype(int)), decision),
        "fnr": (lambda yy, d: M.fnr(yy, d.astype(int)), decision),
        "auroc": (M.auroc, clean["margin"].to_numpy()),
    }
    for name, (fn, score) in interval_metrics.items():
        _, low, high = M.bootstrap_ci(
            fn,
            y,
            score,
            groups=clean["group"].to_numpy(),
            n_resamples=params.bootstrap_resamples,
            level=params.ci_level,
            seed=params.seed,
        )
        out[f"test_{name}_low"], out[f"test_{name}_high"] = low, high
    out["test_abstention_rate"] = float(clean["abstain"].mean())
    out["test_deployed_agrees_with_decision"] = float(np.all((clean["probability"] > 0.5) == (decision == 1)))
    return out


def write_reports(
    out: Path, frame: pd.DataFrame, predictions: pd.DataFrame, cfg: RoadworkConfig, variant: str, policy: Any
) -> None:
    """slices.csv, predictions.csv, errors.csv, hard_negatives.csv and the plots with the ROC, PR and
    reliability curves as CSV (clean renders)."""
    from roadwork import plots
    from roadwork.policy import mcc_sweep

    params, plot_dir = cfg.evaluate, out / "plots"
    clean = predictions[predictions["level"] == 0].reset_index(drop=True)
    y, margin, decision = clean["label"].to_numpy(), clean["margin"].to_numpy(), clean["decision"].to_numpy()
    atomic_write_csv(out / "slices.csv", slice_table(frame, decision, params.ci_level, params.scene_keywords))
    atomic_write_csv(out / "predictions.csv", predictions)
    errors = clean[clean["decision"] != clean["label"]].assign(
        kind=lambda e: np.where(e["label"] == 1, "false_negative", "false_positive"),
        severity=lambda e: np.where(e["label"] == 1, 1 - e["probability"], e["probability"]),
    )
    errors = errors.sort_values(["severity", "path"], ascending=[False, True])
    atomic_write_csv(out / "errors.csv", errors)
    negatives = clean[clean["label"] == 0].sort_values(
        ["calibrated_probability", "path"], ascending=[False, True]
    )
    hardest = negatives.head(max(params.worst_errors, int((negatives["decision"] == 1).sum())))
    atomic_write_csv(out / "hard_negatives.csv", hardest.assign(note=HARD_NEGATIVES_NOTE))
    p_cal = clean["calibrated_probability"].to_numpy()
    plots.roc_plot(y, margin, plot_dir / "roc.png")
    plots.pr_plot(y, margin, plot_dir / "pr.png")
    plots.reliability_plot(
        y, {"calibrated": p_cal}, plot_dir / "reliability.png", n_bins=cfg.calibrate.ece_bins
    )
    # the same curves as data: DVC draws them interactively and overlays revisions (dvc plots diff)
    atomic_write_csv(plot_dir / "roc.csv", plots.roc_table(y, margin))
    atomic_write_csv(plot_dir / "pr.csv", plots.pr_table(y, margin))
    atomic_write_csv(
        plot_dir / "reliability.csv", plots.reliability_table(y, p_cal, n_bins=cfg.calibrate.ece_bins)
    )
    plots.threshold_sweep_plot(
        mcc_sweep(y, p_cal).to_frame(), plot_dir / "threshold_sweep.png", chosen_threshold=policy.threshold
    )
    plots.confusion_plot(y, decision, plot_dir / "confusion.png")
    plots.risk_coverage_plot(y, clean["probability"].to_numpy(), plot_dir / "risk_coverage.png")
    worst = errors.head(params.worst_errors)
    thumbs = []
    for path in frame.set_index("sha256").loc[worst["sha256"], "working_path"]:
        with Image.open(INGEST / path) as image:
            thumbs.append(image.convert("RGB"))
    captions = [
        f"{'FN' if e.label == 1 else 'FP'} p={e.probability:.2f} {Path(e.path).name}"
        for e in worst.itertuples()
    ]
    plots.contact_sheet(thumbs, captions, plot_dir / "worst_errors.png", title=f"worst errors ({variant})")


HEADLINE = (
    "validator_mcc",
    "validator_accuracy",
    "predicted_positive_rate",
    "expected_reward",
    "validator_mcc_low",
    "validator_mcc_high",
    "L0_mcc",
    "L1_mcc",
    "L2_mcc",
    "L3_mcc",
    "probe_validator_mcc",
    "lift_over_probe",
    "lift_over_probe_low",
    "lift_over_probe_high",
    "test_mcc",
)
"""metrics.json, in this order: the validator's figures (what the customer is paid by) first, per-level MCC,
the probe comparison and the clean-render MCC. Every other figure is in report.json."""


def main(cfg: RoadworkConfig, overrides: tuple[str, ...] = (), variant: str = "base") -> None:
    from roadwork import metrics as M
    from roadwork.policy import Policy
    from roadwork.stages.train import fit_variant_probe

    out = stage_dir("evaluate", variant)
    frame = read_split(SPLITS_CSV, "evaluate", ["val_test"]).sort_values("path").reset_index(drop=True)
    policy = Policy.from_json(policy_path(variant))
    backbone, head = load_model(cfg, variant)
    fingerprint = backbone.fingerprint()
    with tracked("evaluate", cfg, ("evaluate",), overrides, variant=variant) as run:
        probe = fit_variant_probe(cfg, variant, read_split(SPLITS_CSV, "evaluate", ["train", "val_select"]))
        cache = variant_feature_cache(cfg, variant, backbone, fingerprint, ("val_test",))
        predictions = answers(cfg, variant, frame, (backbone, head, policy), probe, cache)
        figures = validator_figures(predictions, cfg)
        clean = predictions[predictions["level"] == 0].reset_index(drop=True)
        figures.update(probe_C=probe.C, probe_test_mcc=M.mcc(clean["label"], clean["probe_decision"]))
        figures.update(clean_figures(clean, cfg, policy.threshold))
        if cfg.data.sources:
            figures.update(source_figures(predictions, frame))
        levels = level_table(predictions, figures)
        atomic_write_csv(out / "robustness.csv", levels)
        write_reports(out, frame, predictions, cfg, variant, policy)
        write_metrics(out, figures, HEADLINE)
        # how many inputs the backbone ran on (0 when embed's features covered them): MLflow only
        run.log_metrics({**figures, "backbone_inputs_computed": cache.n_computed})
        # both variants' headline side by side on the pipeline run, where pipelines are compared
        run.log_parent_metrics({f"{variant}.{k}": figures[k] for k in HEADLINE})
        run.log_artifact(out / "plots", "plots")
        for name in (
            METRICS_JSON,
            REPORT_JSON,
            "slices.csv",
            "robustness.csv",
            "errors.csv",
            "hard_negatives.csv",
        ):
            run.log_artifact(out / name)
    f = figures
    print(
        f"evaluate@{variant}: validator MCC {f['validator_mcc']:.3f} [{f['validator_mcc_low']:.3f}, "
        f"{f['validator_mcc_high']:.3f}] (probe {f['probe_validator_mcc']:.3f}; "
        f"lift {f['lift_over_probe']:+.3f} [{f['lift_over_probe_low']:+.3f}, "
        f"{f['lift_over_probe_high']:+.3f}]), expected reward "
        f"{f['expected_reward']:.3f} (probe {f['probe_expected_reward']:.3f}), predicted positive "
        f"{f['predicted_positive_rate']:.2f}; clean MCC {f['test_mcc']:.3f}; "
        + ", ".join(f"L{r.level} {r.mcc:.3f}" for r in levels.itertuples())
        + f"; backbone inputs computed: {cache.n_computed}"
    )
