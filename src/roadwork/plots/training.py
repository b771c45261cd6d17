"""Training histories: the head trainer's losses, MCC and learning rate per epoch, and ExPLoRA's
self-supervised loss and agreement per step."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from roadwork.plots.checks import check_frame, check_path, check_title
from roadwork.plots.style import PALETTE, new_figure, save, style_axes
from roadwork.validation import check_int

_HISTORY_REQUIRED = ("epoch", "train_loss", "val_loss", "val_mcc")
_HISTORY_OPTIONAL = ("val_best_mcc", "lr")
_SSL_REQUIRED = ("step", "loss", "agreement")
_SSL_OPTIONAL = ("loss_dino", "loss_ibot", "loss_koleo")


def training_curves_figure(
    history: pd.DataFrame, *, best_epoch: int | None = None, title: str | None = "Head training"
) -> Figure:
    """Losses, validation MCC and (if present) learning rate per epoch, with the selected epoch marked.

    ``history``: the head trainer's ``history.csv`` frame, columns epoch, train_loss, val_loss, val_mcc and
    optionally val_best_mcc and lr. ``best_epoch``: the epoch whose weights were kept (pass the trainer's
    value); by default the first epoch with the highest ``val_mcc`` (the trainer's rule for
    ``selection_metric: mcc``).
    """
    check_title(title)
    cols = check_frame(history, "history", _HISTORY_REQUIRED, _HISTORY_OPTIONAL)
    order = np.argsort(cols["epoch"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    epoch = cols["epoch"]
    if best_epoch is None:
        best = float(epoch[int(np.argmax(cols["val_mcc"]))])
    else:
        best = float(check_int(best_epoch, "best_epoch", 0))
        if best not in set(epoch.tolist()):
            raise ValueError(f"best_epoch={best_epoch} is not an epoch of history (epochs {epoch.tolist()}).")
    row = int(np.flatnonzero(epoch == best)[0])
    has_lr = "lr" in cols
    fig = new_figure(6.5, 7.0 if has_lr else 5.5)
    axes = fig.subplots(3 if has_lr else 2, 1, sharex=True, height_ratios=(3, 3, 2) if has_lr else (1, 1))
    marker = "o" if len(epoch) <= 60 else None
    loss_ax, mcc_ax = axes[0], axes[1]
    loss_ax.plot(epoch, cols["train_loss"], marker=marker, markersize=3, color=PALETTE[0], label="train")
    loss_ax.plot(epoch, cols["val_loss"], marker=marker, markersize=3, color=PALETTE[1], label="val_select")
    loss_ax.set_ylabel("loss")
    mcc_ax.plot(epoch, cols["val_mcc"], marker=marker, markersize=3, color=PALETTE[3], label="MCC at p > 0.5")
    if "val_best_mcc" in cols:
        mcc_ax.plot(
            epoch,
            cols["val_best_mcc"],
            marker=marker,
            markersize=3,
            color=PALETTE[4],
            linestyle="--",
            label="MCC at best threshold",
        )
    mcc_ax.plot(
        [best], [cols["val_mcc"][row]], marker="*", markersize=12, color="black", linestyle="none", zorder=5
    )
    mcc_ax.set_ylabel("val_select MCC")
    if has_lr:
        lr_ax = axes[2]
        lr_ax.plot(epoch, cols["lr"], marker=marker, markersize=3, color=PALETTE[2], label="learning rate")
        if np.all(cols["lr"] > 0) and cols["lr"].max() > 10 * cols["lr"].min():
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("lr")
    for ax in axes:
        ax.axvline(best, color="black", linestyle=":", linewidth=1.0, label=f"selected epoch {int(best)}")
        ax.legend(loc="best", fontsize=8)
        style_axes(ax)
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
    out = check_path(path)
    return save(training_curves_figure(history, best_epoch=best_epoch, title=title), out)


def ssl_curves_figure(
    history: pd.DataFrame, *, title: str | None = "ExPLoRA self-supervised training"
) -> Figure:
    """Self-supervised loss (total and, where non-zero, its DINO / iBOT / KoLeo parts) and teacher-student
    agreement per optimiser step.

    ``history``: ExPLoRA's ``history.csv`` frame, columns step, loss, agreement and optionally loss_dino,
    loss_ibot, loss_koleo (a part that is zero throughout, e.g. iBOT on a CNN, is not drawn). Agreement is
    the fraction of images whose student and teacher prototypes (argmax) agree.
    """
    check_title(title)
    cols = check_frame(history, "history", _SSL_REQUIRED, _SSL_OPTIONAL)
    order = np.argsort(cols["step"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    step = cols["step"]
    marker = "o" if len(step) <= 60 else None
    fig = new_figure(6.5, 5.5)
    loss_ax, agree_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    loss_ax.plot(step, cols["loss"], marker=marker, markersize=3, color=PALETTE[0], label="total")
    for k, name in enumerate(_SSL_OPTIONAL):
        if name in cols and np.any(cols[name] != 0):
            loss_ax.plot(
                step, cols[name], linestyle="--", color=PALETTE[k + 1], label=name.removeprefix("loss_")
            )
    loss_ax.set_ylabel("SSL loss")
    agree_ax.plot(step, cols["agreement"], marker=marker, markersize=3, color=PALETTE[3], label="agreement")
    agree_ax.set_ylim(-0.02, 1.02)
    agree_ax.set_ylabel("teacher-student\nagreement")
    agree_ax.set_xlabel("optimiser step")
    for ax in (loss_ax, agree_ax):
        ax.legend(loc="best", fontsize=8)
        style_axes(ax)
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
    out = check_path(path)
    return save(ssl_curves_figure(history, title=title), out)
