"""Tests for roadwork.plots: readable, deterministic PNGs whose numbers are the metrics module's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as skm

from roadwork import metrics as rm
from roadwork import plots
from roadwork.policy.threshold import mcc_sweep

REPO = Path(__file__).resolve().parents[1]

RNG = np.random.default_rng(7)
N = 400
Y = (RNG.random(N) < 0.7).astype(np.int64)
MARGIN = RNG.normal(0.0, 1.0, N) + 1.5 * (2 * Y - 1)
P_RAW = 1.0 / (1.0 + np.exp(-2.0 * MARGIN))
P_CAL = 1.0 / (1.0 + np.exp(-MARGIN))
PRED = (P_CAL > 0.5).astype(np.int64)
SWEEP = mcc_sweep(Y, P_CAL)
CHOSEN = SWEEP.best()[0]
HISTORY = pd.DataFrame(
    {
        "epoch": np.arange(8),
        "train_loss": np.linspace(0.7, 0.2, 8),
        "val_loss": [0.65, 0.5, 0.42, 0.4, 0.41, 0.43, 0.45, 0.47],
        "val_mcc": [0.3, 0.5, 0.62, 0.66, 0.66, 0.64, 0.63, 0.6],
        "val_best_mcc": [0.35, 0.55, 0.65, 0.68, 0.69, 0.67, 0.66, 0.64],
        "lr": np.geomspace(1e-3, 1e-5, 8),
    }
)


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    modes = ["RGB", "L", "RGBA"]
    out = []
    for i in range(n):
        arr = (rng.random((60 + 10 * i, 80, 3)) * 255).astype(np.uint8)
        out.append(Image.fromarray(arr).convert(modes[i % 3]))
    return out


# name -> (writer, expected (width, height) in pixels)
CASES: dict[str, tuple[Callable[[Path], Path], tuple[int, int]]] = {
    "roc": (lambda p: plots.roc_plot(Y, MARGIN, p), (550, 500)),
    "pr": (lambda p: plots.pr_plot(Y, P_CAL, p), (550, 500)),
    "reliability": (lambda p: plots.reliability_plot(Y, {"before": P_RAW, "after": P_CAL}, p), (600, 600)),
    "sweep": (lambda p: plots.threshold_sweep_plot(SWEEP.to_frame(), p, chosen_threshold=CHOSEN), (800, 450)),
    "confusion": (lambda p: plots.confusion_plot(Y, PRED, p), (480, 440)),
    "risk_coverage": (lambda p: plots.risk_coverage_plot(Y, P_CAL, p), (600, 450)),
    "training": (lambda p: plots.training_curves_plot(HISTORY, p), (650, 700)),
    "training_no_lr": (
        lambda p: plots.training_curves_plot(HISTORY.drop(columns=["lr", "val_best_mcc"]), p),
        (650, 550),
    ),
    "contact_sheet": (
        lambda p: plots.contact_sheet(_images(7), [f"img_{i}.jpg p=0.9{i}" for i in range(7)], p, columns=3),
        (3 * (160 + 12), 3 * (160 + 12 + 3 * 16)),
    ),
}


def _legend_texts(fig: object) -> list[str]:
    texts = []
    for ax in fig.axes:  # type: ignore[attr-defined]
        legend = ax.get_legend()
        if legend is not None:
            texts.extend(t.get_text() for t in legend.get_texts())
    return texts


def _number_after(prefix: str, texts: list[str]) -> float:
    for text in texts:
        match = re.search(re.escape(prefix) + r"\s*=\s*([0-9.]+)", text)
        if match:
            return float(match.group(1))
    raise AssertionError(f"no legend entry with {prefix!r} in {texts}")


# ------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("name", list(CASES))
def test_writes_readable_png_of_expected_size(name: str, tmp_path: Path) -> None:
    write, (width, height) = CASES[name]
    target = tmp_path / "sub" / f"{name}.png"
    returned = write(target)
    assert returned == target
    with Image.open(target) as img:
        img.verify()
    with Image.open(target) as img:
        assert img.format == "PNG"
        assert abs(img.width - width) <= 2 and abs(img.height - height) <= 2, img.size
        assert "Software" not in img.info
        # Something was drawn: the picture is not a single flat colour.
        extrema = img.convert("L").getextrema()
        assert extrema[0] < 100 and extrema[1] > 200
    assert sorted(p.name for p in target.parent.iterdir()) == [f"{name}.png"]  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("name", list(CASES))
def test_output_is_byte_deterministic(name: str, tmp_path: Path) -> None:
    write, _ = CASES[name]
    first, second = write(tmp_path / "a.png"), write(tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()


def test_output_is_identical_across_processes(tmp_path: Path) -> None:
    here = plots.roc_plot([0, 1, 1, 0, 1], [0.1, 0.8, 0.4, 0.5, 0.9], tmp_path / "here.png")
    code = (
        "import sys; from roadwork import plots; "
        "plots.roc_plot([0, 1, 1, 0, 1], [0.1, 0.8, 0.4, 0.5, 0.9], sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there.png")], check=True, cwd=REPO)
    assert here.read_bytes() == (tmp_path / "there.png").read_bytes()


def test_overwrites_existing_file_and_accepts_str_path(tmp_path: Path) -> None:
    target = tmp_path / "roc.png"
    target.write_bytes(b"old")
    out = plots.roc_plot(Y, MARGIN, str(target))
    assert out == target and target.read_bytes().startswith(b"\x89PNG")


def test_failed_write_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def boom(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("render failed")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="render failed"):
        plots.roc_plot(Y, MARGIN, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_no_pyplot_import() -> None:
    code = "import sys, roadwork.plots; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------ numbers shown


def test_roc_legend_is_auroc_and_curve_is_metrics_curve() -> None:
    fig = plots.roc_figure(Y, MARGIN)
    shown = _number_after("AUROC", _legend_texts(fig))
    assert f"{shown:.4f}" == f"{rm.auroc(Y, MARGIN):.4f}"
    assert shown == pytest.approx(skm.roc_auc_score(Y, MARGIN), abs=5e-5)
    curve = rm.roc_curve(Y, MARGIN)
    line = fig.axes[0].get_lines()[-1]
    np.testing.assert_array_equal(line.get_xdata(), curve.fpr)
    np.testing.assert_array_equal(line.get_ydata(), curve.tpr)


def test_roc_with_one_class_says_undefined_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.roc_figure([1, 1, 1], [0.2, 0.5, 0.9])
    assert any("undefined" in t for t in _legend_texts(fig))


def test_pr_legend_is_average_precision_and_baseline_is_prevalence() -> None:
    texts = _legend_texts(plots.pr_figure(Y, P_CAL))
    assert _number_after("AP", texts) == pytest.approx(skm.average_precision_score(Y, P_CAL), abs=5e-5)
    assert f"{_number_after('AP', texts):.4f}" == f"{rm.auprc(Y, P_CAL):.4f}"
    assert _number_after("positive rate", texts) == pytest.approx(Y.mean(), abs=5e-5)


def _ece_oracle(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / len(p) * abs(y[inside].mean() - p[inside].mean())
    return total


@pytest.mark.parametrize("n_bins", [15, 7])
def test_reliability_legend_is_ece_per_set_and_points_are_bins(n_bins: int) -> None:
    sets = {"before": P_RAW, "after": P_CAL}
    fig = plots.reliability_figure(Y, sets, n_bins=n_bins)
    texts = _legend_texts(fig)
    top, bottom = fig.axes
    for key, p in sets.items():
        shown = _number_after(f"{key}: ECE", texts)
        assert f"{shown:.4f}" == f"{rm.ece(Y, p, n_bins=n_bins):.4f}"
        assert shown == pytest.approx(_ece_oracle(Y, p, n_bins), abs=5e-5)
    curves = [rm.reliability_curve(Y, p, n_bins=n_bins) for p in sets.values()]
    lines = top.get_lines()[1:]  # after the diagonal
    for line, curve in zip(lines, curves, strict=True):
        filled = curve.counts > 0
        np.testing.assert_allclose(line.get_xdata(), curve.mean_confidence[filled])
        np.testing.assert_allclose(line.get_ydata(), curve.accuracy[filled])
    heights = [patch.get_height() for patch in bottom.patches]
    assert len(heights) == 2 * n_bins
    assert sum(heights[:n_bins]) == N and sum(heights[n_bins:]) == N


def test_roc_and_pr_tables_are_the_rule_score_above_threshold() -> None:
    y, score = Y, MARGIN
    roc, pr = plots.roc_table(y, score), plots.pr_table(y, score)
    assert list(roc.columns) == ["threshold", "fpr", "tpr"]
    assert list(pr.columns) == ["threshold", "recall", "precision"]
    positive, negative = score[y == 1], score[y == 0]
    for t, fpr, tpr in roc.itertuples(index=False):
        assert (fpr, tpr) == pytest.approx((np.mean(negative > t), np.mean(positive > t)), abs=1e-12)
    for t, recall, precision in pr.itertuples(index=False):
        called = y[score > t]
        assert recall == pytest.approx(np.mean(positive > t), abs=1e-12)
        assert precision == pytest.approx(called.mean() if len(called) else 1.0, abs=1e-12)
    assert roc["fpr"].is_monotonic_increasing and pr["recall"].is_monotonic_increasing
    fpr, tpr, _ = skm.roc_curve(Y, MARGIN, drop_intermediate=False)
    np.testing.assert_allclose(roc[["fpr", "tpr"]].to_numpy(), np.c_[fpr, tpr])
    # what the figure draws is the table
    line = plots.pr_figure(Y, MARGIN).axes[0].get_lines()[-1]
    np.testing.assert_array_equal(line.get_xdata(), pr["recall"])


@pytest.mark.parametrize("n_bins", [15, 4])
def test_reliability_table_is_the_non_empty_bins(n_bins: int) -> None:
    table = plots.reliability_table(Y, P_CAL, n_bins=n_bins)
    assert list(table.columns) == ["bin_center", "mean_predicted", "observed_fraction", "count"]
    rows, p = [], P_CAL
    for b in range(n_bins):
        inside = (p >= b / n_bins) & ((p < (b + 1) / n_bins) if b < n_bins - 1 else (p <= 1))
        if inside.any():
            rows.append(((b + 0.5) / n_bins, p[inside].mean(), Y[inside].mean(), inside.sum()))
    np.testing.assert_allclose(table.to_numpy(), np.array(rows), rtol=0, atol=1e-12)
    assert table["count"].sum() == N
    # empty bins are left out
    sparse = plots.reliability_table([0, 1, 1], [0.05, 0.9, 0.95], n_bins=10)
    np.testing.assert_allclose(sparse.to_numpy(), [[0.05, 0.05, 0.0, 1], [0.95, 0.925, 1.0, 2]], atol=1e-12)


def test_sweep_marks_chosen_threshold_with_its_mcc() -> None:
    threshold, best_mcc = SWEEP.best()
    fig = plots.threshold_sweep_figure(SWEEP.to_frame(), chosen_threshold=threshold)
    (label,) = [t for t in _legend_texts(fig) if t.startswith("chosen threshold")]
    match = re.search(r"\(MCC ([0-9.]+)\)", label)
    assert match is not None and float(match.group(1)) == pytest.approx(best_mcc, abs=5e-5)
    vline = fig.axes[0].get_lines()[-1]
    assert list(vline.get_xdata()) == [threshold, threshold]
    # Shuffled rows and no chosen threshold are fine too.
    frame = SWEEP.to_frame().sample(frac=1.0, random_state=0)
    assert not any("chosen" in t for t in _legend_texts(plots.threshold_sweep_figure(frame)))


def test_confusion_annotations_match_sklearn() -> None:
    fig = plots.confusion_figure(Y, PRED)
    ax = fig.axes[0]
    counts = [int(t.get_text().split("\n")[0]) for t in ax.texts]
    tn, fp, fn, tp = skm.confusion_matrix(Y, PRED, labels=[0, 1]).ravel()
    assert counts == [tn, fp, fn, tp]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["None", "Roadwork"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["None", "Roadwork"]
    assert _number_after("MCC", [ax.get_title()]) == pytest.approx(skm.matthews_corrcoef(Y, PRED), abs=5e-5)


def test_risk_coverage_legend_is_augrc() -> None:
    fig = plots.risk_coverage_figure(Y, P_CAL)
    shown = _number_after("AUGRC", _legend_texts(fig))
    assert f"{shown:.4f}" == f"{rm.augrc(Y, P_CAL):.4f}"
    curve = rm.risk_coverage_curve(Y, P_CAL)
    np.testing.assert_array_equal(fig.axes[0].get_lines()[0].get_ydata(), curve.selective_risk)


def test_training_curves_mark_first_best_val_mcc_or_given_epoch() -> None:
    default = plots.training_curves_figure(HISTORY)
    assert any(t == "selected epoch 3" for t in _legend_texts(default))  # first of the tied 0.66
    given = plots.training_curves_figure(HISTORY, best_epoch=4)
    assert any(t == "selected epoch 4" for t in _legend_texts(given))
    single = plots.training_curves_figure(HISTORY.iloc[[0]])
    assert any(t == "selected epoch 0" for t in _legend_texts(single))


def test_contact_sheet_layout_and_empty_placeholder(tmp_path: Path) -> None:
    out = plots.contact_sheet(_images(2), ["a", "b"], tmp_path / "two.png", columns=6, thumb=64)
    with Image.open(out) as img:
        assert img.size == (2 * (64 + 12), 64 + 12 + 3 * 12)
    empty = plots.contact_sheet([], [], tmp_path / "none.png", title="Worst false negatives")
    with Image.open(empty) as img:
        assert img.format == "PNG" and img.width > 0
    long_caption = "word " * 200
    plots.contact_sheet(_images(1), [long_caption], tmp_path / "long.png")


# ------------------------------------------------------------------------------------ bad inputs

BAD_INPUTS: list[tuple[str, Callable[[Path], object], type[Exception], str]] = [
    ("score nan", lambda p: plots.roc_plot([0, 1], [0.1, np.nan], p), ValueError, "score.*non-finite"),
    ("score 2-D", lambda p: plots.roc_plot([0, 1], [[0.1, 0.2]], p), ValueError, "score must be 1-D"),
    ("length", lambda p: plots.pr_plot([0, 1, 1], [0.1, 0.2], p), ValueError, "y_true has 3.*score has 2"),
    ("empty", lambda p: plots.roc_plot([], [], p), ValueError, "y_true is empty"),
    (
        "labels",
        lambda p: plots.pr_plot([0, 2], [0.1, 0.2], p),
        ValueError,
        "y_true must contain only 0 and 1",
    ),
    ("str scores", lambda p: plots.roc_plot([0, 1], ["a", "b"], p), TypeError, "score must be numeric"),
    ("png", lambda p: plots.roc_plot([0, 1], [0.1, 0.2], p.with_suffix(".jpg")), ValueError, "path must end"),
    ("path type", lambda p: plots.roc_plot([0, 1], [0.1, 0.2], 3), TypeError, "path must be"),
    ("title", lambda p: plots.roc_plot([0, 1], [0.1, 0.2], p, title=3), TypeError, "title must be"),
    (
        "probs type",
        lambda p: plots.reliability_plot([0, 1], [0.1, 0.2], p),
        TypeError,
        "probs must be a mapping",
    ),
    ("probs empty", lambda p: plots.reliability_plot([0, 1], {}, p), ValueError, "probs is empty"),
    ("probs key", lambda p: plots.reliability_plot([0, 1], {1: [0.1, 0.2]}, p), TypeError, "probs keys"),
    (
        "probs range",
        lambda p: plots.reliability_plot([0, 1], {"after": [0.1, 1.2]}, p),
        ValueError,
        r"probs\['after'\] must hold probabilities",
    ),
    (
        "probs length",
        lambda p: plots.reliability_plot([0, 1], {"after": [0.1]}, p),
        ValueError,
        r"probs\['after'\] has 1",
    ),
    (
        "n_bins",
        lambda p: plots.reliability_plot([0, 1], {"a": [0.1, 0.2]}, p, n_bins=0),
        ValueError,
        "n_bins",
    ),
    ("sweep type", lambda p: plots.threshold_sweep_plot({"threshold": [0.5]}, p), TypeError, "sweep_frame"),
    (
        "sweep columns",
        lambda p: plots.threshold_sweep_plot(pd.DataFrame({"threshold": [0.5]}), p),
        ValueError,
        r"sweep_frame lacks required column\(s\) \['mcc', 'precision', 'recall', 'fnr'\]",
    ),
    (
        "sweep empty",
        lambda p: plots.threshold_sweep_plot(SWEEP.to_frame().iloc[:0], p),
        ValueError,
        "sweep_frame is empty",
    ),
    (
        "sweep nan",
        lambda p: plots.threshold_sweep_plot(SWEEP.to_frame().assign(mcc=np.nan), p),
        ValueError,
        r"sweep_frame\['mcc'\] contains",
    ),
    (
        "chosen nan",
        lambda p: plots.threshold_sweep_plot(SWEEP.to_frame(), p, chosen_threshold=float("nan")),
        ValueError,
        "chosen_threshold must be finite",
    ),
    ("y_pred", lambda p: plots.confusion_plot([0, 1], [0.3, 1], p), ValueError, "y_pred must contain only"),
    ("p range", lambda p: plots.risk_coverage_plot([0, 1], [-0.1, 0.5], p), ValueError, "p must hold"),
    ("p inf", lambda p: plots.risk_coverage_plot([0, 1], [np.inf, 0.5], p), ValueError, "p contains 1"),
    ("history type", lambda p: plots.training_curves_plot([1, 2], p), TypeError, "history must be"),
    (
        "history columns",
        lambda p: plots.training_curves_plot(HISTORY.drop(columns=["val_loss"]), p),
        ValueError,
        r"history lacks required column\(s\) \['val_loss'\]",
    ),
    (
        "history lr nan",
        lambda p: plots.training_curves_plot(HISTORY.assign(lr=np.nan), p),
        ValueError,
        r"history\['lr'\] contains 8 non-finite",
    ),
    (
        "history text",
        lambda p: plots.training_curves_plot(HISTORY.assign(val_mcc="x"), p),
        TypeError,
        r"history\['val_mcc'\] must be numeric",
    ),
    (
        "best_epoch",
        lambda p: plots.training_curves_plot(HISTORY, p, best_epoch=99),
        ValueError,
        "best_epoch=99",
    ),
    ("images type", lambda p: plots.contact_sheet("x.png", ["x"], p), TypeError, "images must be a sequence"),
    ("image item", lambda p: plots.contact_sheet([np.zeros((4, 4))], ["x"], p), TypeError, r"images\[0\]"),
    ("caption item", lambda p: plots.contact_sheet(_images(1), [None], p), TypeError, r"captions\[0\]"),
    ("captions len", lambda p: plots.contact_sheet(_images(2), ["a"], p), ValueError, "captions has 1"),
    ("columns", lambda p: plots.contact_sheet(_images(1), ["a"], p, columns=0), ValueError, "columns"),
    ("thumb", lambda p: plots.contact_sheet(_images(1), ["a"], p, thumb=True), TypeError, "thumb"),
]


@pytest.mark.parametrize(
    ("call", "error", "match"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_inputs_raise_naming_the_argument(
    call: Callable[[Path], object], error: type[Exception], match: str, tmp_path: Path
) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(error, match=match):
        call(target)
    assert not os.listdir(tmp_path)  # nothing written, not even a temp file


def test_dvc_yaml_draws_the_curve_tables_columns() -> None:
    import yaml

    tables = {
        "roc.csv": plots.roc_table(Y, MARGIN),
        "pr.csv": plots.pr_table(Y, MARGIN),
        "reliability.csv": plots.reliability_table(Y, P_CAL),
    }
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate"]["do"]["plots"]
    props = {Path(k).name: v for entry in declared if isinstance(entry, dict) for k, v in entry.items()}
    assert set(props) == set(tables)
    for name, table in tables.items():
        assert {props[name]["x"], props[name]["y"]} <= set(table.columns), name
