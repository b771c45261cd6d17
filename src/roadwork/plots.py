"""Diagnostic plots written as PNG files for MLflow and DVC: ROC, PR, reliability, threshold sweep,
confusion matrix, risk-coverage, training curves and a thumbnail contact sheet.

Every number drawn comes from :mod:`roadwork.metrics` (or :mod:`roadwork.policy.threshold` for the sweep
frame); nothing here recomputes a metric. Conventions are the metrics module's: label 1 = roadwork,
scores are p(roadwork) (or any larger-is-roadwork score for ROC/PR), and the decision is ``score > t``.

Each ``*_figure`` function validates its inputs (errors name the offending argument) and returns a
:class:`matplotlib.figure.Figure` (handy for ``mlflow.log_figure`` or a notebook); the matching ``*_plot``
function renders that figure to ``path`` and returns the path. ``roc_table``, ``pr_table`` and
``reliability_table`` return the points those figures draw as a DataFrame, for the CSV files DVC plots
(interactive, and overlaid across revisions by ``dvc plots diff``). Rendering uses the Agg canvas directly:
pyplot is never imported, so no global backend, figure manager or rcParams is touched. PNGs are written
atomically (temp file in the same folder + ``os.replace``) at a fixed size and dpi with no timestamp or
software-version metadata, so identical inputs give byte-identical files in the same environment (DVC
hashes outputs); a different matplotlib / Pillow / FreeType version may still render different bytes.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont, ImageOps

from roadwork import metrics as rm
from roadwork.atomic import atomic_write
from roadwork.metrics._validation import (
    check_labels,
    check_n_bins,
    check_probabilities,
    check_same_length,
    check_scores,
)

__all__ = [
    "CLASS_NAMES",
    "DPI",
    "confusion_figure",
    "confusion_plot",
    "contact_sheet",
    "pr_figure",
    "pr_plot",
    "pr_table",
    "reliability_figure",
    "reliability_plot",
    "reliability_table",
    "risk_coverage_figure",
    "risk_coverage_plot",
    "roc_figure",
    "roc_plot",
    "roc_table",
    "ssl_curves_figure",
    "ssl_curves_plot",
    "threshold_sweep_figure",
    "threshold_sweep_plot",
    "training_curves_figure",
    "training_curves_plot",
]

DPI = 100
"""Dots per inch of every matplotlib PNG (a 6 x 4.5 inch figure is 600 x 450 pixels)."""

CLASS_NAMES = ("None", "Roadwork")
"""Display names of labels 0 and 1, as in the Hugging Face export's ``id2label``."""

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
_GREY = "#7f7f7f"
_SWEEP_COLUMNS = ("threshold", "mcc", "precision", "recall", "fnr")
_HISTORY_REQUIRED = ("epoch", "train_loss", "val_loss", "val_mcc")
_HISTORY_OPTIONAL = ("val_best_mcc", "lr")


# ----------------------------------------------------------------------------------------- validation


def _check_path(path: str | os.PathLike[str]) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike ending in .png; got {type(path).__name__}.")
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (the file is always a PNG); got {str(out)!r}.")
    return out


def _check_title(title: str | None) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None; got {type(title).__name__}.")


def _check_labels_and(
    y_true: ArrayLike, other: ArrayLike, name: str, check: Callable[[ArrayLike, str], NDArray[Any]]
) -> tuple[NDArray[np.int64], NDArray[Any]]:
    y = check_labels(y_true, "y_true")
    values = check(other, name)
    check_same_length([("y_true", y), (name, values)])
    return y, values


def _check_frame(
    frame: Any, name: str, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, NDArray[np.float64]]:
    """Return the named columns of a non-empty DataFrame as finite float arrays, or raise naming ``name``."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}.")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks required column(s) {missing}; it has {[str(c) for c in frame.columns]}."
        )
    if len(frame) == 0:
        raise ValueError(f"{name} is empty; at least one row is required.")
    out: dict[str, NDArray[np.float64]] = {}
    for col in (*required, *(c for c in optional if c in frame.columns)):
        series = frame[col]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_complex_dtype(series)):
            raise TypeError(f"{name}[{col!r}] must be numeric; got dtype {series.dtype}.")
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise ValueError(f"{name}[{col!r}] contains {bad} non-finite value(s) (nan or inf).")
        out[col] = values
    return out


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}.")
    return int(value)


def _check_finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a finite float; got {type(value).__name__}.")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite; got {out}.")
    return out


def _both_classes(y: NDArray[np.int64]) -> bool:
    return 0 < int(y.sum()) < len(y)


# ----------------------------------------------------------------------------------------- rendering


def _new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Any) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def _save(fig: Figure, path: Path) -> Path:
    # No "Software" (matplotlib version) chunk and no timestamp: the bytes depend only on the drawing.
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, metadata={"Software": None}))


# ----------------------------------------------------------------------------------------- ROC and PR


def roc_table(y_true: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """The ROC points :func:`roc_figure` draws, by increasing FPR: ``threshold`` (the rule
    ``score > threshold``), ``fpr`` and ``tpr``, from (0, 0) to (1, 1) (:func:`roadwork.metrics.roc_curve`).
    """
    y, s = _check_labels_and(y_true, score, "score", check_scores)
    curve = rm.roc_curve(y, s)
    return pd.DataFrame({"threshold": curve.thresholds, "fpr": curve.fpr, "tpr": curve.tpr})


def pr_table(y_true: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """The precision-recall points :func:`pr_figure` draws, by increasing recall: ``threshold`` (the rule
    ``score > threshold``), ``recall`` and ``precision`` (:func:`roadwork.metrics.pr_curve`)."""
    y, s = _check_labels_and(y_true, score, "score", check_scores)
    curve = rm.pr_curve(y, s)
    return pd.DataFrame({"threshold": curve.thresholds, "recall": curve.recall, "precision": curve.precision})


def roc_figure(y_true: ArrayLike, score: ArrayLike, *, title: str | None = "ROC curve") -> Figure:
    """ROC curve of ``score`` (larger = roadwork) with AUROC in the legend and the chance diagonal.

    With a single class in ``y_true`` the curve is drawn and the legend says AUROC is undefined.
    """
    _check_title(title)
    y, s = _check_labels_and(y_true, score, "score", check_scores)
    curve = roc_table(y, s)
    label = f"AUROC = {rm.auroc(y, s):.4f}" if _both_classes(y) else "AUROC undefined (one class in y_true)"
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, linewidth=1.0, label="chance")
    ax.plot(curve["fpr"], curve["tpr"], color=_PALETTE[0], linewidth=1.8, label=label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("false-positive rate (None called Roadwork)")
    ax.set_ylabel("true-positive rate (recall of Roadwork)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9)
    _style(ax)
    return fig


def roc_plot(
    y_true: ArrayLike, score: ArrayLike, path: str | os.PathLike[str], *, title: str | None = "ROC curve"
) -> Path:
    """Write :func:`roc_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(roc_figure(y_true, score, title=title), out)


def pr_figure(y_true: ArrayLike, score: ArrayLike, *, title: str | None = "Precision-recall curve") -> Figure:
    """Precision-recall curve of ``score`` with average precision in the legend and the positive-rate line.

    The curve is drawn as the step function that average precision integrates. With no roadwork sample in
    ``y_true`` the legend says AP is undefined.
    """
    _check_title(title)
    y, s = _check_labels_and(y_true, score, "score", check_scores)
    curve = pr_table(y, s)
    n_pos = int(y.sum())
    label = f"AP = {rm.auprc(y, s):.4f}" if n_pos > 0 else "AP undefined (no roadwork in y_true)"
    prevalence = n_pos / len(y)
    fig = _new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.axhline(
        prevalence, linestyle="--", color=_GREY, linewidth=1.0, label=f"positive rate = {prevalence:.4f}"
    )
    ax.plot(
        curve["recall"],
        curve["precision"],
        drawstyle="steps-pre",
        color=_PALETTE[0],
        linewidth=1.8,
        label=label,
    )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("recall (Roadwork)")
    ax.set_ylabel("precision (Roadwork)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize=9)
    _style(ax)
    return fig


def pr_plot(
    y_true: ArrayLike,
    score: ArrayLike,
    path: str | os.PathLike[str],
    *,
    title: str | None = "Precision-recall curve",
) -> Path:
    """Write :func:`pr_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(pr_figure(y_true, score, title=title), out)


# ----------------------------------------------------------------------------------------- reliability


def _check_probs(probs: Any, n: int) -> dict[str, NDArray[np.float64]]:
    if not isinstance(probs, Mapping):
        raise TypeError(
            "probs must be a mapping of name -> p(roadwork) array, e.g. {'before': p_raw, 'after': p_cal}; "
            f"got {type(probs).__name__}."
        )
    if len(probs) == 0:
        raise ValueError("probs is empty; give at least one probability set, e.g. {'model': p}.")
    if len(probs) > len(_PALETTE):
        raise ValueError(f"probs has {len(probs)} sets; at most {len(_PALETTE)} fit on one diagram.")
    out: dict[str, NDArray[np.float64]] = {}
    for key, values in probs.items():
        if not isinstance(key, str):
            raise TypeError(f"probs keys must be str (legend names); got {type(key).__name__} {key!r}.")
        name = f"probs[{key!r}]"
        p = check_probabilities(values, name)
        if len(p) != n:
            raise ValueError(f"inputs must have the same length; y_true has {n}, {name} has {len(p)}.")
        out[key] = p
    return out


def reliability_table(y_true: ArrayLike, p: ArrayLike, *, n_bins: int = 15) -> pd.DataFrame:
    """The reliability points :func:`reliability_figure` draws for one probability set: per non-empty
    equal-width bin, ``bin_center``, ``mean_predicted`` (mean p(roadwork)), ``observed_fraction`` (of
    roadwork) and ``count`` (:func:`roadwork.metrics.reliability_curve`)."""
    y, prob = _check_labels_and(y_true, p, "p", check_probabilities)
    curve = rm.reliability_curve(y, prob, n_bins=check_n_bins(n_bins), strategy="uniform")
    filled = curve.counts > 0
    return pd.DataFrame(
        {
            "bin_center": curve.centers[filled],
            "mean_predicted": curve.mean_confidence[filled],
            "observed_fraction": curve.accuracy[filled],
            "count": curve.counts[filled],
        }
    )


def reliability_figure(
    y_true: ArrayLike,
    probs: Mapping[str, ArrayLike],
    *,
    n_bins: int = 15,
    title: str | None = "Reliability of p(roadwork)",
) -> Figure:
    """Reliability diagram of one or more p(roadwork) sets on equal-width bins, with bin counts beneath.

    Top: observed roadwork fraction vs mean predicted p(roadwork) per non-empty bin
    (:func:`roadwork.metrics.reliability_curve`), the diagonal, and each set's ECE
    (:func:`roadwork.metrics.ece`, same ``n_bins``) in the legend. Bottom: samples per bin (log scale).
    """
    _check_title(title)
    y = check_labels(y_true, "y_true")
    sets = _check_probs(probs, len(y))
    n = check_n_bins(n_bins)
    fig = _new_figure(6.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color=_GREY, linewidth=1.0, label="perfect calibration")
    width = 0.8 / n / len(sets)
    for i, (key, p) in enumerate(sets.items()):
        curve = rm.reliability_curve(y, p, n_bins=n, strategy="uniform")
        filled = curve.counts > 0
        color = _PALETTE[i]
        top.plot(
            curve.mean_confidence[filled],
            curve.accuracy[filled],
            marker="o",
            markersize=4,
            color=color,
            linewidth=1.5,
            label=f"{key}: ECE = {rm.ece(y, p, n_bins=n):.4f}",
        )
        offset = (i - (len(sets) - 1) / 2) * width
        bottom.bar(curve.centers + offset, curve.counts, width=width, color=color, alpha=0.8, label=key)
    top.set(xlim=(0, 1), ylim=(-0.01, 1.01))
    top.set_ylabel("observed fraction of Roadwork")
    if title:
        top.set_title(f"{title} ({n} bins)")
    top.legend(loc="upper left", fontsize=9)
    bottom.set_yscale("log", nonpositive="clip")
    bottom.set_xlabel("mean predicted p(roadwork) in bin")
    bottom.set_ylabel("samples")
    for ax in (top, bottom):
        _style(ax)
    return fig


def reliability_plot(
    y_true: ArrayLike,
    probs: Mapping[str, ArrayLike],
    path: str | os.PathLike[str],
    *,
    n_bins: int = 15,
    title: str | None = "Reliability of p(roadwork)",
) -> Path:
    """Write :func:`reliability_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(reliability_figure(y_true, probs, n_bins=n_bins, title=title), out)


# ----------------------------------------------------------------------------------------- threshold sweep


def threshold_sweep_figure(
    sweep_frame: pd.DataFrame,
    *,
    chosen_threshold: float | None = None,
    title: str | None = "Threshold sweep",
) -> Figure:
    """MCC, precision, recall and FNR against the threshold, from ``SweepResult.to_frame()``.

    ``sweep_frame`` needs columns threshold, mcc, precision, recall and fnr (any order of rows). The
    ``chosen_threshold`` (e.g. ``SweepResult.best()[0]``), if given, is a vertical line; when it is one of
    the frame's cuts its MCC (read from the frame) is shown in the legend.
    """
    _check_title(title)
    cols = _check_frame(sweep_frame, "sweep_frame", _SWEEP_COLUMNS)
    chosen = None if chosen_threshold is None else _check_finite_float(chosen_threshold, "chosen_threshold")
    order = np.argsort(cols["threshold"], kind="stable")
    t = cols["threshold"][order]
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    styles = {
        "mcc": ("MCC", _PALETTE[3], 2.0),
        "precision": ("precision", _PALETTE[0], 1.3),
        "recall": ("recall", _PALETTE[2], 1.3),
        "fnr": ("FNR (missed roadwork)", _PALETTE[1], 1.3),
    }
    for col, (label, color, lw) in styles.items():
        ax.plot(t, cols[col][order], color=color, linewidth=lw, label=label)
    if chosen is not None:
        label = f"chosen threshold = {chosen:.4g}"
        exact = np.flatnonzero(t == chosen)
        if len(exact):
            label += f" (MCC {cols['mcc'][order][exact[0]]:.4f})"
        ax.axvline(chosen, color="black", linestyle="--", linewidth=1.0, label=label)
    lo, hi = float(t[0]), float(t[-1])
    pad = 0.01 * (hi - lo) if hi > lo else 0.5
    ax.set(xlim=(lo - pad, hi + pad), ylim=(-1.02, 1.02) if cols["mcc"].min() < 0 else (-0.02, 1.02))
    ax.set_xlabel("threshold (roadwork iff score > threshold)")
    ax.set_ylabel("value")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    _style(ax)
    return fig


def threshold_sweep_plot(
    sweep_frame: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    chosen_threshold: float | None = None,
    title: str | None = "Threshold sweep",
) -> Path:
    """Write :func:`threshold_sweep_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(threshold_sweep_figure(sweep_frame, chosen_threshold=chosen_threshold, title=title), out)


# ----------------------------------------------------------------------------------------- confusion


def confusion_figure(
    y_true: ArrayLike, y_pred: ArrayLike, *, title: str | None = "Confusion matrix"
) -> Figure:
    """2 x 2 confusion matrix (rows: true class, columns: predicted) with counts and row percentages.

    Counts come from :func:`roadwork.metrics.confusion_counts`; MCC and accuracy in the subtitle from the
    metrics module's ``*_from_counts`` functions.
    """
    _check_title(title)
    c = rm.confusion_counts(y_true, y_pred)
    matrix = np.array([[c.tn, c.fp], [c.fn, c.tp]], dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros((2, 2)), where=rows > 0)
    fig = _new_figure(4.8, 4.4)
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            color = "white" if share[i, j] > 0.6 else "black"
            ax.text(j, i, f"{matrix[i, j]}\n{100 * share[i, j]:.1f}%", ha="center", va="center", color=color)
    ax.set_xticks([0, 1], CLASS_NAMES)
    ax.set_yticks([0, 1], CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    mcc = rm.mcc_from_counts(c.tp, c.fp, c.tn, c.fn)
    acc = rm.accuracy_from_counts(c.tp, c.fp, c.tn, c.fn)
    summary = f"MCC = {mcc:.4f}, accuracy = {acc:.4f}, n = {int(matrix.sum())}"
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    return fig


def confusion_plot(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    path: str | os.PathLike[str],
    *,
    title: str | None = "Confusion matrix",
) -> Path:
    """Write :func:`confusion_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(confusion_figure(y_true, y_pred, title=title), out)


# ----------------------------------------------------------------------------------------- risk-coverage


def risk_coverage_figure(
    y_true: ArrayLike, p: ArrayLike, *, title: str | None = "Risk-coverage (selective prediction)"
) -> Figure:
    """Selective risk and generalized risk vs coverage for the ``p > 0.5`` decision ranked by confidence.

    Curves from :func:`roadwork.metrics.risk_coverage_curve`; the shaded area under the generalized risk
    (from (0, 0)) is AUGRC (:func:`roadwork.metrics.augrc`), shown in the legend.
    """
    _check_title(title)
    y, prob = _check_labels_and(y_true, p, "p", check_probabilities)
    curve = rm.risk_coverage_curve(y, prob)
    value = rm.augrc(y, prob)
    cov = np.r_[0.0, curve.coverage]
    gen = np.r_[0.0, curve.generalized_risk]
    fig = _new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.plot(curve.coverage, curve.selective_risk, color=_PALETTE[3], linewidth=1.8, label="selective risk")
    ax.plot(cov, gen, color=_PALETTE[0], linewidth=1.3, label=f"generalized risk (AUGRC = {value:.4f})")
    ax.fill_between(cov, gen, color=_PALETTE[0], alpha=0.2, linewidth=0)
    top = float(max(np.max(curve.selective_risk), np.max(gen)))
    ax.set(xlim=(0, 1.01), ylim=(0, max(0.05, 1.05 * top)))
    ax.set_xlabel("coverage (fraction accepted, most confident first)")
    ax.set_ylabel("risk (error rate)")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", fontsize=9)
    _style(ax)
    return fig


def risk_coverage_plot(
    y_true: ArrayLike,
    p: ArrayLike,
    path: str | os.PathLike[str],
    *,
    title: str | None = "Risk-coverage (selective prediction)",
) -> Path:
    """Write :func:`risk_coverage_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(risk_coverage_figure(y_true, p, title=title), out)


# ----------------------------------------------------------------------------------------- training curves


def training_curves_figure(
    history: pd.DataFrame, *, best_epoch: int | None = None, title: str | None = "Head training"
) -> Figure:
    """Losses, validation MCC and (if present) learning rate per epoch, with the selected epoch marked.

    ``history``: the head trainer's ``history.csv`` frame, columns epoch, train_loss, val_loss, val_mcc and
    optionally val_best_mcc and lr. ``best_epoch``: the epoch whose weights were kept (pass the trainer's
    value); by default the first epoch with the highest ``val_mcc`` (the trainer's rule for
    ``selection_metric: mcc``).
    """
    _check_title(title)
    cols = _check_frame(history, "history", _HISTORY_REQUIRED, _HISTORY_OPTIONAL)
    order = np.argsort(cols["epoch"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    epoch = cols["epoch"]
    if best_epoch is None:
        best = float(epoch[int(np.argmax(cols["val_mcc"]))])
    else:
        best = float(_check_int(best_epoch, "best_epoch", 0))
        if best not in set(epoch.tolist()):
            raise ValueError(f"best_epoch={best_epoch} is not an epoch of history (epochs {epoch.tolist()}).")
    row = int(np.flatnonzero(epoch == best)[0])
    has_lr = "lr" in cols
    fig = _new_figure(6.5, 7.0 if has_lr else 5.5)
    axes = fig.subplots(3 if has_lr else 2, 1, sharex=True, height_ratios=(3, 3, 2) if has_lr else (1, 1))
    marker = "o" if len(epoch) <= 60 else None
    loss_ax, mcc_ax = axes[0], axes[1]
    loss_ax.plot(epoch, cols["train_loss"], marker=marker, markersize=3, color=_PALETTE[0], label="train")
    loss_ax.plot(epoch, cols["val_loss"], marker=marker, markersize=3, color=_PALETTE[1], label="val_select")
    loss_ax.set_ylabel("loss")
    mcc_ax.plot(
        epoch, cols["val_mcc"], marker=marker, markersize=3, color=_PALETTE[3], label="MCC at p > 0.5"
    )
    if "val_best_mcc" in cols:
        mcc_ax.plot(
            epoch,
            cols["val_best_mcc"],
            marker=marker,
            markersize=3,
            color=_PALETTE[4],
            linestyle="--",
            label="MCC at best threshold",
        )
    mcc_ax.plot(
        [best], [cols["val_mcc"][row]], marker="*", markersize=12, color="black", linestyle="none", zorder=5
    )
    mcc_ax.set_ylabel("val_select MCC")
    if has_lr:
        lr_ax = axes[2]
        lr_ax.plot(epoch, cols["lr"], marker=marker, markersize=3, color=_PALETTE[2], label="learning rate")
        if np.all(cols["lr"] > 0) and cols["lr"].max() > 10 * cols["lr"].min():
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("lr")
    for ax in axes:
        ax.axvline(best, color="black", linestyle=":", linewidth=1.0, label=f"selected epoch {int(best)}")
        ax.legend(loc="best", fontsize=8)
        _style(ax)
    axes[-1].set_xlabel("epoch")
    if len(epoch) == 1:
        axes[-1].set_xlim(best - 1, best + 1)
    if title:
        axes[0].set_title(title)
    return fig


def training_curves_plot(
    history: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    best_epoch: int | None = None,
    title: str | None = "Head training",
) -> Path:
    """Write :func:`training_curves_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(training_curves_figure(history, best_epoch=best_epoch, title=title), out)


_SSL_REQUIRED = ("step", "loss", "agreement")
_SSL_OPTIONAL = ("loss_dino", "loss_ibot", "loss_koleo")


def ssl_curves_figure(
    history: pd.DataFrame, *, title: str | None = "ExPLoRA self-supervised training"
) -> Figure:
    """Self-supervised loss (total and, where non-zero, its DINO / iBOT / KoLeo parts) and teacher-student
    agreement per optimiser step.

    ``history``: ExPLoRA's ``history.csv`` frame, columns step, loss, agreement and optionally loss_dino,
    loss_ibot, loss_koleo (a part that is zero throughout, e.g. iBOT on a CNN, is not drawn). Agreement is
    the fraction of images whose student and teacher prototypes (argmax) agree.
    """
    _check_title(title)
    cols = _check_frame(history, "history", _SSL_REQUIRED, _SSL_OPTIONAL)
    order = np.argsort(cols["step"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    step = cols["step"]
    marker = "o" if len(step) <= 60 else None
    fig = _new_figure(6.5, 5.5)
    loss_ax, agree_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    loss_ax.plot(step, cols["loss"], marker=marker, markersize=3, color=_PALETTE[0], label="total")
    for k, name in enumerate(_SSL_OPTIONAL):
        if name in cols and np.any(cols[name] != 0):
            loss_ax.plot(
                step, cols[name], linestyle="--", color=_PALETTE[k + 1], label=name.removeprefix("loss_")
            )
    loss_ax.set_ylabel("SSL loss")
    agree_ax.plot(step, cols["agreement"], marker=marker, markersize=3, color=_PALETTE[3], label="agreement")
    agree_ax.set_ylim(-0.02, 1.02)
    agree_ax.set_ylabel("teacher-student\nagreement")
    agree_ax.set_xlabel("optimiser step")
    for ax in (loss_ax, agree_ax):
        ax.legend(loc="best", fontsize=8)
        _style(ax)
    if len(step) == 1:
        agree_ax.set_xlim(step[0] - 1, step[0] + 1)
    if title:
        loss_ax.set_title(title)
    return fig


def ssl_curves_plot(
    history: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    title: str | None = "ExPLoRA self-supervised training",
) -> Path:
    """Write :func:`ssl_curves_figure` to ``path`` (a .png) and return it."""
    out = _check_path(path)
    return _save(ssl_curves_figure(history, title=title), out)


# ----------------------------------------------------------------------------------------- contact sheet


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; overflowing text ends in an ellipsis on the last line."""
    chars = max(4, int(width / max(1.0, draw.textlength("n", font=font))))
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, chars, break_long_words=True) or [""])
    fitted: list[str] = []
    for line in lines:
        while line and draw.textlength(line, font=font) > width:
            line = line[:-1]
        fitted.append(line)
    if len(fitted) > max_lines:
        last = fitted[max_lines - 1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        fitted = [*fitted[: max_lines - 1], last + "…"]
    return fitted


def contact_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    path: str | os.PathLike[str],
    *,
    columns: int = 6,
    thumb: int = 160,
    title: str | None = None,
) -> Path:
    """A grid of ``thumb``-pixel thumbnails (aspect kept, centred) with each caption wrapped beneath.

    Captions longer than three lines end in an ellipsis. With no images (e.g. no false positive to show) a
    small sheet saying so is written, so a declared output always exists. Pure Pillow; deterministic.
    """
    out = _check_path(path)
    _check_title(title)
    if isinstance(images, (str, bytes, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of PIL.Image.Image; got {type(images).__name__}.")
    if isinstance(captions, (str, bytes)) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a sequence of str; got {type(captions).__name__}.")
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL.Image.Image; got {type(img).__name__}.")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"images[{i}] is empty ({img.width} x {img.height}).")
    for i, cap in enumerate(captions):
        if not isinstance(cap, str):
            raise TypeError(f"captions[{i}] must be a str; got {type(cap).__name__}.")
    if len(captions) != len(images):
        raise ValueError(
            f"images and captions must have the same length; images has {len(images)}, "
            f"captions has {len(captions)}."
        )
    cols = _check_int(columns, "columns", 1)
    size = _check_int(thumb, "thumb", 32)

    font_size = max(9, min(14, size // 12))
    font = _font(font_size)
    line_h = font_size + 3
    max_lines = 3
    pad = 6
    cell_w, cell_h = size + 2 * pad, size + 2 * pad + max_lines * line_h
    title_font = _font(font_size + 3)
    title_h = (font_size + 3) + 2 * pad if title else 0
    n = len(images)
    grid_cols = min(cols, n) if n else 1
    grid_rows = math.ceil(n / cols) if n else 1
    sheet = Image.new("RGB", (grid_cols * cell_w, title_h + grid_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        for k, line in enumerate(_wrap(draw, title, title_font, sheet.width - 2 * pad, 1)):
            draw.text((pad, pad + k * line_h), line, fill="black", font=title_font)
    if n == 0:
        draw.rectangle((pad, title_h + pad, pad + size, title_h + pad + size), fill="#eeeeee")
        draw.text((2 * pad, title_h + pad + size // 2 - line_h), "no images", fill="black", font=font)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        x0, y0 = (i % cols) * cell_w, title_h + (i // cols) * cell_h
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        small = ImageOps.contain(rgb, (size, size), method=Image.Resampling.BICUBIC)
        draw.rectangle((x0 + pad, y0 + pad, x0 + pad + size - 1, y0 + pad + size - 1), fill="#eeeeee")
        sheet.paste(small, (x0 + pad + (size - small.width) // 2, y0 + pad + (size - small.height) // 2))
        for k, line in enumerate(_wrap(draw, cap, font, size, max_lines)):
            draw.text((x0 + pad, y0 + size + 2 * pad + k * line_h), line, fill="black", font=font)
    return atomic_write(out, lambda p: sheet.save(p, format="PNG", compress_level=6))
