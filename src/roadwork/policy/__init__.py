"""roadwork.policy: calibration, prior reweighting, MCC threshold rules, FNR guarantee, conformal, Policy."""

from roadwork.policy.calibration import (
    CALIBRATORS,
    BetaCalibration,
    Calibrator,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
    fit_calibrator,
)
from roadwork.policy.conformal import (
    ConformalQuantiles,
    abstain_mask,
    fit_conformal,
    min_class_size,
    prediction_sets,
)
from roadwork.policy.policy import Policy, ThresholdData, fit_policy
from roadwork.policy.threshold import (
    SweepResult,
    best_mcc_threshold,
    guaranteed_fnr_threshold,
    mcc_sweep,
    min_positives_for_guarantee,
    prior_weights,
    weighted_mcc_sweep,
)
from roadwork.policy.threshold_rules import (
    THRESHOLD_RULES,
    bagged_mcc_threshold,
    select_threshold,
    shrunk_mcc_threshold,
)

__all__ = [
    "CALIBRATORS",
    "THRESHOLD_RULES",
    "BetaCalibration",
    "Calibrator",
    "ConformalQuantiles",
    "IsotonicCalibration",
    "PlattScaling",
    "Policy",
    "SweepResult",
    "TemperatureScaling",
    "ThresholdData",
    "abstain_mask",
    "bagged_mcc_threshold",
    "best_mcc_threshold",
    "fit_calibrator",
    "fit_conformal",
    "fit_policy",
    "guaranteed_fnr_threshold",
    "mcc_sweep",
    "min_class_size",
    "min_positives_for_guarantee",
    "prediction_sets",
    "prior_weights",
    "select_threshold",
    "shrunk_mcc_threshold",
    "weighted_mcc_sweep",
]
