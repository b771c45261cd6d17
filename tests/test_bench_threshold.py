"""The threshold benchmarks run end to end on a few re-splits, and judge rules by the issue's verdict."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
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
