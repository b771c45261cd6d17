"""Tests for the plain logistic-regression probe against scikit-learn pipelines fitted by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, matthews_corrcoef
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from roadwork.train.probe import DEFAULT_CS, fit_probe


def _data(seed: int, n: int, d: int = 12, noise: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """float32 features on very different scales and offsets (shared by every split), labels from a linear
    rule on the standardised features plus logistic-ish noise (``noise=0``: linearly separable)."""
    base = np.random.default_rng(0)
    scale, offset, w = base.uniform(0.1, 10.0, size=d), base.normal(size=d) * 5, base.normal(size=d)
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    y = (z @ w + rng.normal(scale=noise, size=n) > 0).astype(np.int64)
    return (z * scale + offset).astype(np.float32), y


def _hand_choice(x_train, y_train, x_select, y_select, cs) -> float:
    x_train, x_select = x_train.astype(np.float64), x_select.astype(np.float64)
    scored = []
    for c in cs:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)).fit(x_train, y_train)
        p = pipe.predict_proba(x_select)[:, 1]
        scored.append((matthews_corrcoef(y_select, p > 0.5), log_loss(y_select, p), c))
    best_mcc = max(s[0] for s in scored)
    ties = [s for s in scored if s[0] == best_mcc]
    least_loss = min(s[1] for s in ties)
    return min(s[2] for s in ties if s[1] == least_loss)


@pytest.mark.parametrize("noise", [1.5, 0.0])
def test_probe_matches_hand_fitted_pipeline(noise: float) -> None:
    xt, yt = _data(1, 300, noise=noise)
    xs, ys = _data(2, 120, noise=noise)
    xe, _ = _data(3, 50)
    probe = fit_probe(xt, yt, xs, ys)  # float32 features, as a feature cache stores them
    # The probe works in float64 (scaling float32 features in float32 would move margins by ~1e-7).
    xt, xs, xe = (a.astype(np.float64) for a in (xt, xs, xe))
    assert _hand_choice(xt, yt, xs, ys, DEFAULT_CS) == probe.C
    assert set(probe.candidates) == set(DEFAULT_CS)
    hand = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=2000)).fit(xt, yt)
    np.testing.assert_allclose(probe.margin(xe), hand.decision_function(xe), rtol=0, atol=1e-8)
    np.testing.assert_allclose(probe.proba(xe), hand.predict_proba(xe)[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(probe.decision(xe), (hand.predict_proba(xe)[:, 1] > 0.5).astype(int))
    np.testing.assert_array_equal(probe.decision(xe), (probe.margin(xe) > 0).astype(int))
    p_sel = hand.predict_proba(xs)[:, 1]
    assert probe.select_mcc == pytest.approx(matthews_corrcoef(ys, p_sel > 0.5), abs=1e-12)
    assert probe.select_log_loss == pytest.approx(log_loss(ys, p_sel), abs=1e-12)


def test_probe_tie_breaks_on_log_loss_then_smaller_c() -> None:
    # Classes 8 standard deviations apart: every C gets MCC 1 on select, so the log loss decides.
    rng = np.random.default_rng(4)
    yt, ys = rng.integers(0, 2, 200), rng.integers(0, 2, 80)
    xt = np.c_[(2 * yt - 1) * 4.0 + rng.normal(size=200), rng.normal(size=(200, 2))]
    xs = np.c_[(2 * ys - 1) * 4.0 + rng.normal(size=80), rng.normal(size=(80, 2))]
    probe = fit_probe(xt, yt, xs, ys, Cs=(0.1, 1.0, 0.01))
    assert {v[0] for v in probe.candidates.values()} == {1.0}
    assert _hand_choice(xt, yt, xs, ys, (0.1, 1.0, 0.01)) == probe.C
    # The grid's order does not matter; a lone C is chosen whatever its score.
    assert fit_probe(xt, yt, xs, ys, Cs=(0.01, 1.0, 0.1)).C == probe.C
    assert fit_probe(xt, yt, xs, ys, Cs=(0.5,)).C == 0.5


def test_probe_uses_view_zero_of_multiview_features() -> None:
    xt, yt = _data(6, 150)
    xs, ys = _data(7, 60)
    rng = np.random.default_rng(8)
    xt3 = np.stack([xt, rng.normal(size=xt.shape), rng.normal(size=xt.shape)], axis=1)
    xs3 = np.stack([xs, rng.normal(size=xs.shape)], axis=1)
    flat, multi = fit_probe(xt, yt, xs, ys), fit_probe(xt3, yt, xs3, ys)
    assert flat.C == multi.C
    np.testing.assert_array_equal(flat.margin(xs), multi.margin(xs3))


def test_probe_bad_inputs_name_the_argument() -> None:
    xt, yt = _data(9, 60)
    xs, ys = _data(10, 30)
    with pytest.raises(ValueError, match="x_train must be features of shape"):
        fit_probe(xt[:, 0], yt, xs, ys)
    with pytest.raises(ValueError, match="x_select must be features of shape"):
        fit_probe(xt, yt, xs[None, None], ys)
    with pytest.raises(ValueError, match="x_select has 11 features per row but x_train has 12"):
        fit_probe(xt, yt, xs[:, 1:], ys)
    with pytest.raises(ValueError, match="y_train has 59 labels but x_train has 60 rows"):
        fit_probe(xt, yt[1:], xs, ys)
    with pytest.raises(ValueError, match="y_select must be 1-D"):
        fit_probe(xt, yt, xs, ys[:, None])
    with pytest.raises(ValueError, match="y_train must contain both labels"):
        fit_probe(xt, np.ones_like(yt), xs, ys)
    with pytest.raises(ValueError, match="y_select must contain only 0 and 1"):
        fit_probe(xt, yt, xs, ys * 2)
    bad = xt.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x_train contains 1 non-finite"):
        fit_probe(bad, yt, xs, ys)
    with pytest.raises(ValueError, match="Cs must be"):
        fit_probe(xt, yt, xs, ys, Cs=())
    with pytest.raises(ValueError, match="Cs must be"):
        fit_probe(xt, yt, xs, ys, Cs=(1.0, -1.0))
    probe = fit_probe(xt, yt, xs, ys)
    with pytest.raises(ValueError, match="x must be features of shape"):
        probe.margin(np.zeros(12))


def test_probe_module_imports_no_torch_or_lightning() -> None:
    code = (
        "import sys, roadwork.train.probe; "
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
