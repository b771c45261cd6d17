"""Tests for the validator's headline metrics, expected reward and the paired group bootstrap, against
hand computations, brute-force enumeration and independent plain-Python simulations (``random.Random``)."""

from __future__ import annotations

import functools
import math
import random
from collections import defaultdict

import numpy as np
import pytest

from roadwork import metrics as rm


def _renders(
    seed: int, n_images: int = 40, p_easy: float = 0.7, max_renders: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(y, decision, level, group): each image has 1..max_renders renders at every level 0..3; an easy image
    is answered right 95 % of the time, a hard one 40 %, so decisions are correlated within an image."""
    rng = np.random.default_rng(seed)
    y, d, lv, g = [], [], [], []
    for img in range(n_images):
        label = img % 2
        p_right = 0.95 if rng.random() < p_easy else 0.4
        for level in range(4):
            for _ in range(int(rng.integers(1, max_renders + 1))):
                right = rng.random() < p_right
                y.append(label)
                d.append(label if right else 1 - label)
                lv.append(level)
                g.append(f"img{img}")
    return np.array(y), np.array(d), np.array(lv), np.array(g)


def _mcc(tp: float, fp: float, tn: float, fn: float) -> float:
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def _cells(y, d, lv, g) -> tuple[dict[int, list[str]], dict[tuple[str, int], list[int]]]:
    """Images per label, and the decisions of each (image, level) cell, as plain Python containers."""
    images: dict[int, list[str]] = defaultdict(list)
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for yi, di, li, gi in zip(y.tolist(), d.tolist(), lv.tolist(), g.tolist(), strict=True):
        if gi not in images[yi]:
            images[yi].append(gi)
        cells[(gi, li)].append(di)
    return images, cells


def _enumerate_confusion(y, d, lv, g, weights=(0.25,) * 4, prior=0.5) -> dict[str, float]:
    """Brute force: sum the probability of every path label -> image -> level -> row into its cell."""
    images, cells = _cells(y, d, lv, g)
    out = {"tp": 0.0, "fp": 0.0, "tn": 0.0, "fn": 0.0}
    for label, p_label in ((1, prior), (0, 1 - prior)):
        for img in images[label]:
            for level, w in enumerate(weights):
                rows = cells[(img, level)]
                for dec in rows:
                    p = p_label / len(images[label]) * w / len(rows)
                    key = {(1, 1): "tp", (1, 0): "fn", (0, 1): "fp", (0, 0): "tn"}[(label, dec)]
                    out[key] += p
    return out


# ---------------------------------------------------------------- expected confusion and validator_mcc


def _hand_example() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # level 0 / level 1 decisions:  a (+): [1, 1] / [0];  b (+): [1] / [1, 0, 0, 0];
    #                               c (-): [0] / [1];     d (-): [0] / [0]
    rows = [
        ("a", 1, 0, 1), ("a", 1, 0, 1), ("a", 1, 1, 0),
        ("b", 1, 0, 1), ("b", 1, 1, 1), ("b", 1, 1, 0), ("b", 1, 1, 0), ("b", 1, 1, 0),
        ("c", 0, 0, 0), ("c", 0, 1, 1),
        ("d", 0, 0, 0), ("d", 0, 1, 0),
    ]  # fmt: skip
    g, y, lv, d = (np.array(col) for col in zip(*rows, strict=True))
    return y, d, lv, g


def test_validator_confusion_hand_computed() -> None:
    y, d, lv, g = _hand_example()
    w = (0.5, 0.5)
    # Per image: TPR_0 = (1 + 1) / 2, TPR_1 = (0 + 1/4) / 2 -> TPR = 0.5625;
    # FPR_0 = 0, FPR_1 = 1/2 -> FPR = 0.25.
    tp, fp, tn, fn = 0.5 * 0.5625, 0.5 * 0.25, 0.5 * 0.75, 0.5 * 0.4375
    c = rm.validator_confusion(y, d, lv, groups=g, level_weights=w)
    assert c == pytest.approx((tp, fp, tn, fn), abs=1e-15)
    assert sum(c) == pytest.approx(1.0, abs=1e-15)
    assert c == pytest.approx(tuple(_enumerate_confusion(y, d, lv, g, w).values()), abs=1e-15)
    m = rm.validator_metrics(y, d, lv, groups=g, level_weights=w)
    assert m["validator_mcc"] == pytest.approx((tp * tn - fp * fn) / math.sqrt(0.40625 * 0.5 * 0.5 * 0.59375))
    assert m["validator_mcc"] == pytest.approx(rm.mcc_from_counts(*c), abs=1e-15)
    assert rm.validator_mcc(y, d, lv, groups=g, level_weights=w) == m["validator_mcc"]
    assert m["validator_accuracy"] == pytest.approx(0.65625)
    assert m["predicted_positive_rate"] == pytest.approx(tp + fp)
    assert m["L0_accuracy"] == pytest.approx(1.0) and m["L0_mcc"] == pytest.approx(1.0)
    # Level 1: TPR 1/8, FPR 1/2 -> (1/16, 1/4, 1/4, 7/16).
    assert m["L1_accuracy"] == pytest.approx(0.3125)
    assert m["L1_mcc"] == pytest.approx(_mcc(1 / 16, 1 / 4, 1 / 4, 7 / 16))
    # Without groups every row of a label and level counts equally: TPR_1 = 1/5, so TPR = 0.6.
    c_rows = rm.validator_confusion(y, d, lv, level_weights=w)
    assert c_rows == pytest.approx((0.3, 0.125, 0.375, 0.2), abs=1e-15)


def test_validator_confusion_matches_enumeration_uniform_levels() -> None:
    y, d, lv, g = _renders(seed=1, n_images=15)
    c = rm.validator_confusion(y, d, lv, groups=g)
    assert c == pytest.approx(tuple(_enumerate_confusion(y, d, lv, g).values()), abs=1e-12)
    c = rm.validator_confusion(y, d, lv, groups=g, prior=0.3, level_weights=(0.1, 0.2, 0.3, 0.4))
    ref = _enumerate_confusion(y, d, lv, g, (0.1, 0.2, 0.3, 0.4), prior=0.3)
    assert c == pytest.approx(tuple(ref.values()), abs=1e-12)


def test_validator_mcc_matches_large_monte_carlo() -> None:
    y, d, lv, g = _renders(seed=2, n_images=30)
    images, cells = _cells(y, d, lv, g)
    rr = random.Random(12345)
    n = 100_000
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for _ in range(n):
        label = 1 if rr.random() < 0.5 else 0
        img = rr.choice(images[label])
        dec = rr.choice(cells[(img, rr.randrange(4))])
        counts[{(1, 1): "tp", (1, 0): "fn", (0, 1): "fp", (0, 0): "tn"}[(label, dec)]] += 1
    c = rm.validator_confusion(y, d, lv, groups=g)._asdict()
    for key, p in c.items():
        # CLT: a cell's frequency has standard error sqrt(p (1 - p) / n); allow 4 of them.
        assert counts[key] / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))
    # The MCC of n draws has standard error below 1 / sqrt(n) here (about (1 - mcc^2) / sqrt(n)).
    mc = _mcc(*(counts[k] / n for k in ("tp", "fp", "tn", "fn")))
    assert rm.validator_mcc(y, d, lv, groups=g) == pytest.approx(mc, abs=4 / math.sqrt(n))


def test_validator_metrics_edge_classifiers() -> None:
    y, _, lv, g = _renders(seed=3)
    perfect = rm.validator_metrics(y, y, lv, groups=g)
    assert perfect["validator_mcc"] == 1.0 and perfect["validator_accuracy"] == 1.0
    assert perfect["predicted_positive_rate"] == 0.5
    ones = rm.validator_metrics(y, np.ones_like(y), lv, groups=g)
    assert ones["validator_mcc"] == 0.0 and ones["validator_accuracy"] == 0.5
    assert ones["predicted_positive_rate"] == 1.0
    assert set(ones) == {"validator_mcc", "validator_accuracy", "predicted_positive_rate"} | {
        f"L{k}_{m}" for k in range(4) for m in ("mcc", "accuracy")
    }


def test_validator_inputs_are_checked() -> None:
    y, d, lv, g = _hand_example()
    no_pos_l1 = ~((y == 1) & (lv == 1))
    with pytest.raises(ValueError, match=r"no row of label\(s\) \[1\] at level 1"):
        rm.validator_confusion(y[no_pos_l1], d[no_pos_l1], lv[no_pos_l1], level_weights=(0.5, 0.5))
    keep = ~((g == "c") & (lv == 1))
    with pytest.raises(ValueError, match=r"1 image\(s\) in groups have no row at level 1.*'c'"):
        rm.validator_confusion(y[keep], d[keep], lv[keep], groups=g[keep], level_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="no row of label 0"):
        rm.validator_metrics(y[y == 1], d[y == 1], lv[y == 1], groups=g[y == 1], level_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="level must hold integer"):
        rm.validator_confusion(y, d, lv, level_weights=(1.0,))
    with pytest.raises(ValueError, match="sum to 1"):
        rm.validator_confusion(y, d, lv, level_weights=(0.5, 0.6))
    with pytest.raises(ValueError, match="decision must contain only 0 and 1"):
        rm.validator_confusion(y, d * 0.7, lv, level_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="groups has 3"):
        rm.validator_confusion(y, d, lv, groups=g[:3], level_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="prior"):
        rm.expected_reward(y, d, lv, level_weights=(0.5, 0.5), prior=1.0)
    # A level of weight 0 needs no rows; its per-level metrics are nan where a label lacks rows.
    m = rm.validator_metrics(y[keep], d[keep], lv[keep], groups=g[keep], level_weights=(1.0, 0.0, 0.0))
    assert m["validator_mcc"] == 1.0 and math.isnan(m["L2_mcc"]) and not math.isnan(m["L1_mcc"])


# ---------------------------------------------------------------- reward and expected reward


def test_reward_formula_and_clipping() -> None:
    assert rm.reward(-0.5, 0.8) == pytest.approx(0.4**3)
    assert rm.reward(0.0, 0.8) == rm.reward(-1.0, 0.8)
    assert rm.reward(0.2, 0.8) == pytest.approx(0.5**3)
    assert rm.reward(1.0, 1.0) == 1.0 and rm.reward(-1.0, 0.0) == 0.0
    for m, a in [(0.3, 0.7), (-0.2, 0.1), (0.9, 1.0)]:
        assert rm.reward(m, a) == pytest.approx(rm.validator_score(m, a), abs=1e-15)
    out = rm.reward(np.array([-0.5, 0.2]), np.array([0.8, 0.8]))
    np.testing.assert_allclose(out, [0.4**3, 0.5**3])
    with pytest.raises(ValueError, match="mcc_100"):
        rm.reward(1.5, 0.5)
    with pytest.raises(ValueError, match="accuracy_10"):
        rm.reward(0.5, float("nan"))


def _python_rewards(
    y, d, lv, g, n_streams: int, seed: int, length: int = 100, window: int = 10
) -> list[float]:
    """The subnet's reward over simulated streams, one challenge at a time, in plain Python."""
    images, cells = _cells(y, d, lv, g)
    rr = random.Random(seed)
    rewards = []
    for _ in range(n_streams):
        labels, answers = [], []
        for _ in range(length):
            label = 1 if rr.random() < 0.5 else 0
            img = rr.choice(images[label])
            answers.append(rr.choice(cells[(img, rr.randrange(4))]))
            labels.append(label)
        pairs = list(zip(labels, answers, strict=True))
        tp, fp = pairs.count((1, 1)), pairs.count((0, 1))
        tn, fn = pairs.count((0, 0)), pairs.count((1, 0))
        acc = sum(a == b for a, b in pairs[-window:]) / window
        rewards.append((0.5 * max(_mcc(tp, fp, tn, fn), 0.0) + 0.5 * acc) ** 3)
    return rewards


def _mean_se(values) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))


def test_expected_reward_matches_python_simulation() -> None:
    y, d, lv, g = _renders(seed=4, n_images=30)
    ours, ours_se = _mean_se(rm.reward_streams(y, d, lv, groups=g, n_streams=4000, seed=7))
    assert rm.expected_reward(y, d, lv, groups=g, n_streams=4000, seed=7) == pytest.approx(ours, abs=1e-15)
    ref, ref_se = _mean_se(_python_rewards(y, d, lv, g, n_streams=4000, seed=99))
    assert 0.05 < ours < 0.95
    assert ours == pytest.approx(ref, abs=3.5 * math.hypot(ours_se, ref_se))


def test_expected_reward_edge_classifiers() -> None:
    y, _, lv, g = _renders(seed=5)
    assert rm.expected_reward(y, y, lv, groups=g) == 1.0
    # Always roadwork: MCC 0 in every window, so reward = (0.5 * K / 10)^3 with K ~ Binomial(10, 0.5).
    exact = sum(math.comb(10, k) / 2**10 * (0.5 * k / 10) ** 3 for k in range(11))
    assert exact == pytest.approx(0.0203125, abs=1e-15)
    ones = np.ones_like(y)
    mean, se = _mean_se(rm.reward_streams(y, ones, lv, groups=g, n_streams=20_000))
    assert mean == pytest.approx(exact, abs=3.5 * se)
    # The plug-in score of the expected metrics is not the expected reward (the reward is convex).
    assert rm.validator_score(0.0, 0.5) == 0.015625


def test_expected_reward_inputs_and_speed() -> None:
    y, d, lv, g = _renders(seed=6, n_images=10)
    keep = ~((g == "img3") & (lv == 2))
    with pytest.raises(ValueError, match=r"no row at level 2.*'img3'"):
        rm.expected_reward(y[keep], d[keep], lv[keep], groups=g[keep])
    with pytest.raises(ValueError, match="no row of label 1"):
        rm.expected_reward(y[y == 0], d[y == 0], lv[y == 0], groups=g[y == 0])
    with pytest.raises(ValueError, match="accuracy_window"):
        rm.expected_reward(y, d, lv, stream_length=5, accuracy_window=10)
    with pytest.raises(ValueError, match="n_streams"):
        rm.expected_reward(y, d, lv, n_streams=0)
    # Same rows and seed -> same draws; a different seed -> different draws.
    first = rm.expected_reward(y, d, lv, groups=g)
    assert rm.expected_reward(y, d, lv, groups=g) == first != rm.expected_reward(y, d, lv, groups=g, seed=1)
    big = _renders(seed=7, n_images=1000, max_renders=1)
    assert len(big[0]) == 4000
    import time

    start = time.perf_counter()
    rm.expected_reward(*big[:3], groups=big[3], n_streams=2000)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------- paired bootstrap


def _pair(seed: int, n_images: int, p_easy_a: float, p_easy_b: float):
    """Two models' decisions on the same renders."""
    y, d_a, lv, g = _renders(seed, n_images=n_images, p_easy=p_easy_a)
    y_b, d_b, lv_b, g_b = _renders(seed, n_images=n_images, p_easy=p_easy_b)
    assert (y == y_b).all() and (lv == lv_b).all() and (g == g_b).all()
    return y, d_a, d_b, lv, g


def test_paired_bootstrap_identical_models_give_exact_zero() -> None:
    y, d, _, lv, g = _pair(seed=8, n_images=60, p_easy_a=0.7, p_easy_b=0.7)
    shared = {"y_true": y, "level": lv}
    assert rm.paired_bootstrap_diff(rm.validator_mcc, d, d.copy(), g, shared=shared, n_resamples=200) == (
        0.0,
        0.0,
        0.0,
    )
    fast = functools.partial(rm.expected_reward, n_streams=100)
    out = rm.paired_bootstrap_diff(fast, d, d.copy(), g, shared=shared, n_resamples=50)
    assert out == (0.0, 0.0, 0.0)


def test_paired_bootstrap_clear_and_tiny_differences() -> None:
    y, better, worse, lv, g = _pair(seed=9, n_images=200, p_easy_a=0.9, p_easy_b=0.5)
    shared = {"y_true": y, "level": lv}
    point, low, high = rm.paired_bootstrap_diff(
        rm.validator_mcc, better, worse, g, shared=shared, n_resamples=300
    )
    assert point == pytest.approx(
        rm.validator_mcc(y, better, lv, groups=g) - rm.validator_mcc(y, worse, lv, groups=g)
    )
    assert 0 < low < point < high
    # Promotion: expected reward of challenger minus champion, few streams per resample, precise point.
    point_r, low_r, high_r = rm.paired_bootstrap_diff(
        functools.partial(rm.expected_reward, n_streams=200),
        better,
        worse,
        g,
        shared=shared,
        point_fn=rm.expected_reward,
        n_resamples=100,
    )
    assert point_r == pytest.approx(
        rm.expected_reward(y, better, lv, groups=g) - rm.expected_reward(y, worse, lv, groups=g)
    )
    assert 0 < low_r < high_r
    # Flip every render of two images it gets right and two it gets wrong: a difference inside the noise.
    names = np.unique(g)
    right = np.array([np.mean(better[g == name] == y[g == name]) > 0.5 for name in names])
    tiny = better.copy()
    flip = np.isin(g, [*names[right][:2], *names[~right][:2]])
    tiny[flip] = 1 - tiny[flip]
    point, low, high = rm.paired_bootstrap_diff(
        rm.validator_mcc, tiny, better, g, shared=shared, n_resamples=300
    )
    assert point != 0 and low < 0 < high


def test_paired_bootstrap_resamples_whole_groups_as_distinct_copies() -> None:
    y, _, lv, g = _renders(seed=10, n_images=12)
    rows_of = {name: set(np.flatnonzero(g == name).tolist()) for name in np.unique(g)}
    calls = []

    def spy(decision, y_true, level, groups):
        calls.append((np.asarray(decision), np.asarray(groups)))
        return float(len(decision))

    row_ids = np.arange(len(y))
    rm.paired_bootstrap_diff(spy, row_ids, row_ids, g, shared={"y_true": y, "level": lv}, n_resamples=20)
    assert len(calls) == 2 * 21
    assert (calls[0][1] == g).all()  # the point estimate sees the original ids
    for ids, copy_ids in calls[2:]:
        copies = np.unique(copy_ids)
        assert len(copies) == 12  # G draws, each its own id even when a group is drawn twice
        for c in copies:
            members = ids[copy_ids == c].tolist()
            assert len(set(members)) == len(members) and set(members) in rows_of.values()
    # Resampling pairs of images (a dedupe group) while the statistic weighs images: ids per (copy, image).
    pairs = np.array([int(name[3:]) // 2 for name in g])
    calls.clear()
    rm.paired_bootstrap_diff(spy, row_ids, row_ids, pairs, stat_groups=g, shared={"y_true": y, "level": lv})
    for ids, copy_ids in calls[2:]:
        assert len(np.unique(copy_ids)) == 12
        for c in np.unique(copy_ids):
            assert set(ids[copy_ids == c].tolist()) in rows_of.values()


def test_paired_bootstrap_group_interval_is_wider_than_row_interval() -> None:
    # Every render of an image is answered alike, so an image, not a row, is the unit of evidence.
    y, b, lv, g = _renders(seed=11, n_images=120, p_easy=0.6)
    image_right = {name: np.random.default_rng(int(name[3:])).random() < 0.8 for name in np.unique(g)}
    a = np.where([image_right[name] for name in g], y, 1 - y)
    shared = {"y_true": y, "level": lv}
    stat = functools.partial(rm.validator_mcc, level_weights=(0.25,) * 4)
    _, lo_g, hi_g = rm.paired_bootstrap_diff(stat, a, b, g, shared=shared, n_resamples=300)

    def per_row(decision, y_true, level, groups):
        return rm.validator_mcc(y_true, decision, level)

    _, lo_r, hi_r = rm.paired_bootstrap_diff(per_row, a, b, np.arange(len(y)), shared=shared, n_resamples=300)
    assert hi_g - lo_g > 1.8 * (hi_r - lo_r)


def test_paired_bootstrap_inputs_are_checked() -> None:
    y, d, lv, g = _renders(seed=12, n_images=6)
    with pytest.raises(ValueError, match="b has"):
        rm.paired_bootstrap_diff(rm.validator_mcc, d, d[:-1], g, shared={"y_true": y, "level": lv})
    with pytest.raises(ValueError, match="shared may not contain 'groups'"):
        rm.paired_bootstrap_diff(rm.validator_mcc, d, d, g, shared={"y_true": y, "level": lv, "groups": g})
    with pytest.raises(ValueError, match="n_resamples"):
        rm.paired_bootstrap_diff(rm.validator_mcc, d, d, g, shared={"y_true": y, "level": lv}, n_resamples=0)
    with pytest.raises(TypeError, match="stat_fn"):
        rm.paired_bootstrap_diff("mcc", d, d, g)  # type: ignore[arg-type]


def test_group_bootstrap_of_one_model_matches_a_hand_loop_over_the_same_draws() -> None:
    """One model's interval: the statistic on every resample that ``paired_bootstrap_diff`` draws."""
    rng = np.random.default_rng(5)
    n = 60
    y = np.tile(rng.integers(0, 2, n), 4)
    level = np.repeat(np.arange(4), n)
    image = np.tile(np.arange(n), 4)
    decision = np.where(rng.random(4 * n) < 0.8, y, 1 - y)
    point, low, high = rm.group_bootstrap(
        rm.validator_mcc, decision, image, shared={"y_true": y, "level": level}, n_resamples=300, seed=3
    )
    assert point == rm.validator_mcc(y, decision, level, groups=image)
    _, codes = np.unique(image, return_inverse=True)
    by_hand = [
        rm.validator_mcc(y[idx], decision[idx], level[idx], groups=copies * n + codes[idx])
        for idx, copies in rm.group_resamples(codes.astype(np.int64), 300, np.random.default_rng(3))
    ]
    assert (low, high) == tuple(np.quantile(by_hand, [0.025, 0.975]))
    # a model always right has a degenerate interval; against itself the paired difference is exactly 0
    assert rm.group_bootstrap(rm.validator_mcc, y, image, shared={"y_true": y, "level": level})[1:] == (
        1.0,
        1.0,
    )


def test_one_pass_bootstrap_of_several_figures_equals_the_separate_passes() -> None:
    y, better, worse, lv, g = _pair(seed=12, n_images=80, p_easy_a=0.8, p_easy_b=0.6)
    shared = {"y_true": y, "level": lv}
    reward = functools.partial(rm.expected_reward, n_streams=50, seed=3)

    def both(**kwargs):
        return [rm.validator_mcc(**kwargs), reward(**kwargs)]

    stats = rm.group_bootstrap_stats(both, (better, worse), g, shared=shared, n_resamples=60, seed=5)
    assert stats.shape == (60, 2, 2)
    for column, decision in enumerate((better, worse)):
        for j, fn in enumerate((rm.validator_mcc, reward)):
            _, low, high = rm.group_bootstrap(fn, decision, g, shared=shared, n_resamples=60, seed=5)
            assert rm.percentile_interval(stats[:, column, j]) == pytest.approx((low, high), abs=1e-12)
    _, low, high = rm.paired_bootstrap_diff(
        rm.validator_mcc, better, worse, g, shared=shared, n_resamples=60, seed=5
    )
    assert rm.percentile_interval(stats[:, 0, 0] - stats[:, 1, 0]) == pytest.approx((low, high), abs=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        rm.group_bootstrap_stats(both, (), g, shared=shared)
    with pytest.raises(ValueError, match="length"):
        rm.group_bootstrap_stats(both, (better, worse[:-1]), g, shared=shared)
