"""How well the scores rank and decide: ROC and precision-recall curves, the confusion matrix and
risk-coverage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from roadwork import metrics as rm
from roadwork.plots.checks import check_labels_and, check_path, check_title
from roadwork.plots.style import CLASS_NAMES, GREY, PALETTE, new_figure, save, style_axes
from roadwork.plots.tables import pr_table, roc_table
from roadwork.validation import check_probabilities, check_scores

PathArg = str | os.PathLike[str]


def _both_classes(y: NDArray[np.int64]) -> bool:
    return 0 < int(y.sum()) < len(y)


def _finish(fig: Figure, ax: Any, labels: tuple[str, str], title: str | None, legend: str) -> Figure:
    """Axis labels, the optional title, the legend at ``legend`` and the house style."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    if title:
        ax.set_title(title)
    ax.legend(loc=legend, fontsize=9)
    style_axes(ax)
    return fig


def roc_figure(y_true: ArrayLike, score: ArrayLike, *, title: str | None = "ROC curve") -> Figure:
    """ROC curve of ``score`` (larger = roadwork) with AUROC in the legend and the chance diagonal.

    With a single class in ``y_true`` the curve is drawn and the legend says AUROC is undefined.
    """
    check_title(title)
    y, s = check_labels_and(y_true, score, "score", check_scores)
    curve = roc_table(y, s)
    label = f"AUROC = {rm.auroc(y, s):.4f}" if _both_classes(y) else "AUROC undefined (one class in y_true)"
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1.0, label="chance")
    ax.plot(curve["fpr"], curve["tpr"], color=PALETTE[0], linewidth=1.8, label=label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    return _finish(
        fig,
        ax,
        ("false-positive rate (None called Roadwork)", "true-positive rate (recall of Roadwork)"),
        title,
        "lower right",
    )


def roc_plot(y_true: ArrayLike, score: ArrayLike, path: PathArg, *, title: str | None = "ROC curve") -> Path:
    """Write :func:`roc_figure` to ``path`` (a .png) and return it."""
    out = check_path(path)
    return save(roc_figure(y_true, score, title=title), out)


def pr_figure(y_true: ArrayLike, score: ArrayLike, *, title: str | None = "Precision-recall curve") -> Figure:
    """Precision-recall curve of ``score`` with average precision in the legend and the positive-rate line.

    The curve is drawn as the step function that average precision integrates. With no roadwork sample in
    ``y_true`` the legend says AP is undefined.
    """
    check_title(title)
    y, s = check_labels_and(y_true, score, "score", check_scores)
    curve = pr_table(y, s)
    n_pos = int(y.sum())
    label = f"AP = {rm.auprc(y, s):.4f}" if n_pos > 0 else "AP undefined (no roadwork in y_true)"
    prevalence = n_pos / len(y)
    fig = new_figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.axhline(
        prevalence, linestyle="--", color=GREY, linewidth=1.0, label=f"positive rate = {prevalence:.4f}"
    )
    ax.plot(
        curve["recall"],
        curve["precision"],
        drawstyle="steps-pre",
        color=PALETTE[0],
        linewidth=1.8,
        label=label,
    )
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    return _finish(fig, ax, ("recall (Roadwork)", "precision (Roadwork)"), title, "lower left")


def pr_plot(
    y_true: ArrayLike, score: ArrayLike, path: PathArg, *, title: str | None = "Precision-recall curve"
) -> Path:
    """Write :func:`pr_figure` to ``path`` (a .png) and return it."""
    out = check_path(path)
    return save(pr_figure(y_true, score, title=title), out)


def confusion_figure(
    y_true: ArrayLike, y_pred: ArrayLike, *, title: str | None = "Confusion matrix"
) -> Figure:
    """2 x 2 confusion matrix (rows: true class, columns: predicted) with counts and row percentages.

    Counts come from :func:`roadwork.metrics.confusion_counts`; MCC and accuracy in the subtitle from the
    metrics module's ``*_from_counts`` functions.
    """
    check_title(title)
    c = rm.confusion_counts(y_true, y_pred)
    matrix = np.array([[c.tn, c.fp], [c.fn, c.tp]], dtype=np.int64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros((2, 2)), where=rows > 0)
    fig = new_figure(4.8, 4.4)
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
    y_true: ArrayLike, y_pred: ArrayLike, path: PathArg, *, title: str | None = "Confusion matrix"
) -> Path:
    """Write :func:`confusion_figure` to ``path`` (a .png) and return it."""
    out = check_path(path)
    return save(confusion_figure(y_true, y_pred, title=title), out)


def risk_coverage_figure(
    y_true: ArrayLike, p: ArrayLike, *, title: str | None = "Risk-coverage (selective prediction)"
) -> Figure:
    """Selective risk and generalized risk vs coverage for the ``p > 0.5`` decision ranked by confidence.

    Curves from :func:`roadwork.metrics.risk_coverage_curve`; the shaded area under the generalized risk
    (from (0, 0)) is AUGRC (:func:`roadwork.metrics.augrc`), shown in the legend.
    """
    check_title(title)
    y, prob = check_labels_and(y_true, p, "p", check_probabilities)
    curve = rm.risk_coverage_curve(y, prob)
    value = rm.augrc(y, prob)
    cov = np.r_[0.0, curve.coverage]
    gen = np.r_[0.0, curve.generalized_risk]
    fig = new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.plot(curve.coverage, curve.selective_risk, color=PALETTE[3], linewidth=1.8, label="selective risk")
    ax.plot(cov, gen, color=PALETTE[0], linewidth=1.3, label=f"generalized risk (AUGRC = {value:.4f})")
    ax.fill_between(cov, gen, color=PALETTE[0], alpha=0.2, linewidth=0)
    top = float(max(np.max(curve.selective_risk), np.max(gen)))
    ax.set(xlim=(0, 1.01), ylim=(0, max(0.05, 1.05 * top)))
    return _finish(
        fig,
        ax,
        ("coverage (fraction accepted, most confident first)", "risk (error rate)"),
        title,
        "upper left",
    )


def risk_coverage_plot(
    y_true: ArrayLike,
    p: ArrayLike,
    path: PathArg,
    *,
    title: str | None = "Risk-coverage (selective prediction)",
) -> Path:
    """Write :func:`risk_coverage_figure` to ``path`` (a .png) and return it."""
    out = check_path(path)
    return save(risk_coverage_figure(y_true, p, title=title), out)
