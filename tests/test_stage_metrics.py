"""What `dvc metrics show` and `dvc exp show` compare: a stage's metrics.json holds its headline figures only,
its report.json (a DVC output) every figure, and the keys other stages read from a metrics.json stay there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from roadwork.stages import bundle, calibrate, evaluate, ingest
from roadwork.stages.common import write_metrics

REPO = Path(__file__).resolve().parents[1]
SPLIT_STAGES = {"ingest": ingest, "calibrate": calibrate, "evaluate": evaluate}


def test_metrics_json_is_the_headline_and_report_json_everything(tmp_path: Path) -> None:
    figures = {"b": 2.0, "a": 1.0, "z": 3.0, "c": 0.5}
    assert write_metrics(tmp_path, figures, ("z", "not_computed", "a")) == {"z": 3.0, "a": 1.0}
    shown = json.loads((tmp_path / "metrics.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(shown) == ["z", "a"] and shown == {"z": 3.0, "a": 1.0}
    assert list(report) == ["z", "a", "b", "c"] and report == figures


@pytest.mark.parametrize("stage", sorted(SPLIT_STAGES))
def test_headline_is_short_and_report_is_a_declared_output(stage: str) -> None:
    headline = SPLIT_STAGES[stage].HEADLINE
    assert len(headline) <= 16 and len(set(headline)) == len(headline)
    definition = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    outs = definition.get("do", definition)["outs"]
    assert any(str(out).startswith(f"outputs/{stage}/") and str(out).endswith("/report.json") for out in outs)


def test_what_other_stages_read_from_a_metrics_json_is_headline() -> None:
    # bundle chooses the variant and fills the model card from calibrate's metrics.json
    read = {bundle.SELECTION_METRIC, bundle.POSITIVE_RATE, "val_calib_mcc", "ece_after"}
    assert read <= set(calibrate.HEADLINE)
    # promote's score is evaluate's expected_reward; the headline columns users compare
    assert {"expected_reward", "validator_mcc", "lift_over_probe", "test_mcc"} <= set(evaluate.HEADLINE)
    assert {"n_inputs", "n_kept", "n_quarantined"} <= set(ingest.HEADLINE)


def test_submission_readme_takes_evaluate_intervals_from_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roadwork.stages.submission import evaluation_metrics

    monkeypatch.chdir(tmp_path)
    folder = Path("outputs/evaluate/base")
    folder.mkdir(parents=True)
    figures = {"validator_mcc": 0.4, "validator_mcc_low": 0.3, "validator_mcc_high": 0.5, "test_n": 9.0}
    figures |= {"expected_reward": 0.2, "expected_reward_low": 0.1, "expected_reward_high": 0.3}
    figures |= {"lift_over_probe": 0.1}
    write_metrics(folder, figures, evaluate.HEADLINE)
    assert "expected_reward_low" not in json.loads((folder / "metrics.json").read_text())
    shown = evaluation_metrics("base")
    assert shown["val_test_expected_reward_low"] == 0.1 and shown["val_test_expected_reward_high"] == 0.3
    assert shown["val_test_validator_mcc_low"] == 0.3 and shown["val_test_lift_over_probe"] == 0.1
    assert "val_test_test_n" not in shown


def test_bundle_ships_the_best_variant_inside_the_positive_rate_band_else_the_nearest() -> None:
    def candidate(mcc: float, rate: float | None) -> dict[str, float]:
        figures = {"val_calib_mcc": mcc, bundle.SELECTION_METRIC: mcc}
        return figures if rate is None else {**figures, bundle.POSITIVE_RATE: rate}

    band = (0.35, 0.65)
    both_inside = {"base": candidate(0.30, 0.40), "adapted": candidate(0.32, 0.60)}
    assert bundle.choose_variant(both_inside, band) == "adapted"
    one_outside = {"base": candidate(0.35, 0.30), "adapted": candidate(0.25, 0.50)}
    assert bundle.choose_variant(one_outside, band) == "adapted"
    assert bundle.choose_variant(one_outside) == "base"  # no band: the MCC alone
    both_outside = {"base": candidate(0.40, 0.20), "adapted": candidate(0.20, 0.70)}
    assert bundle.choose_variant(both_outside, band) == "adapted"  # 0.05 outside beats 0.15
    tie = {"base": candidate(0.30, 0.50), "adapted": candidate(0.30, 0.50)}
    assert bundle.choose_variant(tie, band) == "base"
    no_level_renders = {"base": candidate(0.30, None), "adapted": candidate(0.31, 0.90)}
    assert bundle.choose_variant(no_level_renders, band) == "base"  # no rate: nothing to hold against it
    assert [bundle.outside_band(r, band) for r in (0.35, 0.5, 0.3, 0.7, None)] == pytest.approx(
        [0.0, 0.0, 0.05, 0.05, 0.0]
    )
