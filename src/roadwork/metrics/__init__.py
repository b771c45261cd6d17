"""roadwork.metrics: the one place every metric in the project is computed.

Conventions: label 1 = roadwork (positive class); scores/probabilities are p(roadwork) (not top-label
confidence); the decision rule is ``score > threshold`` (strict), so p == 0.5 is *not* roadwork, matching the
validator's ``round(p)``.
"""

from roadwork.metrics.calibration import (
    ReliabilityCurve,
    ace,
    brier,
    ece,
    mce,
    nll,
    reliability_curve,
    smooth_ece,
)
from roadwork.metrics.classification import (
    ConfusionCounts,
    accuracy,
    accuracy_from_counts,
    confusion_counts,
    f1,
    f1_from_counts,
    fnr,
    fnr_from_counts,
    fpr,
    fpr_from_counts,
    mcc,
    mcc_from_counts,
    precision,
    precision_from_counts,
    recall,
    recall_from_counts,
)
from roadwork.metrics.curves import (
    PrCurve,
    RocCurve,
    ThresholdCounts,
    auprc,
    auroc,
    pr_curve,
    roc_curve,
    threshold_counts,
)
from roadwork.metrics.intervals import bootstrap_ci, wilson_interval
from roadwork.metrics.report import classification_report, validator_score
from roadwork.metrics.selective import RiskCoverageCurve, augrc, risk_coverage_curve
from roadwork.metrics.sets import abstention_rate, check_sets, empty_set_rate, set_coverage

__all__ = [
    "ConfusionCounts",
    "PrCurve",
    "ReliabilityCurve",
    "RiskCoverageCurve",
    "RocCurve",
    "ThresholdCounts",
    "abstention_rate",
    "accuracy",
    "accuracy_from_counts",
    "ace",
    "augrc",
    "auprc",
    "auroc",
    "bootstrap_ci",
    "brier",
    "check_sets",
    "classification_report",
    "confusion_counts",
    "ece",
    "empty_set_rate",
    "f1",
    "f1_from_counts",
    "fnr",
    "fnr_from_counts",
    "fpr",
    "fpr_from_counts",
    "mcc",
    "mcc_from_counts",
    "mce",
    "nll",
    "pr_curve",
    "precision",
    "precision_from_counts",
    "recall",
    "recall_from_counts",
    "reliability_curve",
    "risk_coverage_curve",
    "roc_curve",
    "set_coverage",
    "smooth_ece",
    "threshold_counts",
    "validator_score",
    "wilson_interval",
]
