"""Tests for roadwork.metrics against independent oracles (scikit-learn, scipy, brute-force loops)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from roadwork import metrics as rm


def _label_pairs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, n), rng.integers(0, 2, n)


EDGE_PAIRS = [
    ([1, 1, 1], [1, 1, 1]),
    ([0, 0, 0], [0, 0, 0]),
    ([0, 0, 0], [1, 1, 1]),
    ([1, 1, 1], [0, 0, 0]),
    ([0, 1], [1, 0]),
    ([0, 1, 1], [1, 1, 1]),
    ([1], [0]),
]


@pytest.mark.parametrize(
    "pair", [_label_pairs(s, n) for s, n in [(0, 5), (1, 50), (2, 1000), (3, 2)]] + EDGE_PAIRS
)
def test_confusion_metrics_match_sklearn(pair: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = (np.asarray(a) for a in pair)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
        assert tuple(rm.confusion_counts(y, p)) == (tp, fp, tn, fn)
        assert rm.mcc(y, p) == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
        assert rm.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
        assert rm.precision(y, p) == pytest.approx(skm.precision_score(y, p, zero_division=0))
        assert rm.recall(y, p) == pytest.approx(skm.recall_score(y, p, zero_division=0))
        assert rm.f1(y, p) == pytest.approx(skm.f1_score(y, p, zero_division=0))
        if tp + fn:
            assert rm.fnr(y, p) == pytest.approx(fn / (tp + fn))
        if fp + tn:
            assert rm.fpr(y, p) == pytest.approx(fp / (fp + tn))


def test_mcc_known_values_and_bool_input() -> None:
    assert rm.mcc([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert rm.mcc([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert rm.mcc(np.array([True, False]), np.array([True, False])) == 1.0
    # tp=3 fp=1 tn=2 fn=1 -> (6 - 1) / sqrt(4 * 4 * 3 * 3) = 5 / 12
    assert rm.mcc([1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0]) == pytest.approx(5 / 12)


def test_mcc_from_counts_vectorised_no_overflow() -> None:
    big = np.array([10**9, 10**9])
    out = rm.mcc_from_counts(big, np.array([0, 10**9]), big, np.array([0, 10**9]))
    assert out[0] == 1.0 and out[1] == 0.0


def test_undefined_rates_warn_like_sklearn() -> None:
    with pytest.warns(UndefinedMetricWarning):
        assert rm.precision([0, 1], [0, 0]) == 0.0
    with pytest.warns(UndefinedMetricWarning):
        assert rm.recall([0, 0], [0, 1]) == 0.0
    with pytest.warns(UndefinedMetricWarning):
        assert rm.fnr([0, 0], [0, 1]) == 0.0
    with pytest.warns(UndefinedMetricWarning):
        assert rm.fpr([1, 1], [0, 1]) == 0.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "exc", "match"),
    [
        ([], [], ValueError, "y_true is empty"),
        ([0, 1], [0], ValueError, "same length"),
        ([0, 2], [0, 1], ValueError, "y_true must contain only 0 and 1"),
        ([0, 1], [0, 0.5], ValueError, "y_pred must contain only 0 and 1"),
        ([0, np.nan], [0, 1], ValueError, "y_true contains 1 non-finite"),
        (["a", "b"], [0, 1], TypeError, "y_true must be numeric"),
        ([[0, 1]], [[0, 1]], ValueError, "y_true must be 1-D"),
    ],
)
def test_label_validation_names_argument(y_true: object, y_pred: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        rm.mcc(y_true, y_pred)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(8))
def test_ranking_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    # Half the cases with heavy ties (coarse scores), half continuous; include margins outside [0, 1].
    s = rng.integers(0, 7, n) / 6.0 if seed % 2 else rng.normal(size=n) * 3
    assert rm.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert rm.auprc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = rm.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    prec, rec, thr = rm.pr_curve(y, s)
    sk_prec, sk_rec, _ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(prec, sk_prec[::-1])
    np.testing.assert_allclose(rec, sk_rec[::-1])
    for i in range(len(thr)):
        pred = (s > thr[i]).astype(int)
        assert rm.precision_from_counts(*np.array(rm.confusion_counts(y, pred))[[0, 1]]) == pytest.approx(
            prec[i] if pred.any() else 0.0
        )


def test_ranking_single_class_matches_sklearn() -> None:
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(rm.auroc([1, 1, 1], [0.1, 0.5, 0.7]))
    with pytest.warns(UndefinedMetricWarning):
        assert rm.auprc([0, 0, 0], [0.1, 0.5, 0.7]) == 0.0
    assert rm.auprc([1, 1], [0.1, 0.5]) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_brier_and_nll_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 500))
    y = rng.integers(0, 2, n)
    p = rng.uniform(size=n)
    p[: n // 10] = rng.integers(0, 2, n // 10)  # exact 0/1 probabilities exercise the clipping
    assert rm.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p, pos_label=1), abs=1e-12)
    assert rm.nll(y, p) == pytest.approx(skm.log_loss(y, p, labels=[0, 1]), rel=1e-10)


def test_probability_validation_names_argument() -> None:
    with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\]"):
        rm.brier([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="same length"):
        rm.ece([0, 1], [0.2])
    with pytest.raises(ValueError, match="n_bins must be >= 1"):
        rm.ece([0, 1], [0.2, 0.3], n_bins=0)
    with pytest.raises(ValueError, match="strategy"):
        rm.reliability_curve([0, 1], [0.2, 0.3], strategy="kmeans")  # type: ignore[arg-type]


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    return (rng.uniform(size=n) < p).astype(int), p


def test_calibration_errors_near_zero_when_calibrated() -> None:
    y, p = _calibrated_sample(200_000, 0)
    assert rm.ece(y, p) < 0.006
    assert rm.ace(y, p) < 0.006
    assert rm.mce(y, p) < 0.02
    assert rm.smooth_ece(y, p) < 0.01


def test_calibration_errors_hand_computed() -> None:
    # 100 images at p=0.1 with 30 roadwork (gap 0.2) and 100 at p=0.9 with 80 roadwork (gap 0.1).
    p = np.r_[np.full(100, 0.1), np.full(100, 0.9)]
    y = np.r_[np.ones(30), np.zeros(70), np.ones(80), np.zeros(20)].astype(int)
    assert rm.ece(y, p) == pytest.approx(0.5 * 0.2 + 0.5 * 0.1)
    assert rm.mce(y, p) == pytest.approx(0.2)
    assert rm.ace(y, p, n_bins=2) == pytest.approx(0.15)
    curve = rm.reliability_curve(y, p)
    assert curve.counts.sum() == 200 and curve.counts[1] == 100 and curve.counts[13] == 100
    assert curve.accuracy[1] == pytest.approx(0.3) and curve.mean_confidence[13] == pytest.approx(0.9)
    assert np.isnan(curve.accuracy[0]) and curve.centers[0] == pytest.approx(1 / 30)
    # A point mass of residual r has smooth ECE |r| at every bandwidth (the kernel integrates to one).
    assert rm.smooth_ece(y[:100], p[:100]) == pytest.approx(0.2, abs=1e-9)


def test_ece_bin_edges() -> None:
    # p = 1 falls in the last bin; 1/15 starts the second bin (bins are [i/n, (i+1)/n)).
    curve = rm.reliability_curve([1, 0, 1], [1.0, 1 / 15 + 1e-12, 0.0])
    assert curve.counts[-1] == 1 and curve.counts[1] == 1 and curve.counts[0] == 1


def _smooth_ece_quadrature(y: np.ndarray, p: np.ndarray, sigma: float) -> float:
    from scipy.integrate import quad

    r = (y - p) / len(p)

    def kernel(t: float, s: np.ndarray) -> np.ndarray:
        total = np.zeros_like(s)
        for m in range(-6, 7):
            total += np.exp(-0.5 * ((t - s - 2 * m) / sigma) ** 2) + np.exp(
                -0.5 * ((t + s - 2 * m) / sigma) ** 2
            )
        return total / (sigma * np.sqrt(2 * np.pi))

    value, _ = quad(lambda t: abs(np.sum(r * kernel(t, p))), 0.0, 1.0, limit=400)
    return value


@pytest.mark.parametrize("sigma", [0.05, 0.1, 0.3])
def test_smooth_ece_matches_direct_integral(sigma: float) -> None:
    rng = np.random.default_rng(11)
    p = rng.uniform(size=25)
    y = (rng.uniform(size=25) < p**0.7).astype(int)
    assert rm.smooth_ece(y, p, sigma=sigma) == pytest.approx(_smooth_ece_quadrature(y, p, sigma), abs=2e-4)


def test_smooth_ece_fixed_point() -> None:
    rng = np.random.default_rng(12)
    p = rng.uniform(size=3000)
    y = (rng.uniform(size=3000) < p**1.5).astype(int)
    s = rm.smooth_ece(y, p)
    assert rm.smooth_ece(y, p, sigma=s) == pytest.approx(s, abs=1e-4)
    assert 0.02 < s < 0.2


def _risk_coverage_loop(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.maximum(p, 1 - p)
    err = ((p > 0.5).astype(int) != y).astype(int)
    order = np.argsort(-conf)
    cov, gen = [0.0], [0.0]
    for k in range(1, len(p) + 1):
        cov.append(k / len(p))
        gen.append(err[order[:k]].sum() / len(p))
    return np.array(cov), np.array(gen)


@pytest.mark.parametrize("seed", range(4))
def test_augrc_and_risk_coverage_match_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    y = rng.integers(0, 2, n)
    p = rng.uniform(size=n)
    cov, gen = _risk_coverage_loop(y, p)
    assert rm.augrc(y, p) == pytest.approx(np.trapezoid(gen, cov), abs=1e-12)
    curve = rm.risk_coverage_curve(y, p)
    np.testing.assert_allclose(curve.coverage, cov[1:])
    np.testing.assert_allclose(curve.generalized_risk, gen[1:])
    np.testing.assert_allclose(curve.selective_risk, gen[1:] / cov[1:])
    for c, thr in zip(curve.coverage, curve.thresholds, strict=True):
        assert np.mean(np.maximum(p, 1 - p) > thr) == pytest.approx(c)


def test_augrc_known_values() -> None:
    # Errors ranked last give the optimal AUGRC risk^2 / 2; errors ranked first give risk - risk^2 / 2.
    y = np.array([1, 1, 1, 0])
    p_good = np.array(
        [0.99, 0.95, 0.9, 0.6]
    )  # the only error (0.6 called roadwork) has the lowest confidence
    p_bad = np.array([0.7, 0.65, 0.6, 0.99])  # the error is the most confident
    assert rm.augrc(y, p_good) == pytest.approx(0.25**2 / 2)
    assert rm.augrc(y, p_bad) == pytest.approx(0.25 - 0.25**2 / 2)
    # Tied confidences are accepted together: one segment from (0, 0) to (1, risk).
    assert rm.augrc([1, 0], [0.8, 0.2]) == 0.0
    assert rm.augrc([1, 1], [0.8, 0.2]) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("k", "n", "level"), [(0, 10, 0.95), (10, 10, 0.95), (3, 17, 0.9), (480, 1000, 0.99)]
)
def test_wilson_matches_scipy(k: int, n: int, level: float) -> None:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = rm.wilson_interval(k, n, level)
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_wilson_validation() -> None:
    with pytest.raises(ValueError, match="k must satisfy"):
        rm.wilson_interval(5, 3)
    with pytest.raises(ValueError, match="n must be >= 1"):
        rm.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="level"):
        rm.wilson_interval(1, 3, 1.5)
    with pytest.raises(TypeError, match="k must be an int"):
        rm.wilson_interval(1.0, 3)  # type: ignore[arg-type]


def test_bootstrap_matches_scipy_percentile() -> None:
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 150)
    s = rng.normal(size=150) + y
    point, low, high = rm.bootstrap_ci(rm.auroc, y, s, n_resamples=400, level=0.9, seed=5)
    ref = bootstrap(
        (y, s),
        rm.auroc,
        paired=True,
        vectorized=False,
        n_resamples=400,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    assert point == rm.auroc(y, s)
    assert low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    assert rm.bootstrap_ci(rm.auroc, y, s, n_resamples=400, level=0.9, seed=5) == (point, low, high)


def test_bootstrap_keeps_groups_whole() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 6, 40)
    group = np.repeat(np.arange(40), sizes)
    y = rng.integers(0, 2, len(group))
    seen: list[np.ndarray] = []

    def record(_: np.ndarray, s: np.ndarray) -> float:
        seen.append(s.copy())
        return float(len(s))

    rm.bootstrap_ci(record, y, group.astype(float), groups=group, n_resamples=50, seed=0)
    assert len(seen) == 51  # the point estimate on the full data, then 50 resamples
    for s in seen[1:]:
        ids, counts = np.unique(s.astype(int), return_counts=True)
        assert np.all(counts % sizes[ids] == 0), "a group was split by the resample"
        # Groups are drawn with replacement, as many draws as there are groups.
        assert np.sum(counts // sizes[ids]) == 40


def test_bootstrap_group_interval_is_wider_for_correlated_groups() -> None:
    # Each group is 10 copies of one image: the effective sample is the 60 groups, not 600 rows.
    rng = np.random.default_rng(3)
    y = np.repeat(rng.integers(0, 2, 60), 10)
    s = np.repeat(rng.normal(size=60), 10) + y
    group = np.repeat(np.arange(60), 10)
    _, lo_row, hi_row = rm.bootstrap_ci(rm.auroc, y, s, n_resamples=300)
    _, lo_grp, hi_grp = rm.bootstrap_ci(rm.auroc, y, s, groups=group, n_resamples=300)
    assert (hi_grp - lo_grp) > 2 * (hi_row - lo_row)


def test_bootstrap_warns_on_undefined_resamples() -> None:
    y = np.array([0, 1, 1, 1])
    with pytest.warns(RuntimeWarning, match="non-finite"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        point, low, high = rm.bootstrap_ci(rm.auroc, y, [0.1, 0.9, 0.8, 0.7], n_resamples=200)
    assert point == 1.0 and low == 1.0 and high == 1.0


def test_validator_score() -> None:
    assert rm.validator_score(1.0, 1.0) == 1.0
    assert rm.validator_score(0.6, 0.8) == pytest.approx(0.7**3)
    assert rm.validator_score(-0.5, 0.4) == pytest.approx(0.2**3)  # negative MCC clipped at 0 like the subnet
    with pytest.raises(ValueError, match="acc_last10"):
        rm.validator_score(0.5, 1.5)
    with pytest.raises(ValueError, match="mcc_last100"):
        rm.validator_score(-1.5, 0.5)


def test_classification_report_consistent_with_oracles() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    p = np.clip(rng.normal(0.5, 0.25, 500) + 0.2 * (y - 0.5), 0, 1)
    p[:5] = 0.6  # ties at the threshold are "not roadwork" (strict rule)
    rep = rm.classification_report(y, p, threshold=0.6)
    pred = (p > 0.6).astype(int)
    assert rep["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert rep["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert rep["auroc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert rep["auprc"] == pytest.approx(skm.average_precision_score(y, p))
    assert rep["nll"] == pytest.approx(skm.log_loss(y, p))
    assert rep["ece"] == rm.ece(y, p) and rep["augrc"] == rm.augrc(y, p)
    assert rep["validator_score"] == pytest.approx(rm.validator_score(rep["mcc"], rep["accuracy"]))
    assert rep["tp"] + rep["fp"] + rep["tn"] + rep["fn"] == rep["n"] == 500
    assert all(isinstance(v, float) for v in rep.values())


def test_set_metrics() -> None:
    sets = np.array([[True, False], [True, True], [False, False], [False, True]])
    y = np.array([0, 1, 1, 0])
    assert rm.set_coverage(y, sets) == 0.5
    assert rm.set_coverage(y, sets, label=0) == 0.5
    assert rm.set_coverage(y, sets, label=1) == 0.5
    assert rm.abstention_rate(sets) == 0.25 and rm.empty_set_rate(sets) == 0.25
    with pytest.raises(ValueError, match=r"shape \[N, 2\]"):
        rm.abstention_rate(np.ones((3, 3), dtype=bool))
    with pytest.raises(TypeError, match="boolean"):
        rm.abstention_rate(np.ones((3, 2)))
    with pytest.raises(ValueError, match="no sample of label 1"):
        rm.set_coverage([0, 0], sets[:2], label=1)
