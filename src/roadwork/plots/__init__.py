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

Modules: :mod:`.curves` (ROC, PR, confusion, risk-coverage), :mod:`.calibration` (reliability, threshold
sweep), :mod:`.training` (head and ExPLoRA histories), :mod:`.tables` (the CSV points), :mod:`.contact`
(contact sheet), :mod:`.style` (figure, axes, PNG writer) and :mod:`.checks` (argument checks).
"""

from roadwork.plots.calibration import (
    reliability_figure,
    reliability_plot,
    threshold_sweep_figure,
    threshold_sweep_plot,
)
from roadwork.plots.contact import contact_sheet
from roadwork.plots.curves import (
    confusion_figure,
    confusion_plot,
    pr_figure,
    pr_plot,
    risk_coverage_figure,
    risk_coverage_plot,
    roc_figure,
    roc_plot,
)
from roadwork.plots.style import CLASS_NAMES, DPI
from roadwork.plots.tables import pr_table, reliability_table, roc_table
from roadwork.plots.training import (
    ssl_curves_figure,
    ssl_curves_plot,
    training_curves_figure,
    training_curves_plot,
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
