"""Post-hoc calibrators of the margin logit z = z1 - z0 (log-odds of roadwork) into p(roadwork).

All four calibrators are monotone non-decreasing in z, which is what lets a threshold t on the calibrated
probability be moved onto the raw margin: ``calibrated(z) > t  <=>  z > margin_at(t)``.

- :class:`TemperatureScaling` (Guo et al. 2017): p = sigmoid(z / T), T > 0 minimising NLL (the default).
- :class:`PlattScaling` (Platt 1999): p = sigmoid(a z + b), a > 0, fitted with Platt's smoothed targets.
- :class:`BetaCalibration` (Kull et al. 2017): on s = sigmoid(z),
  logit(p) = a ln s - b ln(1 - s) + c with a, b >= 0.
- :class:`IsotonicCalibration`: scikit-learn ``IsotonicRegression(out_of_bounds="clip")`` on z, evaluated
  as the piecewise-linear interpolation between its fitted knots (what scikit-learn's ``predict`` does).

Serialisation is plain JSON-able dicts ``{"name": ..., "params": {...}}``; nothing is pickled.
"""

from __future__ import annotations

import math
import struct
import warnings
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression

from roadwork.validation import check_finite, check_labels, check_same_length, check_scores

_MAX_FLOAT = float(np.finfo(np.float64).max)


def check_sample_weight(sample_weight: ArrayLike | None, n: int) -> NDArray[np.float64] | None:
    """Return ``sample_weight`` as a 1-D float64 array of n finite weights >= 0 with a positive sum.

    ``None`` stays ``None`` (every row weighs 1). Raises ValueError naming ``sample_weight`` otherwise.
    """
    if sample_weight is None:
        return None
    w = check_scores(sample_weight, "sample_weight")
    if len(w) != n:
        raise ValueError(
            f"sample_weight has {len(w)} values but there are {n} rows; pass one weight per row or None."
        )
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError("sample_weight must be >= 0 with a positive sum (e.g. from prior_weights), or None.")
    return w


def _wmean(x: NDArray[np.float64], w: NDArray[np.float64] | None) -> float:
    """Mean of ``x``, weighted by ``w`` (sum(w x) / sum(w)) when given; the plain mean when ``w`` is None."""
    return float(np.mean(x)) if w is None else float(np.dot(w, x) / w.sum())


def _check_fit_inputs(
    z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64] | None]:
    """Validate margins, labels and optional weights; rows of weight 0 count for nothing (nor as a class)."""
    zz = check_scores(z, "z")
    yy = check_labels(y, "y")
    check_same_length([("z", zz), ("y", yy)])
    w = check_sample_weight(sample_weight, len(zz))
    live = np.ones(len(zz), dtype=bool) if w is None else w > 0
    n_pos = int(yy[live].sum())
    if n_pos == 0 or n_pos == int(live.sum()):
        raise ValueError(
            f"y must contain both classes (with positive weight) to fit a calibrator; got {n_pos} of "
            f"{int(live.sum())} positive."
        )
    if np.ptp(zz[live]) == 0:
        raise ValueError("z is constant; a calibrator cannot be fitted to margins that carry no ranking.")
    return zz, yy, w


def _float_key(x: float) -> int:
    """Map a float64 to an int whose order matches the float order (-0.0 and 0.0 share a key)."""
    (i,) = struct.unpack("<q", struct.pack("<d", x))
    return i if i >= 0 else -(i & 0x7FFFFFFFFFFFFFFF)


def _key_float(k: int) -> float:
    bits = k if k >= 0 else (-k) | (1 << 63)
    (x,) = struct.unpack("<d", struct.pack("<Q", bits))
    return float(x)


def _check_params(name: str, params: Any, expected: set[str]) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise TypeError(f"calibrator '{name}' params must be a dict; got {type(params).__name__}.")
    unknown = set(params) - expected
    missing = expected - set(params)
    if unknown:
        raise ValueError(
            f"calibrator '{name}' params has unknown key(s) {sorted(unknown)}; expected {sorted(expected)}."
        )
    if missing:
        raise ValueError(f"calibrator '{name}' params is missing key(s) {sorted(missing)}.")
    return params


class Calibrator(ABC):
    """Common interface: ``fit(z, y)``, ``predict_proba(z)``, ``margin_at(t)``, ``deploy_scale()``, dicts."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> Calibrator:
        """Fit on finite margins ``z`` and 0/1 labels ``y`` (both classes required); return self.

        ``sample_weight`` (optional, >= 0, positive sum) weights each row's loss term: an integer weight k
        gives the same fit as repeating that row k times. ``None`` means every row weighs 1.
        """

    @abstractmethod
    def _proba(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated p(roadwork) of already-validated margins."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Fitted parameters as a JSON-able dict (raises NotFittedError before ``fit``)."""

    @abstractmethod
    def deploy_scale(self) -> float:
        """Positive slope s used by the deployed probability sigmoid((z - z*) / s)."""

    @classmethod
    @abstractmethod
    def _from_params(cls, params: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`params` output (validated)."""

    def predict_proba(self, z: ArrayLike) -> NDArray[np.float64]:
        """Calibrated p(roadwork) in [0, 1] for 1-D finite margins ``z``."""
        self.params()
        return self._proba(check_scores(z, "z"))

    def margin_at(self, prob_threshold: float) -> float:
        """The raw margin z* with ``predict_proba(z) > prob_threshold  <=>  z > z*`` for every float64 z.

        Found by bisection over the ordered float64 values (64 steps), so the equivalence is exact for the
        floating-point function itself (which is monotone), not only up to a tolerance. Returns -inf when
        every finite z is above the threshold and +inf when none is.
        """
        t = check_finite(prob_threshold, "prob_threshold")
        self.params()

        def above(x: float) -> bool:
            # Probing the float extremes overflows z / T and the like to +-inf, where sigmoid is exact 0 or 1.
            with np.errstate(over="ignore"):
                return bool(self._proba(np.array([x]))[0] > t)

        if above(-_MAX_FLOAT):
            return -math.inf
        if not above(_MAX_FLOAT):
            return math.inf
        lo, hi = _float_key(-_MAX_FLOAT), _float_key(_MAX_FLOAT)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if above(_key_float(mid)):
                hi = mid
            else:
                lo = mid
        return _key_float(lo)

    def to_dict(self) -> dict[str, Any]:
        """``{"name": <calibrator name>, "params": {...}}``, JSON-able."""
        return {"name": self.name, "params": self.params()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild any calibrator from :meth:`to_dict` output; unknown or missing keys raise ValueError."""
        if not isinstance(data, dict):
            raise TypeError(
                f"calibrator must be a dict with keys 'name' and 'params'; got {type(data).__name__}."
            )
        unknown = set(data) - {"name", "params"}
        missing = {"name", "params"} - set(data)
        if unknown or missing:
            raise ValueError(
                f"calibrator dict: unknown key(s) {sorted(unknown)}, missing key(s) {sorted(missing)}; "
                "expected exactly 'name' and 'params'."
            )
        name = data["name"]
        if name not in CALIBRATORS:
            raise ValueError(f"calibrator name {name!r} is not one of {sorted(CALIBRATORS)}.")
        target = CALIBRATORS[name]
        if cls is not Calibrator and target is not cls:
            raise ValueError(f"{cls.__name__}.from_dict got a {name!r} calibrator; use Calibrator.from_dict.")
        return target._from_params(data["params"])


class TemperatureScaling(Calibrator):
    """p = sigmoid(z / T). T minimises the NLL over log T in [log 0.01, log 100] (bounded Brent).

    NLL is convex in 1/T, so the search is unimodal; an optimum on a bound (e.g. separable data pushes T
    towards 0) is kept and reported with a RuntimeWarning.
    """

    name = "temperature"
    _LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))

    def __init__(self, temperature: float | None = None) -> None:
        self.temperature = temperature

    def fit(self, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> TemperatureScaling:
        zz, yy, w = _check_fit_inputs(z, y, sample_weight)
        signed = np.where(yy == 1, zz, -zz)

        def nll(log_t: float) -> float:
            return _wmean(np.logaddexp(0.0, -signed * math.exp(-log_t)), w)

        res = minimize_scalar(nll, bounds=self._LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-10})
        if min(abs(res.x - b) for b in self._LOG_T_BOUNDS) < 1e-6:
            warnings.warn(
                f"temperature scaling hit its search bound (T = {math.exp(res.x):.4g}); the margins may be "
                "separable or nearly constant.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.temperature = float(math.exp(res.x))
        return self

    def _proba(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        return expit(z / self.params()["temperature"])

    def params(self) -> dict[str, Any]:
        if self.temperature is None:
            raise NotFittedError("TemperatureScaling is not fitted; call fit(z, y) first.")
        return {"temperature": float(self.temperature)}

    def deploy_scale(self) -> float:
        """s = T, so sigmoid((z - z*) / T) = sigmoid(z / T - logit(t))."""
        return float(self.params()["temperature"])

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> TemperatureScaling:
        p = _check_params(cls.name, params, {"temperature"})
        t = check_finite(p["temperature"], "temperature")
        if t <= 0:
            raise ValueError(f"temperature must be > 0; got {t}.")
        return cls(t)


class PlattScaling(Calibrator):
    """p = sigmoid(a z + b), maximum likelihood with Platt's smoothed targets.

    Targets are (N+ + 1) / (N+ + 2) for positives and 1 / (N- + 2) for negatives (Platt 1999), which keeps
    (a, b) finite on separable data; with ``sample_weight``, N+ and N- are the classes' weight totals (so
    integer weights match repeated rows). A fitted slope a <= 0 (margins anti-correlated with labels) raises.
    """

    name = "platt"

    def __init__(self, a: float | None = None, b: float | None = None) -> None:
        self.a = a
        self.b = b

    def fit(self, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> PlattScaling:
        zz, yy, w = _check_fit_inputs(z, y, sample_weight)
        n_pos = float(yy.sum()) if w is None else float(w[yy == 1].sum())
        n_neg = float(len(yy) - yy.sum()) if w is None else float(w[yy == 0].sum())
        target = np.where(yy == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

        def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            u = theta[0] * zz + theta[1]
            value = _wmean(np.logaddexp(0.0, u) - target * u, w)
            resid = expit(u) - target
            return value, np.array([_wmean(resid * zz, w), _wmean(resid, w)])

        res = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        if not res.success:
            raise RuntimeError(f"Platt scaling did not converge: {res.message}")
        a, b = (float(v) for v in res.x)
        if a <= 0:
            raise ValueError(
                f"Platt scaling fitted slope a = {a:.4g} <= 0: the margins z are not positively related to y "
                "(check the label convention, 1 = roadwork)."
            )
        self.a, self.b = a, b
        return self

    def _proba(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        p = self.params()
        return expit(p["a"] * z + p["b"])

    def params(self) -> dict[str, Any]:
        if self.a is None or self.b is None:
            raise NotFittedError("PlattScaling is not fitted; call fit(z, y) first.")
        return {"a": float(self.a), "b": float(self.b)}

    def deploy_scale(self) -> float:
        """s = 1 / a, so sigmoid((z - z*) / s) = sigmoid(a z + b - logit(t))."""
        return 1.0 / float(self.params()["a"])

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> PlattScaling:
        p = _check_params(cls.name, params, {"a", "b"})
        a = check_finite(p["a"], "a")
        if a <= 0:
            raise ValueError(f"Platt slope a must be > 0; got {a}.")
        return cls(a, check_finite(p["b"], "b"))


class BetaCalibration(Calibrator):
    """Beta calibration (Kull, Silva Filho & Flach 2017) of s = sigmoid(z).

    logit(p) = a ln s - b ln(1 - s) + c with a, b >= 0 (the monotone family), maximum likelihood by L-BFGS-B
    with those bounds. In terms of z: ln s = log_sigmoid(z) and ln(1 - s) = log_sigmoid(-z); a = b reduces
    to Platt scaling a z + c.
    """

    name = "beta"

    def __init__(self, a: float | None = None, b: float | None = None, c: float | None = None) -> None:
        self.a = a
        self.b = b
        self.c = c

    @staticmethod
    def _features(z: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return log_expit(z), -log_expit(-z)

    def fit(self, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> BetaCalibration:
        zz, yy, w = _check_fit_inputs(z, y, sample_weight)
        f1, f2 = self._features(zz)

        def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            u = theta[0] * f1 + theta[1] * f2 + theta[2]
            value = _wmean(np.logaddexp(0.0, u) - yy * u, w)
            resid = expit(u) - yy
            return value, np.array([_wmean(resid * f1, w), _wmean(resid * f2, w), _wmean(resid, w)])

        res = minimize(
            loss,
            np.array([1.0, 1.0, 0.0]),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0, None), (0, None), (None, None)],
        )
        if not res.success:
            raise RuntimeError(f"beta calibration did not converge: {res.message}")
        a, b, c = (float(v) for v in res.x)
        if a + b <= 0:
            raise ValueError(
                "beta calibration collapsed to a constant (a = b = 0): z carries no signal about y."
            )
        self.a, self.b, self.c = a, b, c
        return self

    def _proba(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        p = self.params()
        f1, f2 = self._features(z)
        return expit(p["a"] * f1 + p["b"] * f2 + p["c"])

    def params(self) -> dict[str, Any]:
        if self.a is None or self.b is None or self.c is None:
            raise NotFittedError("BetaCalibration is not fitted; call fit(z, y) first.")
        return {"a": float(self.a), "b": float(self.b), "c": float(self.c)}

    def deploy_scale(self) -> float:
        """s = 2 / (a + b): the inverse of the mean of the calibrated logit's two tail slopes (a and b)."""
        p = self.params()
        return 2.0 / (p["a"] + p["b"])

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> BetaCalibration:
        p = _check_params(cls.name, params, {"a", "b", "c"})
        a, b, c = (check_finite(p[k], k) for k in ("a", "b", "c"))
        if a < 0 or b < 0 or a + b == 0:
            raise ValueError(f"beta calibration needs a, b >= 0 and a + b > 0; got a={a}, b={b}.")
        return cls(a, b, c)


class IsotonicCalibration(Calibrator):
    """Isotonic regression of y on z (non-decreasing, clipped outside the fitted range).

    Stored as the fitted knots (``x``, ``y``); predictions interpolate linearly between knots and are
    constant beyond them, as ``IsotonicRegression(out_of_bounds="clip").predict`` does. ``margin_at`` returns
    the boundary of the step (the point where the interpolated curve first exceeds the threshold).
    """

    name = "isotonic"

    def __init__(self, x: list[float] | None = None, y: list[float] | None = None) -> None:
        self.x = x
        self.y = y

    def fit(self, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> IsotonicCalibration:
        zz, yy, w = _check_fit_inputs(z, y, sample_weight)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        if w is None:
            iso.fit(zz, yy)
        else:
            live = w > 0  # scikit-learn would average tied margins by weight; all-zero ties would divide by 0
            iso.fit(zz[live], yy[live], sample_weight=w[live])
        self.x = [float(v) for v in iso.X_thresholds_]
        self.y = [float(v) for v in iso.y_thresholds_]
        return self

    def _proba(self, z: NDArray[np.float64]) -> NDArray[np.float64]:
        p = self.params()
        return np.interp(z, p["x"], p["y"])

    def params(self) -> dict[str, Any]:
        if self.x is None or self.y is None:
            raise NotFittedError("IsotonicCalibration is not fitted; call fit(z, y) first.")
        return {"x": list(self.x), "y": list(self.y)}

    def deploy_scale(self) -> float:
        """s = 1: isotonic has no global slope, so the deployed probability is sigmoid(z - z*)."""
        return 1.0

    @classmethod
    def _from_params(cls, params: dict[str, Any]) -> IsotonicCalibration:
        p = _check_params(cls.name, params, {"x", "y"})
        x = np.asarray(p["x"], dtype=np.float64)
        yv = np.asarray(p["y"], dtype=np.float64)
        if x.ndim != 1 or x.shape != yv.shape or len(x) == 0:
            raise ValueError("isotonic params x and y must be equal-length non-empty lists.")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(yv))):
            raise ValueError("isotonic params x and y must be finite.")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(yv) < 0) or yv.min() < 0 or yv.max() > 1:
            raise ValueError("isotonic params need strictly increasing x and non-decreasing y in [0, 1].")
        return cls(x.tolist(), yv.tolist())


CALIBRATORS: dict[str, type[Calibrator]] = {
    c.name: c for c in (TemperatureScaling, PlattScaling, BetaCalibration, IsotonicCalibration)
}


def fit_calibrator(
    name: str, z: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None
) -> Calibrator:
    """Fit the calibrator ``name`` ("temperature", "platt", "beta" or "isotonic") on margins and labels.

    ``sample_weight``: optional per-row weights (see :meth:`Calibrator.fit`), e.g. from
    :func:`roadwork.policy.threshold.prior_weights` to calibrate for another class prior.
    """
    if name not in CALIBRATORS:
        raise ValueError(f"calibrator name {name!r} is not one of {sorted(CALIBRATORS)}.")
    return CALIBRATORS[name]().fit(z, y, sample_weight)
