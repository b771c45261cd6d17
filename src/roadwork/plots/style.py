"""The look every matplotlib plot shares: figure size and dpi, palette, axes style, and the PNG writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from roadwork.atomic import atomic_write

DPI = 100
"""Dots per inch of every matplotlib PNG (a 6 x 4.5 inch figure is 600 x 450 pixels)."""

CLASS_NAMES = ("None", "Roadwork")
"""Display names of labels 0 and 1, as in the Hugging Face export's ``id2label``."""

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
GREY = "#7f7f7f"


def new_figure(width: float = 6.0, height: float = 4.5) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def style_axes(ax: Any) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(labelsize=8)


def save(fig: Figure, path: Path) -> Path:
    # No "Software" (matplotlib version) chunk and no timestamp: the bytes depend only on the drawing.
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, metadata={"Software": None}))
