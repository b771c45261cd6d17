"""How trustworthy p(roadwork) is and where to cut it: the reliability diagram and the threshold sweep."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray

from roadwork import metrics as rm
from roadwork.plots.checks import check_frame, check_path, check_title
from roadwork.plots.style import GREY, PALETTE, new_figure, save, style_axes
from roadwork.validation import check_finite, check_labels, check_n_bins, check_probabilities

_SWEEP_COLUMNS = ("threshold", "mcc", "precision", "recall", "fnr")


def _check_probs(probs: Any, n: int) -> dict[str, NDArray[np.float64]]:
    if not isinstance(probs, Mapping):
        raise TypeError(
            "probs must be a mapping of name -> p(roadwork) array, e.g. {'before': p_raw, 'after': p_cal}; "
            f"got {type(probs).__name__}."
        )
    if len(probs) == 0:
        raise ValueError("probs is empty; give at least one probability set, e.g. {'model': p}.")
    if len(probs) > len(PALETTE):
        raise ValueError(f"probs has {len(probs)} sets; at most {len(PALETTE)} fit on one diagram.")
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
    check_title(title)
    y = check_labels(y_true, "y_true")
    sets = _check_probs(probs, len(y))
    n = check_n_bins(n_bins)
    fig = new_figure(6.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color=GREY, linewidth=1.0, label="perfect calibration")
    width = 0.8 / n / len(sets)
    for i, (key, p) in enumerate(sets.items()):
        curve = rm.reliability_curve(y, p, n_bins=n, strategy="uniform")
        filled = curve.counts > 0
        color = PALETTE[i]
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
        style_axes(ax)
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
    out = check_path(path)
    return save(reliability_figure(y_true, probs, n_bins=n_bins, title=title), out)


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
    check_title(title)
    cols = check_frame(sweep_frame, "sweep_frame", _SWEEP_COLUMNS)
    chosen = None if chosen_threshold is None else check_finite(chosen_threshold, "chosen_threshold")
    order = np.argsort(cols["threshold"], kind="stable")
    t = cols["threshold"][order]
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    styles = {
        "mcc": ("MCC", PALETTE[3], 2.0),
        "precision": ("precision", PALETTE[0], 1.3),
        "recall": ("recall", PALETTE[2], 1.3),
        "fnr": ("FNR (missed roadwork)", PALETTE[1], 1.3),
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
    style_axes(ax)
    return fig


def threshold_sweep_plot(
    sweep_frame: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    chosen_threshold: float | None = None,
    title: str | None = "Threshold sweep",
) -> Path:
    """Write :func:`threshold_sweep_figure` to ``path`` (a .png) and return it."""
    out = check_path(path)
    return save(threshold_sweep_figure(sweep_frame, chosen_threshold=chosen_threshold, title=title), out)
