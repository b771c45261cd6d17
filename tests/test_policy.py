"""Tests for roadwork.policy: sweep, constrained threshold, FNR guarantee, calibration, conformal, Policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import confusion_matrix, matthews_corrcoef

from roadwork.metrics import nll, set_coverage
from roadwork.policy import (
    CALIBRATORS,
    BetaCalibration,
    Calibrator,
    ConformalQuantiles,
    IsotonicCalibration,
    PlattScaling,
    Policy,
    TemperatureScaling,
    abstain_mask,
    best_mcc_threshold,
    fit_calibrator,
    fit_conformal,
    fit_policy,
    guaranteed_fnr_threshold,
    mcc_sweep,
    min_class_size,
    min_positives_for_guarantee,
    prediction_sets,
)


def _random_case(rng: np.random.Generator, n: int, *, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    s = rng.integers(0, 6, n) / 5.0 if ties else rng.normal(size=n) + 1.2 * y
    return y, s


def _brute_force_rows(
    y: np.ndarray, s: np.ndarray, thresholds: np.ndarray
) -> list[tuple[int, int, int, int, float]]:
    rows = []
    for t in thresholds:
        pred = (s > t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        rows.append((int(tp), int(fp), int(tn), int(fn), float(matthews_corrcoef(y, pred))))
    return rows


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_sweep_matches_brute_force_loop(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    y, s = _random_case(rng, int(rng.integers(2, 60)), ties=ties)
    sweep = mcc_sweep(y, s)
    distinct = np.unique(s)
    assert len(sweep.threshold) == len(distinct) + 1
    assert np.all(np.diff(sweep.threshold) > 0)
    # Every cut separates exactly: one cut below the minimum, one between each pair, one at the maximum.
    assert sweep.threshold[0] < distinct[0] and sweep.threshold[-1] == distinct[-1]
    for i in range(1, len(distinct)):
        assert distinct[i - 1] <= sweep.threshold[i] < distinct[i]
    oracle = _brute_force_rows(y, s, sweep.threshold)
    got = list(
        zip(
            sweep.tp.tolist(),
            sweep.fp.tolist(),
            sweep.tn.tolist(),
            sweep.fn.tolist(),
            sweep.mcc.tolist(),
            strict=True,
        )
    )
    for (tp, fp, tn, fn, m), (otp, ofp, otn, ofn, om) in zip(got, oracle, strict=True):
        assert (tp, fp, tn, fn) == (otp, ofp, otn, ofn)
        assert m == pytest.approx(om, abs=1e-12)


def test_sweep_frame_columns_and_rates() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])
    frame = mcc_sweep(y, s).to_frame()
    assert list(frame.columns) == [
        "threshold",
        "tp",
        "fp",
        "tn",
        "fn",
        "mcc",
        "precision",
        "recall",
        "fnr",
        "fpr",
    ]
    row = frame.iloc[3]  # threshold between 0.4 and 0.8: predicts {0.8, 0.8, 0.9}
    assert row.threshold == pytest.approx(0.6)
    assert (row.tp, row.fp, row.tn, row.fn) == (2, 1, 2, 1)
    assert row.precision == pytest.approx(2 / 3) and row.recall == pytest.approx(2 / 3)
    assert row.fnr == pytest.approx(1 / 3) and row.fpr == pytest.approx(1 / 3)


def test_adjacent_floats_are_still_separated() -> None:
    a = 0.5
    b = np.nextafter(a, 1.0)
    sweep = mcc_sweep([0, 1], [a, b])
    assert (sweep.tp[1], sweep.fp[1]) == (1, 0)
    assert a <= sweep.threshold[1] < b


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_fnr", [None, 0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed: int, max_fnr: float | None, ties: bool) -> None:
    rng = np.random.default_rng(100 + seed)
    y, s = _random_case(rng, int(rng.integers(5, 80)), ties=ties)
    y[0], y[1] = 0, 1
    t, m = best_mcc_threshold(y, s, max_fnr=max_fnr)
    # Oracle: every candidate cut (all distinct scores, plus one below the minimum), brute-force MCC and FNR.
    candidates = np.r_[s.min() - 1.0, np.unique(s)]
    best = -np.inf
    for c in candidates:
        pred = (s > c).astype(int)
        miss = np.sum((pred == 0) & (y == 1)) / np.sum(y == 1)
        if max_fnr is not None and miss > max_fnr:
            continue
        best = max(best, matthews_corrcoef(y, pred))
    assert m == pytest.approx(best, abs=1e-12)
    pred = (s > t).astype(int)
    assert matthews_corrcoef(y, pred) == pytest.approx(m, abs=1e-12)
    if max_fnr is not None:
        assert np.sum((pred == 0) & (y == 1)) / np.sum(y == 1) <= max_fnr


def test_tie_rule_picks_middle_of_plateau() -> None:
    # Perfect separation between 0.2 and 0.8: only one cut is perfect; scores within classes are tied.
    y = np.array([0, 0, 1, 1])
    s = np.array([0.2, 0.2, 0.8, 0.8])
    assert best_mcc_threshold(y, s) == (pytest.approx(0.5), pytest.approx(1.0))
    # A constant-MCC plateau: all-constant labels give MCC 0 at every cut; the median cut is returned.
    t, m = best_mcc_threshold(np.ones(5, dtype=int), np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert m == 0.0
    assert t == pytest.approx(0.25)


def test_best_threshold_validation() -> None:
    with pytest.raises(ValueError, match="max_fnr"):
        best_mcc_threshold([0, 1], [0.1, 0.9], max_fnr=1.5)
    with pytest.raises(ValueError, match="max_fnr needs at least one roadwork"):
        best_mcc_threshold([0, 0], [0.1, 0.9], max_fnr=0.1)
    with pytest.raises(ValueError, match="score"):
        best_mcc_threshold([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="same length"):
        best_mcc_threshold([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="y_true"):
        best_mcc_threshold([0, 2], [0.1, 0.2])
    with pytest.raises(TypeError, match="max_fnr"):
        best_mcc_threshold([0, 1], [0.1, 0.2], max_fnr="0.1")  # type: ignore[arg-type]


def test_min_positives_formula() -> None:
    for alpha, delta in [(0.1, 0.1), (0.05, 0.05), (0.01, 0.1), (0.2, 0.01)]:
        n = min_positives_for_guarantee(alpha, delta)
        assert n == math.ceil(math.log(delta) / math.log(1 - alpha))
        assert (1 - alpha) ** n <= delta < (1 - alpha) ** (n - 1)


def test_guarantee_infeasible_names_minimum() -> None:
    y = np.r_[np.ones(10, dtype=int), np.zeros(10, dtype=int)]
    s = np.linspace(0, 1, 20)
    with pytest.raises(ValueError, match=r"at least 29"):
        guaranteed_fnr_threshold(y, s, alpha=0.1, delta=0.05)


def test_guarantee_is_last_cut_passing_binomial_test() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    s = rng.normal(size=400) + 2 * y
    alpha, delta = 0.1, 0.1
    t = guaranteed_fnr_threshold(y, s, alpha, delta)
    pos = np.sort(s[y == 1])
    n = len(pos)
    misses = int(np.sum(pos <= t))
    assert binom.cdf(misses, n, alpha) <= delta
    # The next positive score up would add a miss that fails the test, and t sits just below it.
    assert binom.cdf(misses + 1, n, alpha) > delta
    assert t < pos[misses]
    assert not np.any((s > t) & (s < pos[misses]))


def test_guarantee_holds_in_simulation() -> None:
    # 400 calibration draws; true positive scores ~ N(1, 1) so the true FNR at t is Phi(t - 1).
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    alpha, delta, n_pos, n_neg, draws = 0.1, 0.1, 120, 120, 400
    violations = 0
    for _ in range(draws):
        s = np.r_[rng.normal(1.0, 1.0, n_pos), rng.normal(-1.0, 1.0, n_neg)]
        y = np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]
        t = guaranteed_fnr_threshold(y, s, alpha, delta)
        violations += norm.cdf(t - 1.0) > alpha
    # P(violation) <= delta; allow 3 binomial standard errors of sampling noise over the draws.
    assert violations / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)
    # And it is not trivially conservative: the exact method spends most of its delta budget.
    assert violations / draws >= 0.03


def _logistic_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True log-odds u ~ N(0, 2^2) and labels drawn from sigmoid(u)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.0, n)
    return u, (rng.uniform(size=n) < 1 / (1 + np.exp(-u))).astype(int)


def test_temperature_recovers_known_t_and_lowers_nll() -> None:
    u, y = _logistic_sample(20_000, 0)
    z = 2.5 * u  # over-confident head: true T = 2.5
    cal = TemperatureScaling().fit(z, y)
    assert cal.temperature == pytest.approx(2.5, rel=0.05)
    raw = 1 / (1 + np.exp(-z))
    assert nll(y, cal.predict_proba(z)) < nll(y, raw) - 0.05


def test_platt_recovers_known_affine_map() -> None:
    u, y = _logistic_sample(30_000, 1)
    z = (u - 0.7) / 0.4  # true map: p = sigmoid(0.4 z + 0.7)
    cal = PlattScaling().fit(z, y)
    assert cal.a == pytest.approx(0.4, rel=0.05)
    assert cal.b == pytest.approx(0.7, abs=0.06)


def test_beta_recovers_known_parameters() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, 30_000)
    s = 1 / (1 + np.exp(-z))
    a, b, c = 1.5, 0.6, 0.3
    true_logit = a * np.log(s) - b * np.log1p(-s) + c
    y = (rng.uniform(size=len(z)) < 1 / (1 + np.exp(-true_logit))).astype(int)
    cal = BetaCalibration().fit(z, y)
    assert (cal.a, cal.b, cal.c) == (
        pytest.approx(a, rel=0.1),
        pytest.approx(b, rel=0.1),
        pytest.approx(c, abs=0.1),
    )


def test_isotonic_matches_sklearn() -> None:
    from sklearn.isotonic import IsotonicRegression

    u, y = _logistic_sample(3_000, 3)
    cal = IsotonicCalibration().fit(u, y)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(u, y)
    grid = np.linspace(-12, 12, 2001)
    np.testing.assert_allclose(cal.predict_proba(grid), ref.predict(grid), atol=1e-12)


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_margin_at_is_exact_boundary(name: str) -> None:
    u, y = _logistic_sample(4_000, 4)
    cal = fit_calibrator(name, 1.7 * u + 0.3, y)
    rng = np.random.default_rng(5)
    z = rng.normal(0.0, 6.0, 20_000)
    probs = cal.predict_proba(z)
    for t in np.r_[rng.uniform(0.05, 0.95, 5), np.quantile(probs, [0.2, 0.5, 0.8])]:
        z_star = cal.margin_at(float(t))
        assert cal.predict_proba([z_star])[0] <= t < cal.predict_proba([np.nextafter(z_star, np.inf)])[0]
        np.testing.assert_array_equal(probs > t, z > z_star)
    assert cal.margin_at(-0.1) == -np.inf and cal.margin_at(1.0) == np.inf


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_calibrator_dict_round_trip(name: str) -> None:
    import json

    u, y = _logistic_sample(1_000, 6)
    cal = fit_calibrator(name, u, y)
    data = json.loads(json.dumps(cal.to_dict()))
    again = Calibrator.from_dict(data)
    assert type(again) is type(cal)
    np.testing.assert_array_equal(again.predict_proba(u), cal.predict_proba(u))
    with pytest.raises(ValueError, match="unknown key"):
        Calibrator.from_dict({**data, "extra": 1})
    with pytest.raises(ValueError, match="unknown key"):
        Calibrator.from_dict({"name": name, "params": {**data["params"], "bogus": 1.0}})


def test_calibrator_validation() -> None:
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        TemperatureScaling().predict_proba([0.0])
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator("temperature", [0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="not one of"):
        fit_calibrator("histogram", [0.1, 0.2], [0, 1])
    with pytest.raises(ValueError, match="z contains"):
        fit_calibrator("platt", [0.1, np.inf], [0, 1])
    with pytest.raises(ValueError, match="missing key"):
        Calibrator.from_dict({"name": "platt", "params": {"a": 1.0}})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Calibrator.from_dict({"name": "temperature", "params": {"temperature": -1.0}})
    with pytest.raises(ValueError, match="slope"):
        PlattScaling().fit(
            np.r_[np.zeros(50), np.ones(50)] + np.linspace(0, 0.1, 100), np.r_[np.ones(50), np.zeros(50)]
        )


def test_conformal_quantile_rank_by_hand() -> None:
    # 9 negatives with scores p = 0.1..0.9: at alpha = 0.2, rank ceil(10 * 0.8) = 8 -> q0 = 0.8.
    p = np.r_[np.arange(1, 10) / 10, np.full(9, 0.9)]
    y = np.r_[np.zeros(9, dtype=int), np.ones(9, dtype=int)]
    q = fit_conformal(p, y, alpha=0.2)
    assert q.q0 == pytest.approx(0.8) and q.q1 == pytest.approx(0.1)
    sets = prediction_sets(np.array([0.05, 0.85, 0.95, 0.5]), q)
    np.testing.assert_array_equal(sets, [[True, False], [False, False], [False, True], [True, False]])
    np.testing.assert_array_equal(abstain_mask(sets), [False, True, False, False])
    with pytest.warns(RuntimeWarning, match="at least 19"):
        q_small = fit_conformal(p, y, alpha=0.05)
    assert q_small.q0 == 1.0 and q_small.q1 == 1.0
    assert min_class_size(0.05) == 19 and min_class_size(0.2) == 4


def test_conformal_class_coverage_in_simulation() -> None:
    alpha, n_cal, n_test, reps = 0.1, 200, 2000, 100
    rng = np.random.default_rng(9)
    cover = {0: [], 1: []}
    abstain = []
    for _ in range(reps):
        u = rng.normal(0, 1.5, n_cal + n_test)
        y = (rng.uniform(size=len(u)) < 1 / (1 + np.exp(-u))).astype(int)
        p = 1 / (1 + np.exp(-0.7 * u))  # a miscalibrated but monotone score: coverage must not depend on it
        q = fit_conformal(p[:n_cal], y[:n_cal], alpha)
        sets = prediction_sets(p[n_cal:], q)
        for label in (0, 1):
            cover[label].append(set_coverage(y[n_cal:], sets, label=label))
        abstain.append(abstain_mask(sets).mean())
    for label in (0, 1):
        mean = np.mean(cover[label])
        # Finite-sample bounds 1 - alpha <= E[coverage] <= 1 - alpha + 1 / (n_c + 1), with 4 standard errors.
        se = np.std(cover[label]) / np.sqrt(reps)
        assert mean >= 1 - alpha - 4 * se
        assert mean <= 1 - alpha + 1 / (0.3 * n_cal) + 4 * se
    assert 0.0 < np.mean(abstain) < 1.0


def test_conformal_validation() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        fit_conformal([0.1, 0.9], [0, 1], alpha=0.0)
    with pytest.raises(ValueError, match="no sample of label 1"):
        fit_conformal([0.1, 0.2], [0, 0], alpha=0.1)
    with pytest.raises(ValueError, match="q0"):
        ConformalQuantiles(q0=1.5, q1=0.1, alpha=0.1)
    with pytest.raises(ValueError, match="unknown key"):
        ConformalQuantiles.from_dict({"q0": 0.1, "q1": 0.1, "alpha": 0.1, "level": 0.9})


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_policy_fold_property(name: str) -> None:
    u, y = _logistic_sample(3_000, 10)
    z_cal = 2.0 * u - 0.4
    policy = fit_policy(z_cal, y, calibrator=name, conformal_alpha=0.1, split_hash="split-abc")
    rng = np.random.default_rng(11)
    z_star = policy.decision_margin
    near = z_star + np.r_[0.0, np.nextafter(0, 1), 1e-300, 1e-17, 1e-15, 1e-12, -1e-15, -1e-12]
    z = np.r_[
        rng.normal(0, 8, 200_000), z_star, np.nextafter(z_star, np.inf), np.nextafter(z_star, -np.inf), near
    ]
    out = policy.apply(z)
    np.testing.assert_array_equal(out["probability"] > 0.5, out["decision"])
    np.testing.assert_array_equal(out["decision"], z > z_star)
    np.testing.assert_array_equal(out["calibrated_probability"] > policy.threshold, out["decision"])
    at = np.flatnonzero(z == z_star)
    assert not out["decision"][at].any() and np.all(out["probability"][at] == 0.5)
    assert out["decision"][200_001] and out["probability"][200_001] > 0.5
    assert np.all((out["probability"] >= 0) & (out["probability"] <= 1))
    assert out["abstain"].dtype == bool and 0 < out["abstain"].mean() < 1


def test_policy_temperature_matches_design_formula() -> None:
    u, y = _logistic_sample(3_000, 12)
    policy = fit_policy(3.0 * u, y, split_hash="s")
    t_ = policy.calibrator["params"]["temperature"]
    assert policy.scale == t_
    z = np.linspace(-20, 20, 1001)
    logit_t = np.log(policy.threshold / (1 - policy.threshold))
    np.testing.assert_allclose(
        policy.apply(z)["probability"], 1 / (1 + np.exp(-(z / t_ - logit_t))), atol=1e-9
    )


def test_fit_policy_constraints() -> None:
    u, y = _logistic_sample(4_000, 13)
    # The data's own prior and the exact argmax (the defaults before target_prior/threshold_rule existed).
    old = {"target_prior": None, "threshold_rule": "argmax"}
    p_free = fit_policy(u, y, split_hash="s", **old)
    p_fnr = fit_policy(u, y, max_fnr=0.05, split_hash="s", **old)
    p_guar = fit_policy(u, y, guarantee=(0.05, 0.1), split_hash="s", **old)
    cal_p = Calibrator.from_dict(p_fnr.calibrator).predict_proba(u)
    assert np.mean(cal_p[y == 1] <= p_fnr.threshold) <= 0.05
    assert p_fnr.threshold <= p_free.threshold
    t_max = guaranteed_fnr_threshold(y, cal_p, 0.05, 0.1)
    assert p_guar.threshold <= t_max and (p_guar.alpha, p_guar.delta) == (0.05, 0.1)
    expected_t, _ = best_mcc_threshold(y, cal_p)
    assert p_free.threshold == expected_t


def test_policy_json_round_trip_and_key_validation(tmp_path: object) -> None:
    import json
    from pathlib import Path

    u, y = _logistic_sample(2_000, 14)
    policy = fit_policy(
        u, y, calibrator="beta", guarantee=(0.1, 0.1), conformal_alpha=0.2, split_hash="abc123"
    )
    path = Path(str(tmp_path)) / "policy.json"
    policy.to_json(path)
    assert Policy.from_json(path) == policy
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "temperature": 1.0}))
    with pytest.raises(ValueError, match=r"unknown policy key\(s\) \['temperature'\]"):
        Policy.from_json(path)
    del data["split_hash"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"missing policy key\(s\) \['split_hash'\]"):
        Policy.from_json(path)
    with pytest.raises(ValueError, match=r"alpha and Policy\.delta"):
        Policy(
            calibrator=policy.calibrator,
            threshold=0.5,
            decision_margin=0.0,
            scale=1.0,
            split_hash="x",
            alpha=0.1,
        )
    with pytest.raises(ValueError, match="scale"):
        Policy(calibrator=policy.calibrator, threshold=0.5, decision_margin=0.0, scale=0.0, split_hash="x")
