"""Tests for prior reweighting, weighted calibration/sweeps and the small-sample threshold rules."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit, logit

from roadwork.policy import (
    CALIBRATORS,
    THRESHOLD_RULES,
    PlattScaling,
    Policy,
    TemperatureScaling,
    ThresholdData,
    bagged_mcc_threshold,
    best_mcc_threshold,
    fit_calibrator,
    fit_policy,
    mcc_sweep,
    prior_weights,
    select_threshold,
    shrunk_mcc_threshold,
    weighted_mcc_sweep,
)
from roadwork.policy.threshold_rules import _bootstrap_argmax_logits


def _gaussian_sample(n_pos: int, n_neg: int, seed: int, sep: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores N(+sep, 1) for roadwork and N(-sep, 1) for none: the log-likelihood ratio is 2 sep x."""
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(sep, 1.0, n_pos), rng.normal(-sep, 1.0, n_neg)]
    return x, np.r_[np.ones(n_pos, dtype=int), np.zeros(n_neg, dtype=int)]


def test_prior_weights_values_and_sums() -> None:
    y = np.array([1, 1, 1, 0])
    w = prior_weights(y, 0.5)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w.sum() == pytest.approx(len(y)) and w[y == 1].sum() / w.sum() == pytest.approx(0.5)
    w2 = prior_weights(y, 0.2)
    assert w2[y == 1].sum() / w2.sum() == pytest.approx(0.2)
    np.testing.assert_array_equal(prior_weights(y, None), np.ones(4))
    with pytest.raises(ValueError, match="both classes"):
        prior_weights([1, 1], 0.5)


def test_weighted_mcc_by_hand() -> None:
    # pi = 0.5 on 3 positives / 1 negative: positives weigh 2/3, the negative 2. At the cut 0.5 the
    # reweighted confusion matrix is TP = 4/3, FN = 2/3, FP = 0, TN = 2,
    # so MCC = (8/3) / sqrt(4/3 * 2 * 2 * 8/3) = 1/sqrt(2).
    y = np.array([1, 1, 1, 0])
    s = np.array([0.9, 0.6, 0.3, 0.4])
    sweep = weighted_mcc_sweep(y, s, prior_weights(y, 0.5))
    row = int(np.flatnonzero(np.isclose(sweep.threshold, 0.5))[0])
    assert (sweep.tp[row], sweep.fn[row], sweep.fp[row], sweep.tn[row]) == pytest.approx((4 / 3, 2 / 3, 0, 2))
    assert sweep.mcc[row] == pytest.approx(1 / math.sqrt(2))
    assert sweep.precision[row] == 1.0 and sweep.recall[row] == pytest.approx(2 / 3)
    # Unweighted, the same cut has TP 2, FN 1, FP 0, TN 1: MCC = 2 / sqrt(2 * 3 * 1 * 2) = 1/sqrt(3).
    assert mcc_sweep(y, s).mcc[row] == pytest.approx(1 / math.sqrt(3))


@pytest.mark.parametrize("seed", range(4))
def test_weighted_sweep_matches_duplicated_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.integers(0, 8, n) / 7.0 if seed % 2 else rng.normal(size=n)
    k = rng.integers(1, 4, n)
    weighted = weighted_mcc_sweep(y, s, k.astype(float))
    dup = mcc_sweep(np.repeat(y, k), np.repeat(s, k))
    np.testing.assert_array_equal(weighted.threshold, dup.threshold)
    for name in ("tp", "fp", "tn", "fn"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(dup, name), atol=1e-9)
    np.testing.assert_allclose(weighted.mcc, dup.mcc, atol=1e-12)
    unit = weighted_mcc_sweep(y, s)
    np.testing.assert_allclose(unit.mcc, mcc_sweep(y, s).mcc, atol=1e-12)
    # MCC is scale-free in the weights.
    np.testing.assert_allclose(weighted_mcc_sweep(y, s, 3.5 * k).mcc, weighted.mcc, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CALIBRATORS))
def test_integer_weights_equal_duplicated_rows(name: str) -> None:
    rng = np.random.default_rng(20)
    z = rng.normal(0.0, 2.0, 300)
    y = (rng.uniform(size=300) < expit(0.8 * z + 0.3)).astype(int)
    k = rng.integers(1, 4, 300)
    weighted = fit_calibrator(name, z, y, sample_weight=k)
    dup = fit_calibrator(name, np.repeat(z, k), np.repeat(y, k))
    grid = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(weighted.predict_proba(grid), dup.predict_proba(grid), atol=1e-5)


def test_temperature_weights_closed_form() -> None:
    rng = np.random.default_rng(21)
    z = rng.normal(0.0, 3.0, 500)
    y = (rng.uniform(size=500) < expit(z / 2.0)).astype(int)
    k = rng.integers(1, 5, 500)
    t_w = TemperatureScaling().fit(z, y, sample_weight=k).temperature
    t_dup = TemperatureScaling().fit(np.repeat(z, k), np.repeat(y, k)).temperature
    assert t_w == pytest.approx(t_dup, rel=1e-6)
    # Constant weights change nothing; a zero weight is the same as dropping the row.
    assert TemperatureScaling().fit(z, y, np.full(500, 7.0)).temperature == pytest.approx(
        TemperatureScaling().fit(z, y).temperature, rel=1e-6
    )
    w0 = np.ones(500)
    w0[:50] = 0.0
    assert TemperatureScaling().fit(z, y, w0).temperature == pytest.approx(
        TemperatureScaling().fit(z[50:], y[50:]).temperature, rel=1e-6
    )


def test_platt_with_prior_weights_removes_the_prior_shift() -> None:
    # 80 % roadwork: unweighted Platt learns logit p = 2x + log 4; weighted to 50/50 it learns 2x.
    x, y = _gaussian_sample(16_000, 4_000, 22)
    plain = PlattScaling().fit(x, y)
    assert plain.a == pytest.approx(2.0, rel=0.05) and plain.b == pytest.approx(math.log(4), abs=0.08)
    balanced = PlattScaling().fit(x, y, sample_weight=prior_weights(y, 0.5))
    assert balanced.a == pytest.approx(2.0, rel=0.05) and balanced.b == pytest.approx(0.0, abs=0.08)


def test_sample_weight_validation() -> None:
    z, y = [0.1, 0.5, 0.9], [0, 1, 1]
    with pytest.raises(ValueError, match="sample_weight has 2 values"):
        fit_calibrator("temperature", z, y, sample_weight=[1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        fit_calibrator("platt", z, y, sample_weight=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight contains"):
        fit_calibrator("beta", z, y, sample_weight=[1.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator("isotonic", z, y, sample_weight=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sample_weight"):
        weighted_mcc_sweep(y, z, [0.0, 0.0, 0.0])


def test_old_behaviour_is_reproduced_exactly() -> None:
    x, y = _gaussian_sample(300, 100, 23)
    policy = fit_policy(x, y, split_hash="s", target_prior=None, threshold_rule="argmax")
    cal = TemperatureScaling().fit(x, y)
    assert policy.calibrator["params"]["temperature"] == cal.temperature
    assert policy.threshold == best_mcc_threshold(y, cal.predict_proba(x))[0]
    assert (policy.target_prior, policy.threshold_rule) == (None, "argmax")


def test_prior_reweighted_argmax_finds_the_balanced_cut() -> None:
    # Equal-variance Gaussians: at prior 0.5 the MCC-optimal cut is x = 0 by symmetry; the set is 80 %
    # roadwork.
    x, y = _gaussian_sample(8_000, 2_000, 24)
    balanced = fit_policy(x, y, calibrator="platt", split_hash="s", threshold_rule="argmax")
    assert balanced.target_prior == 0.5 and abs(balanced.decision_margin) < 0.15
    shrunk = fit_policy(x, y, calibrator="platt", split_hash="s")
    assert abs(shrunk.decision_margin) < 0.15
    own_prior = fit_policy(
        x, y, calibrator="platt", split_hash="s", target_prior=None, threshold_rule="argmax"
    )
    assert own_prior.decision_margin < -0.2  # the 80 % prior pulls the cut towards "roadwork"


def _neutral_and_argmax(y: np.ndarray, p: np.ndarray, prior: float) -> tuple[float, float]:
    w = prior_weights(y, prior)
    u = logit(p)
    platt = PlattScaling().fit(u, y, sample_weight=w)
    t_hat, _ = weighted_mcc_sweep(y, p, w).best()
    return -platt.b / platt.a, float(logit(t_hat))


@pytest.mark.parametrize("seed", range(5))
def test_shrink_lies_between_neutral_cut_and_argmax(seed: int) -> None:
    x, y = _gaussian_sample(60, 20, 30 + seed, sep=0.6)
    p = expit(x)
    t, m = shrunk_mcc_threshold(y, p, seed=seed)
    u_0, u_hat = _neutral_and_argmax(y, p, 0.5)
    lo, hi = sorted((u_0, u_hat))
    assert lo - 1e-9 <= logit(t) <= hi + 1e-9
    w = prior_weights(y, 0.5)
    pred = p > t
    tp, fp = np.sum(w * pred * y), np.sum(w * pred * (1 - y))
    fn, tn = np.sum(w * ~pred * y), np.sum(w * ~pred * (1 - y))
    assert m == pytest.approx((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def test_shrink_tends_to_the_argmax_on_large_sets() -> None:
    # Unequal variances put the MCC-optimal cut well away from the neutral (balanced-accuracy) cut.
    rng = np.random.default_rng(40)
    x = np.r_[rng.normal(1.5, 0.5, 6_000), rng.normal(0.0, 2.0, 6_000)]
    y = np.r_[np.ones(6_000, dtype=int), np.zeros(6_000, dtype=int)]
    p = expit(x)
    u_0, u_hat = _neutral_and_argmax(y, p, 0.5)
    assert abs(u_hat - u_0) > 0.3
    t, _ = shrunk_mcc_threshold(y, p, n_boot=50)
    assert abs(logit(t) - u_hat) < 0.1 * abs(u_hat - u_0)


def test_shrink_is_deterministic_and_groups_of_one_are_rows() -> None:
    x, y = _gaussian_sample(70, 30, 41, sep=0.5)
    p = expit(x)
    a = shrunk_mcc_threshold(y, p, seed=3)
    assert shrunk_mcc_threshold(y, p, seed=3) == a
    assert shrunk_mcc_threshold(y, p, seed=3, groups=np.arange(len(y))) == a
    # Four renders per image, grouped by image id (strings are fine).
    img = np.repeat(np.arange(25), 4)
    g = np.array([f"img{i:03d}" for i in img])
    t_g, m_g = shrunk_mcc_threshold(y, p, groups=g, seed=3)
    assert 0.0 < t_g < 1.0
    assert select_threshold(y, p, rule="shrink", groups=g, seed=3) == (t_g, m_g)


def test_bootstrap_argmax_matches_a_plain_loop() -> None:
    x, y = _gaussian_sample(25, 15, 42, sep=0.7)
    p = expit(np.round(x, 1))  # ties
    rng = np.random.default_rng(0)
    mult = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=30)
    for prior in (None, 0.5):
        sweep = weighted_mcc_sweep(y, p, prior_weights(y, prior))
        got = _bootstrap_argmax_logits(y, p, sweep, len(sweep.threshold), prior, mult)
        expected = []
        for m in mult:
            if m[y == 1].sum() > 0 and m[y == 0].sum() > 0:
                pp = m[y == 1].sum() / m.sum()
                cw = (
                    np.ones(len(y)) if prior is None else np.where(y == 1, prior / pp, (1 - prior) / (1 - pp))
                )
                expected.append(logit(weighted_mcc_sweep(y, p, m * cw).best()[0]))
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_bagged_is_the_median_of_resampled_argmax_cuts_done_by_hand() -> None:
    """Oracle: each replicate built as explicit repeated rows, reweighted to 50/50 and swept with
    scikit-learn's MCC at every cut; the rule's cut is the median of those argmax logits."""
    from sklearn.metrics import matthews_corrcoef

    x, y = _gaussian_sample(30, 20, 44, sep=0.6)
    p = expit(x)
    groups = np.repeat(np.arange(25), 2)
    rng = np.random.default_rng(5)
    picks = [rng.multinomial(25, np.full(25, 1 / 25)) for _ in range(40)]
    cuts = weighted_mcc_sweep(y, p, prior_weights(y, 0.5)).threshold
    best = []
    for counts in picks:
        rows = np.repeat(np.arange(len(y)), counts[groups])
        yy, pp = y[rows], p[rows]
        if yy.min() == yy.max():
            continue
        w = np.where(yy == 1, 0.5 / yy.mean(), 0.5 / (1 - yy.mean()))
        scores = [matthews_corrcoef(yy, (pp > c).astype(int), sample_weight=w) for c in cuts]
        top = np.flatnonzero(np.isclose(scores, max(scores), rtol=0, atol=1e-12))
        best.append(logit(cuts[top[(len(top) - 1) // 2]]))
    t, m = bagged_mcc_threshold(y, p, groups=groups, n_boot=40, seed=5)
    assert logit(t) == pytest.approx(np.median(best), abs=1e-9)
    w_all = prior_weights(y, 0.5)
    assert m == pytest.approx(matthews_corrcoef(y, (p > t).astype(int), sample_weight=w_all), abs=1e-12)
    assert select_threshold(y, p, rule="bagged", groups=groups, n_boot=40, seed=5) == (t, m)


def test_bagged_respects_fnr_and_threshold_caps() -> None:
    x, y = _gaussian_sample(80, 40, 43, sep=0.5)
    p = expit(x)
    t, _ = bagged_mcc_threshold(y, p, max_fnr=0.05)
    assert np.mean(p[y == 1] <= t) <= 0.05
    assert bagged_mcc_threshold(y, p, max_threshold=0.3)[0] <= 0.3
    assert select_threshold(y, p, rule="bagged") == bagged_mcc_threshold(y, p)
    assert select_threshold(y, p) == shrunk_mcc_threshold(y, p)  # the default rule


def test_shrink_respects_fnr_and_threshold_caps() -> None:
    x, y = _gaussian_sample(80, 40, 43, sep=0.5)
    p = expit(x)
    t, _ = shrunk_mcc_threshold(y, p, max_fnr=0.05)
    assert np.mean(p[y == 1] <= t) <= 0.05
    t_cap, _ = shrunk_mcc_threshold(y, p, max_threshold=0.3)
    assert t_cap <= 0.3


def test_policy_records_and_round_trips_new_fields(tmp_path: Path) -> None:
    x, y = _gaussian_sample(120, 40, 44)
    policy = fit_policy(x, y, split_hash="abc", groups=np.repeat(np.arange(40), 4), conformal_alpha=0.2)
    assert (policy.target_prior, policy.threshold_rule) == (0.5, "shrink")
    path = tmp_path / "policy.json"
    policy.to_json(path)
    assert Policy.from_json(path) == policy
    # A policy.json written before target_prior / threshold_rule existed still loads, with the old meaning.
    data = json.loads(path.read_text())
    del data["target_prior"], data["threshold_rule"]
    path.write_text(json.dumps(data))
    old = Policy.from_json(path)
    assert (old.target_prior, old.threshold_rule) == (None, "argmax")
    with pytest.raises(ValueError, match="threshold_rule"):
        Policy(**{**data, "conformal": None, "threshold_rule": "best"})
    with pytest.raises(ValueError, match="target_prior"):
        Policy(**{**data, "conformal": None, "target_prior": 1.0})


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5])
def test_fit_policy_rejects_bad_target_prior(bad: float) -> None:
    x, y = _gaussian_sample(20, 20, 45)
    with pytest.raises(ValueError, match=r"target_prior must be in .*Pass 0\.5"):
        fit_policy(x, y, split_hash="s", target_prior=bad)


def test_fit_policy_rejects_bad_rule_and_groups() -> None:
    x, y = _gaussian_sample(20, 20, 46)
    with pytest.raises(
        ValueError, match=r"threshold_rule 'bagging' is not one of \['shrink', 'bagged', 'argmax'\]"
    ):
        fit_policy(x, y, split_hash="s", threshold_rule="bagging")
    for rule in THRESHOLD_RULES:
        with pytest.raises(ValueError, match="groups has 39 ids but there are 40 rows"):
            fit_policy(x, y, split_hash="s", threshold_rule=rule, groups=np.arange(39))
    with pytest.raises(ValueError, match="groups must be 1-D"):
        fit_policy(x, y, split_hash="s", groups=np.zeros((40, 1)))
    with pytest.raises(ValueError, match="n_boot"):
        fit_policy(x, y, split_hash="s", n_boot=0)


def test_threshold_on_other_margins_takes_their_best_cut_and_keeps_the_rest_on_the_calibration_set() -> None:
    """``threshold_on``: the cut is the exact best MCC of the other margins (brute force with scikit-learn
    over every cut), while the calibrator and the conformal quantiles stay those of the calibration set."""
    from sklearn.metrics import matthews_corrcoef

    z_cal, y_cal = _gaussian_sample(60, 60, seed=1)
    z_fit, y_fit = _gaussian_sample(300, 100, seed=2, sep=0.8)
    z_fit = z_fit + 0.7  # the other margins' best cut lies away from the calibration set's
    plain = fit_policy(
        z_cal, y_cal, split_hash="h", conformal_alpha=0.1, target_prior=None, threshold_rule="argmax"
    )
    moved = fit_policy(
        z_cal,
        y_cal,
        split_hash="h",
        conformal_alpha=0.1,
        target_prior=None,
        threshold_rule="argmax",
        threshold_on=ThresholdData(z_fit, y_fit),
    )
    assert moved.calibrator == plain.calibrator and moved.conformal == plain.conformal
    best = max(matthews_corrcoef(y_fit, (z_fit > c).astype(int)) for c in np.r_[z_fit, -np.inf])
    assert matthews_corrcoef(y_fit, (z_fit > moved.decision_margin).astype(int)) == pytest.approx(best)
    assert matthews_corrcoef(y_fit, (z_fit > plain.decision_margin).astype(int)) < best - 0.01
    # the same rows as threshold data give the plain policy, bit for bit (groups included)
    groups = np.arange(len(z_cal)) // 2
    for rule in THRESHOLD_RULES:
        alone = fit_policy(z_cal, y_cal, split_hash="h", threshold_rule=rule, groups=groups)
        same = ThresholdData(z_cal, y_cal, groups)
        assert fit_policy(z_cal, y_cal, split_hash="h", threshold_rule=rule, threshold_on=same) == alone
    with pytest.raises(ValueError, match=r"threshold_on\.margin"):
        fit_policy(z_cal, y_cal, split_hash="h", threshold_on=ThresholdData(z_fit[:-1], y_fit))


def test_fit_policy_is_fast_on_2000_rows() -> None:
    x, y = _gaussian_sample(1_600, 400, 47, sep=0.6)
    groups = np.repeat(np.arange(500), 4)
    fit_policy(x, y, split_hash="s", groups=groups)  # warm-up (imports, caches)
    start = time.perf_counter()
    policy = fit_policy(x, y, split_hash="s", groups=groups)
    elapsed = time.perf_counter() - start
    assert policy.threshold_rule == "shrink"
    assert elapsed < 2.0, f"fit_policy took {elapsed:.2f} s on 2000 rows"
