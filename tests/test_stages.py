"""The embed / train / calibrate / evaluate stages called in-process on a small prepared project.

A module fixture draws 90 synthetic images and runs ingest, dedupe and split once with the tiny backbone;
each test then runs the model stages with its own overrides and checks what the parameters change.
Marked slow (about a minute on 2 cores).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from sklearn.metrics import matthews_corrcoef

from helpers.project import SHRUNK_MODEL_STAGES, prepare_project, run, working_copy
from roadwork.cli import main as cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_project(
        tmp_path_factory.mktemp("project"),
        n=90,
        seed=5,
        updates=SHRUNK_MODEL_STAGES,
    )


@pytest.fixture()
def work(project: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the prepared project (the feature cache is shared to save recomputation)."""
    with working_copy(project, tmp_path) as copy:
        yield copy


def embedded(split: str) -> dict[str, np.ndarray]:
    return load_file(f"outputs/embed/base/features/{split}.safetensors")


def metrics(stage: str, name: str = "metrics.json") -> dict:
    return json.loads(Path(f"outputs/{stage}/base/{name}").read_text())


def test_views_copies_and_flip_shape_the_features(work: Path) -> None:
    run("embed")
    plain = embedded("train")
    index = pd.read_csv("outputs/embed/base/index.csv")
    n_train = int((index["split"] == "train").sum() / 2)
    assert plain["features"].shape[:2] == (2 * n_train, 1)
    assert "features_flip" not in embedded("val_select")

    run("embed", "embed.views=global+tiles", "embed.grid=2", "embed.train_copies=0", "embed.tta_flip=true")
    tiles = embedded("train")
    assert tiles["features"].shape[:2] == (n_train, 5)
    np.testing.assert_array_equal(tiles["features"][:, 0], plain["features"][:n_train, 0])
    flipped = embedded("val_select")
    assert flipped["features_flip"].shape == flipped["features"].shape
    assert not np.allclose(flipped["features_flip"], flipped["features"])

    run("embed", "embed.views=global+tiles", "embed.grid=2", "embed.tile_overlap=0.5", "embed.train_copies=0")
    assert not np.allclose(embedded("train")["features"][:, 1:], tiles["features"][:, 1:])


@pytest.mark.parametrize(
    "override",
    [
        "embed.seed=1",
        "embed.augment.color_jitter=0.3",
        "embed.augment.erase_p=1.0",
        "embed.augment.flip_p=1.0",
        "embed.augment.jpeg=false",
        "embed.augment.level_probs=[0,0,0,1]",
    ],
)
def test_augmentation_keys_change_the_augmented_copies_only(work: Path, override: str) -> None:
    run("embed")
    before = embedded("train")["features"]
    run("embed", override)
    after = embedded("train")["features"]
    half = len(before) // 2  # clean rows first, then the augmented copy
    np.testing.assert_array_equal(after[:half], before[:half])
    assert not np.allclose(after[half:], before[half:])


def test_batch_size_and_cache_dir_change_how_not_what(work: Path) -> None:
    run("embed")
    before = embedded("val_calib")["features"]
    run("embed", "embed.batch_size=5", "embed.cache_dir=elsewhere")
    assert any(Path("elsewhere").rglob("*.npy"))  # recomputed into the new folder
    np.testing.assert_allclose(embedded("val_calib")["features"], before, atol=1e-5)


def test_backbone_seed_changes_the_tiny_backbone(work: Path) -> None:
    run("embed")
    before = embedded("val_calib")["features"]
    run("embed", "backbone.seed=1")
    assert not np.allclose(embedded("val_calib")["features"], before)


def test_train_writes_logits_and_tta_averages_over_the_flip(work: Path) -> None:
    run("embed", "embed.tta_flip=true")
    run("train", "embed.tta_flip=true")
    with_tta = pd.read_csv("outputs/train/base/logits/val_calib.csv")
    run("embed")
    run("train")
    without = pd.read_csv("outputs/train/base/logits/val_calib.csv")
    assert list(without.columns) == ["sha256", "path", "render", "level", "margin"]
    # one row per validator render of each image: the clean one and one at each of L1-L3
    assert sorted(without["level"].unique()) == [0, 1, 2, 3]
    assert (without.groupby("sha256").size() == 4).all()
    assert not np.allclose(with_tta["margin"], without["margin"])
    m = metrics("train")
    assert m["val_select_mcc"] == pytest.approx(m["selection_metric"], abs=1e-9)
    assert Path("outputs/train/base/training_curves.png").stat().st_size > 1000


def test_calibrate_and_evaluate_follow_their_parameters(work: Path) -> None:
    run("embed")
    run("train")
    crossfit = pd.read_csv("outputs/train/base/logits/train_crossfit.csv")
    train_rows = pd.read_csv("outputs/embed/base/index.csv").query("split == 'train'")
    assert sorted(crossfit["sha256"]) == sorted(train_rows["sha256"])  # every train render, once
    assert set(crossfit["fold"]) == {0, 1} and (crossfit.groupby("sha256")["fold"].nunique() == 1).all()
    run("calibrate")
    policy = json.loads(Path("outputs/calibrate/base/policy.json").read_text())
    assert policy["calibrator"]["name"] == "temperature" and policy["conformal"] is not None
    assert policy["threshold_rule"] == "shrink" and policy["target_prior"] == 0.5
    assert metrics("calibrate", "report.json")["threshold_rows"] == len(crossfit)
    exact = ("calibrate.threshold_rule=argmax", "calibrate.target_prior=null")
    run("calibrate", *exact, "calibrate.threshold_data=val_calib")
    policy = json.loads(Path("outputs/calibrate/base/policy.json").read_text())
    sweep = pd.read_csv("outputs/calibrate/base/threshold_sweep.csv")
    assert policy["threshold"] in set(sweep["threshold"])  # the exact argmax is one of the sweep's cuts
    # by default the cut is chosen on the cross-fitted train margins: their best MCC (brute force)
    run("calibrate", *exact)
    decision_margin = json.loads(Path("outputs/calibrate/base/policy.json").read_text())["decision_margin"]
    labels = pd.read_csv("outputs/split/splits.csv").drop_duplicates("sha256").set_index("sha256")["label"]
    z, y = crossfit["margin"].to_numpy(), labels.loc[crossfit["sha256"]].to_numpy()
    best = max(matthews_corrcoef(y, z > cut) for cut in np.r_[z, -np.inf])
    assert matthews_corrcoef(y, z > decision_margin) == pytest.approx(best)
    run("calibrate", "calibrate.method=isotonic", "calibrate.conformal_alpha=null", "calibrate.max_fnr=0.2")
    policy = json.loads(Path("outputs/calibrate/base/policy.json").read_text())
    assert policy["calibrator"]["name"] == "isotonic" and policy["conformal"] is None
    assert policy["max_fnr"] == 0.2 and metrics("calibrate")["val_calib_fnr"] <= 0.2
    # infeasible guarantee: a clear error naming the minimum number of positives, exit code 2
    assert cli(["calibrate", "calibrate.guarantee_alpha=0.01", "calibrate.guarantee_delta=0.01"]) == 2

    run("evaluate")
    m = metrics("evaluate", "report.json")
    predictions = pd.read_csv("outputs/evaluate/base/predictions.csv")
    clean = predictions[predictions["level"] == 0]
    assert m["test_n"] == len(clean) and len(predictions) == 4 * len(clean)  # L0 + 1 render at L1-L3
    headline = metrics("evaluate")
    assert list(headline)[:4] == [
        "validator_mcc",
        "validator_accuracy",
        "predicted_positive_rate",
        "expected_reward",
    ]
    # DVC's metrics file: the headline of the report, which holds every figure
    assert 10 <= len(headline) <= 16 < len(m) and headline == {k: m[k] for k in headline}
    assert list(m)[: len(headline)] == list(headline)
    for name, x, y in (
        ("roc", "fpr", "tpr"),
        ("pr", "recall", "precision"),
        ("reliability", "mean_predicted", "observed_fraction"),
    ):
        curve = pd.read_csv(f"outputs/evaluate/base/plots/{name}.csv")  # the x and y dvc.yaml declares
        assert {x, y} <= set(curve.columns) and len(curve) and curve.notna().all().all()
    assert ((predictions["probability"] > 0.5) == (predictions["decision"] == 1)).all()
    slices = pd.read_csv("outputs/evaluate/base/slices.csv")
    assert {"time_of_day", "weather", "camera"} <= set(slices["column"])
    assert (slices.groupby("column")["n"].sum() == len(clean)).all()
    levels = pd.read_csv("outputs/evaluate/base/robustness.csv")
    assert list(levels["level"]) == [0, 1, 2, 3]
    errors = pd.read_csv("outputs/evaluate/base/errors.csv")
    assert len(errors) == int((clean["decision"] != clean["label"]).sum())
    run("evaluate", "evaluate.ci_level=0.5")
    narrow = metrics("evaluate", "report.json")
    assert narrow["test_mcc_high"] - narrow["test_mcc_low"] <= m["test_mcc_high"] - m["test_mcc_low"]


def test_finetune_mode_trains_its_own_backbone_that_evaluate_then_uses(work: Path) -> None:
    run("embed")
    run("train")
    head_only = pd.read_csv("outputs/train/base/logits/val_select.csv")
    assert json.loads(Path("outputs/train/base/model/backbone.json").read_text())["finetuned"] is False
    assert Path("outputs/train/base/logits/train_crossfit.csv").is_file()
    # finetuning has no cross-fitted margins: the threshold is chosen on val_calib, and the head's are gone
    val_calib = "calibrate.threshold_data=val_calib"
    assert cli(["train", "train.mode=finetune"]) == 2  # the config names calibrate.threshold_data
    run("train", "train.mode=finetune", "train.max_epochs=2", "train.finetune.lora_rank=2", val_calib)
    assert not Path("outputs/train/base/logits/train_crossfit.csv").exists()
    ref = json.loads(Path("outputs/train/base/model/backbone.json").read_text())
    assert ref["finetuned"] is True
    assert (Path("outputs/train/base/model/backbone") / "config.json").is_file()
    m = metrics("train")
    assert m["merge_max_abs_diff"] <= 1e-3 and m["trainable_parameters"] > 0
    tuned = pd.read_csv("outputs/train/base/logits/val_select.csv")
    assert not np.allclose(tuned["margin"], head_only["margin"])
    run("calibrate", val_calib)
    val_calib_rows = len(pd.read_csv("outputs/train/base/logits/val_calib.csv"))
    assert metrics("calibrate", "report.json")["threshold_rows"] == val_calib_rows
    run("evaluate")
    assert metrics("evaluate", "report.json")["test_n"] > 0
    # multi-view needs the feature cache: finetune refuses it with a message naming both keys
    assert cli(["train", "train.mode=finetune", "embed.views=global+tiles"]) == 2


def test_precision_compile_and_device_keys(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run("embed")
    before = embedded("val_calib")["features"]
    plain_key = json.loads(Path("outputs/embed/base/backbone.json").read_text())["cache_key"]

    run("embed", "embed.precision=bf16")
    meta = json.loads(Path("outputs/embed/base/backbone.json").read_text())
    assert meta["precision"] == "bf16" and meta["cache_key"] != plain_key  # own cache entries
    half = embedded("val_calib")["features"]
    assert not np.array_equal(half, before)
    np.testing.assert_allclose(half, before, atol=0.1 * float(np.abs(before).max()))

    run("embed", "embed.compile=true", "embed.cache_dir=compiled")
    assert any(Path("compiled").rglob("*.npy"))
    np.testing.assert_allclose(embedded("val_calib")["features"], before, atol=1e-4)

    import torch

    if not torch.cuda.is_available():
        assert cli(["embed", "embed.device=gpu"]) == 2
        assert "embed.device is 'gpu' but no CUDA device" in capsys.readouterr().err
