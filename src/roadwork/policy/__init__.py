"""roadwork.policy: calibration, exact MCC threshold, FNR guarantee, conformal sets, deployable Policy."""

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
from roadwork.policy.policy import Policy, fit_policy
from roadwork.policy.threshold import (
    SweepResult,
    best_mcc_threshold,
    guaranteed_fnr_threshold,
    mcc_sweep,
    min_positives_for_guarantee,
)

__all__ = [
    "CALIBRATORS",
    "BetaCalibration",
    "Calibrator",
    "ConformalQuantiles",
    "IsotonicCalibration",
    "PlattScaling",
    "Policy",
    "SweepResult",
    "TemperatureScaling",
    "abstain_mask",
    "best_mcc_threshold",
    "fit_calibrator",
    "fit_conformal",
    "fit_policy",
    "guaranteed_fnr_threshold",
    "mcc_sweep",
    "min_class_size",
    "min_positives_for_guarantee",
    "prediction_sets",
]
