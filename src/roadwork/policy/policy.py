"""The deployable decision policy: calibrator + threshold folded into one probability the validator rounds.

The validator binarises our probability with ``round(p)``, so p must exceed 0.5 exactly when the policy
decides roadwork. For a margin z the policy decides roadwork iff z > z* (``decision_margin``), where z* is
the raw margin at which the calibrated probability crosses the chosen threshold t. The deployed probability
is sigmoid((z - z*) / s) with a positive ``scale`` s (T for temperature scaling, which makes it equal
sigmoid(z / T - logit(t)); 1 / a for Platt; see each calibrator's ``deploy_scale``).

Because the validator draws its labels 50/50, :func:`fit_policy` by default reweights the calibration set to
prior 0.5 (``target_prior``) and picks the threshold with the small-sample ``"shrink"`` rule
(:func:`roadwork.policy.threshold_rules.shrunk_mcc_threshold`) instead of the exact MCC argmax.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from roadwork.atomic import atomic_write_json
from roadwork.policy.calibration import Calibrator, fit_calibrator
from roadwork.policy.conformal import ConformalQuantiles, abstain_mask, fit_conformal, prediction_sets
from roadwork.policy.threshold import check_target_prior, guaranteed_fnr_threshold, prior_weights
from roadwork.policy.threshold_rules import check_groups, check_threshold_rule, select_threshold
from roadwork.validation import check_labels, check_same_length, check_scores

_HALF_UP = float(np.nextafter(0.5, 1.0))
# Keys added after the first policy.json format; files written before them load with the dataclass defaults.
_OPTIONAL_KEYS = frozenset({"target_prior", "threshold_rule"})


def _opt_fraction(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Policy.{name} must be a float or None; got {type(value).__name__}.")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"Policy.{name} must be in (0, 1); got {v}.")
    return v


@dataclass(frozen=True)
class Policy:
    """A fitted decision policy (JSON round-trippable; no pickle).

    Fields: ``calibrator`` (``Calibrator.to_dict()`` output), ``threshold`` t on the calibrated probability
    (roadwork iff calibrated p > t), ``decision_margin`` z* (roadwork iff z > z*; may be +-inf for a policy
    that always/never decides roadwork, written as JSON Infinity), ``scale`` s > 0, ``split_hash`` (identity
    of the calibration split), ``max_fnr`` (the FNR constraint used in selection, or None), ``alpha`` and
    ``delta`` (the FNR guarantee: true FNR <= alpha with probability >= 1 - delta, or both None),
    ``conformal`` (per-class conformal quantiles, or None), ``target_prior`` (the class prior the calibrator
    and threshold were reweighted to; None = the calibration set's own prior) and ``threshold_rule`` (one of
    ``THRESHOLD_RULES``). The last two default to None and "argmax", which is how policies were fitted
    before they existed, so older policy.json files without them still load.
    """

    calibrator: dict[str, Any]
    threshold: float
    decision_margin: float
    scale: float
    split_hash: str
    max_fnr: float | None = None
    alpha: float | None = None
    delta: float | None = None
    conformal: ConformalQuantiles | None = None
    target_prior: float | None = None
    threshold_rule: str = "argmax"

    def __post_init__(self) -> None:
        Calibrator.from_dict(self.calibrator)
        for name in ("threshold", "decision_margin", "scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
                raise ValueError(f"Policy.{name} must be a number; got {v!r}.")
        if not math.isfinite(self.threshold):
            raise ValueError(f"Policy.threshold must be finite; got {self.threshold}.")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Policy.scale must be finite and > 0; got {self.scale}.")
        if not isinstance(self.split_hash, str) or not self.split_hash:
            raise ValueError(f"Policy.split_hash must be a non-empty string; got {self.split_hash!r}.")
        for name in ("max_fnr", "alpha", "delta", "target_prior"):
            _opt_fraction(getattr(self, name), name)
        check_threshold_rule(self.threshold_rule)
        if (self.alpha is None) != (self.delta is None):
            raise ValueError(
                "Policy.alpha and Policy.delta must be given together (FNR guarantee) or both None."
            )
        if self.conformal is not None and not isinstance(self.conformal, ConformalQuantiles):
            raise TypeError(
                f"Policy.conformal must be ConformalQuantiles or None; got {type(self.conformal).__name__}."
            )

    def to_json(self, path: str | Path) -> None:
        """Write the policy as JSON to ``path`` (parent directory must exist)."""
        data = asdict(self)
        data["conformal"] = None if self.conformal is None else self.conformal.to_dict()
        atomic_write_json(path, data)

    @classmethod
    def from_json(cls, path: str | Path) -> Policy:
        """Read a policy written by :meth:`to_json`; unknown or missing keys raise ValueError naming them.

        ``target_prior`` and ``threshold_rule`` may be absent (files from before they existed): they then
        take their defaults None and "argmax".
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc}).") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a JSON object; got {type(data).__name__}.")
        # to_json writes every field (None included), so a file lacking one (other than the keys added
        # later) was not written by it.
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data) - _OPTIONAL_KEYS)
        if unknown:
            raise ValueError(f"{p}: unknown policy key(s) {unknown}; expected keys {sorted(names)}.")
        if missing:
            raise ValueError(f"{p}: missing policy key(s) {missing}.")
        conformal = data.get("conformal")
        data["conformal"] = None if conformal is None else ConformalQuantiles.from_dict(conformal)
        return cls(**data)

    def apply(self, z: ArrayLike) -> dict[str, NDArray[np.generic]]:
        """Apply the policy to 1-D finite margins ``z`` (z1 - z0).

        Returns ``calibrated_probability`` (the calibrator's p(roadwork)), ``probability`` (the deployed
        sigmoid((z - z*) / s)), ``decision`` (bool, z > z*, equal to calibrated p > t) and ``abstain`` (bool:
        the conformal set is not a single label; all False without conformal quantiles).
        ``probability > 0.5`` holds exactly where ``decision`` does: at z == z* the probability is 0.5 (not
        roadwork), and for the few z just above z* where float64 sigmoid rounds to 0.5 it is raised by one
        ulp to the next float above 0.5.
        """
        margins = check_scores(z, "z")
        calibrator = Calibrator.from_dict(self.calibrator)
        calibrated = calibrator.predict_proba(margins)
        decision = margins > self.decision_margin
        probability = expit((margins - self.decision_margin) / self.scale)
        probability = np.where(decision & (probability <= 0.5), _HALF_UP, probability)
        if self.conformal is None:
            abstain = np.zeros(len(margins), dtype=bool)
        else:
            abstain = abstain_mask(prediction_sets(calibrated, self.conformal))
        return {
            "calibrated_probability": calibrated,
            "probability": probability,
            "decision": decision,
            "abstain": abstain,
        }


@dataclass(frozen=True)
class ThresholdData:
    """Margins (with labels and optional group ids) to choose the threshold on instead of the calibration
    set, e.g. the cross-fitted margins of the train split's renders (``calibrate.threshold_data``)."""

    margin: ArrayLike
    label: ArrayLike
    groups: ArrayLike | None = None


def fit_policy(
    z_cal: ArrayLike,
    y_cal: ArrayLike,
    *,
    calibrator: str = "temperature",
    max_fnr: float | None = None,
    guarantee: tuple[float, float] | None = None,
    conformal_alpha: float | None = None,
    split_hash: str,
    target_prior: float | None = 0.5,
    threshold_rule: str = "shrink",
    groups: ArrayLike | None = None,
    n_boot: int = 200,
    seed: int = 0,
    threshold_on: ThresholdData | None = None,
) -> Policy:
    """Fit a calibrator on (z_cal, y_cal), choose the threshold and fold it into a :class:`Policy`.

    Steps: reweight rows to ``target_prior`` pi (positives pi / p_hat, negatives (1 - pi) / (1 - p_hat);
    None = unit weights, the data's own prior); fit ``calibrator`` on the margins with those weights; choose
    the threshold on the calibrated probabilities by ``threshold_rule`` on the weighted MCC sweep:
    ``"shrink"`` (default; the argmax shrunk towards the prior-neutral cut by its bootstrap noise, resampling
    whole ``groups`` — e.g. an image's renders — when given, seeded by ``seed`` with ``n_boot`` replicates;
    see :func:`roadwork.policy.threshold_rules.shrunk_mcc_threshold`), ``"bagged"`` (the median of bootstrap
    replicates' argmax cuts, :func:`~roadwork.policy.threshold_rules.bagged_mcc_threshold`) or ``"argmax"``
    (the exact best cut). The
    choice obeys FNR <= ``max_fnr`` (on this set) and, with ``guarantee=(alpha, delta)``, threshold <= the
    Learn-then-Test threshold that certifies true FNR <= alpha with probability >= 1 - delta (every lower
    threshold is certified too, FNR being monotone). The threshold is moved onto the margin with
    ``margin_at``; optionally per-class conformal quantiles are fitted at ``conformal_alpha``.
    ``target_prior=None, threshold_rule="argmax"`` reproduces the earlier behaviour exactly.

    ``threshold_on`` (:class:`ThresholdData`): the threshold rule (and ``max_fnr``) runs on these margins,
    put through the calibrator fitted on (z_cal, y_cal) and reweighted to ``target_prior`` on their own
    labels, instead of on the calibration set (``groups`` then goes unused); the guarantee and the conformal
    quantiles stay on the calibration set, whose exchangeability with deployment they need.

    The guarantee and the conformal coverage stay valid although the calibrator is fitted on the same data:
    all calibrators are monotone, so both only depend on the ranks of the calibration margins within each
    class (ties that isotonic regression creates only make them more conservative); prior weights are
    constant within a class, so they change neither. Raises ValueError for ``target_prior`` outside (0, 1),
    an unknown ``threshold_rule`` or ``groups`` of the wrong length.
    """
    z = check_scores(z_cal, "z_cal")
    y = check_labels(y_cal, "y_cal")
    check_same_length([("z_cal", z), ("y_cal", y)])
    check_threshold_rule(threshold_rule)
    prior = None if target_prior is None else check_target_prior(target_prior)
    check_groups(groups, len(z))
    weights = None if prior is None else prior_weights(y, prior)
    cal = fit_calibrator(calibrator, z, y, weights)
    p = cal.predict_proba(z)
    alpha = delta = None
    max_threshold = None
    if guarantee is not None:
        if not isinstance(guarantee, (tuple, list)) or len(guarantee) != 2:
            raise TypeError(f"guarantee must be a pair (alpha, delta) or None; got {guarantee!r}.")
        max_threshold = guaranteed_fnr_threshold(y, p, guarantee[0], guarantee[1])
        alpha, delta = float(guarantee[0]), float(guarantee[1])
    y_thr, p_thr, groups_thr = y, p, groups
    if threshold_on is not None:
        z_thr = check_scores(threshold_on.margin, "threshold_on.margin")
        y_thr = check_labels(threshold_on.label, "threshold_on.label")
        check_same_length([("threshold_on.margin", z_thr), ("threshold_on.label", y_thr)])
        p_thr, groups_thr = cal.predict_proba(z_thr), threshold_on.groups
    threshold, _ = select_threshold(
        y_thr,
        p_thr,
        rule=threshold_rule,
        target_prior=prior,
        groups=groups_thr,
        n_boot=n_boot,
        seed=seed,
        max_fnr=max_fnr,
        max_threshold=max_threshold,
    )
    conformal = None if conformal_alpha is None else fit_conformal(p, y, conformal_alpha)
    return Policy(
        calibrator=cal.to_dict(),
        threshold=threshold,
        decision_margin=cal.margin_at(threshold),
        scale=cal.deploy_scale(),
        split_hash=split_hash,
        max_fnr=None if max_fnr is None else float(max_fnr),
        alpha=alpha,
        delta=delta,
        conformal=conformal,
        target_prior=prior,
        threshold_rule=threshold_rule,
    )
