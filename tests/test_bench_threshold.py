"""The threshold benchmarks run end to end on a few re-splits, and judge rules by the issue's verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def tried():
    sys.path.insert(0, str(BENCH))
    try:
        import threshold_rules_tried

        yield threshold_rules_tried
    finally:
        sys.path.remove(str(BENCH))


def test_verdict_needs_the_mean_of_both_baselines_and_a_better_tenth_percentile(tried) -> None:
    flat = np.full(10, 0.3)
    res = {
        "fixed 0.5": flat,
        "argmax": np.linspace(0.1, 0.5, 10),  # mean 0.3, 10th percentile 0.14
        "steady": np.full(10, 0.31),  # mean above both, 10th percentile above argmax's: passes
        "lower mean": np.full(10, 0.29),
        "same spread": np.linspace(0.11, 0.51, 10),  # mean 0.31, 10th percentile 0.15 > 0.14: passes
        "wide": np.linspace(0.0, 0.7, 10),  # mean 0.35, 10th percentile 0.063 < 0.14
    }
    assert tried.passes(res) == {
        "argmax": False,
        "steady": True,
        "lower mean": False,
        "same spread": True,
        "wide": False,
    }


def test_both_threshold_benchmarks_run(tried, capsys: pytest.CaptureFixture[str]) -> None:
    assert tried.main(["--splits", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("passes:") == 2 and "pools passed:" in out and "binormal" in out
    import threshold_policy

    assert threshold_policy.main(["--splits", "3"]) == 0
    assert "overall verdict:" in capsys.readouterr().out


def _write_pipeline_outputs(root: Path, variants: dict[str, float], n_images: int = 60) -> Path:
    """A finished pipeline's files that the threshold bench reads: splits.csv and each variant's
    val_select / val_calib logits (4 renders per image, margins leaning by ``variants[v]``) and its
    cross-fitted train margins (``n_images`` train images, 3 renders each)."""
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(2 * n_images) % 2)
    sha = [f"{i:064x}" for i in range(2 * n_images)]
    (root / "split").mkdir(parents=True)
    pd.DataFrame({"sha256": sha, "label": labels}).to_csv(root / "split" / "splits.csv", index=False)
    for variant, lean in variants.items():
        logits = root / "train" / variant / "logits"
        logits.mkdir(parents=True)
        for part, images, renders in (
            ("val_select", range(n_images // 2), 4),
            ("val_calib", range(n_images // 2, n_images), 4),
            ("train_crossfit", range(n_images, 2 * n_images), 3),
        ):
            rows = [
                (sha[i], labels[i] - 0.5 + lean + rng.normal(0, 1)) for i in images for _ in range(renders)
            ]
            pd.DataFrame(rows, columns=["sha256", "margin"]).to_csv(logits / f"{part}.csv", index=False)
    return root


def test_threshold_bench_judges_every_variant_a_pipeline_left(
    tried, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threshold_policy

    outputs = _write_pipeline_outputs(tmp_path / "outputs", {"adapted": 0.0, "base": 1.5})
    assert threshold_policy.pipeline_variants(outputs) == ["adapted", "base"]
    assert threshold_policy.main(["--outputs", str(outputs), "--splits", "3", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    for variant in ("adapted", "base"):
        assert f"(a) {outputs} {variant} (240 rows, 180 cross-fitted train rows" in out
    assert sum(line.startswith("verdict:") for line in out.splitlines()) == 3  # two variants + prior shift
    assert "of 3 pools pass)" in out
    assert threshold_policy.main(["--outputs", str(outputs), "--variant", "base", "--splits", "3"]) == 0
    out = capsys.readouterr().out
    assert "outputs base" in out and "outputs adapted" not in out and "of 2 pools pass)" in out


def test_threshold_bench_needs_cross_fitted_margins_beside_a_score_csv(
    tried, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--scores needs --crossfit (the default rule's data); each CSV must have margin and label."""
    import threshold_policy

    outputs = _write_pipeline_outputs(tmp_path / "outputs", {"base": 0.5})
    scores, crossfit = tmp_path / "scores.csv", tmp_path / "crossfit.csv"
    threshold_policy.pipeline_scores(outputs, "base").to_csv(scores, index=False)
    with pytest.raises(SystemExit):
        threshold_policy.main(["--scores", str(scores)])
    assert "--scores needs --crossfit CSV" in capsys.readouterr().err
    pd.DataFrame({"margin": [0.1], "score": [1]}).to_csv(crossfit, index=False)
    with pytest.raises(SystemExit):
        threshold_policy.main(["--scores", str(scores), "--crossfit", str(crossfit)])
    assert f"{crossfit} needs columns margin,label[,group]" in capsys.readouterr().err
    threshold_policy.pipeline_scores(outputs, "base", ("train_crossfit",)).to_csv(crossfit, index=False)
    args = ["--scores", str(scores), "--crossfit", str(crossfit), "--splits", "3", "--n-boot", "20"]
    assert threshold_policy.main(args) == 0
    assert "240 rows, 180 cross-fitted train rows" in capsys.readouterr().out


def test_threshold_bench_names_a_pipeline_without_logits(tried, tmp_path: Path) -> None:
    import threshold_policy

    (tmp_path / "train" / "base").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"train has no <variant>/logits/val_calib.csv"):
        threshold_policy.pipeline_variants(tmp_path)
