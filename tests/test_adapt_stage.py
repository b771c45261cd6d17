"""The adapt stage on a small prepared project: what it reads, what it writes, the adapted variant after it.

A module fixture draws 60 synthetic images and runs ingest, dedupe and split once with the tiny backbone;
each test works in a private copy. Marked slow (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.project import run
from roadwork.cli import main as cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def test_adapt_trains_on_train_images_only_and_feeds_the_adapted_variant(
    adapt_work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roadwork.adapt import explora

    seen: list[Path] = []
    real = explora.adapt_backbone

    def spy(backbone, images, cfg, **kwargs):
        seen.extend(Path(p) for p in images)
        return real(backbone, images, cfg, **kwargs)

    monkeypatch.setattr(explora, "adapt_backbone", spy)
    run("adapt")
    splits = pd.read_csv("outputs/split/splits.csv")
    train = splits[splits["split"] == "train"]
    assert sorted(seen) == sorted(Path("outputs/ingest") / p for p in train["working_path"])

    metrics = json.loads(Path("outputs/adapt/metrics.json").read_text())
    assert metrics["train_images"] == len(train) and metrics["unlabeled_images"] == 0
    assert metrics["steps"] == 3 and metrics["merge_max_abs_diff"] <= 1e-4
    assert 0 < metrics["trainable_pct"] < 100
    history = pd.read_csv("outputs/adapt/history.csv")
    assert history["step"].tolist() == [1, 2, 3]
    assert metrics["ssl_loss_start"] == pytest.approx(history["loss"].iloc[0])
    assert metrics["ssl_loss_end"] == pytest.approx(history["loss"].iloc[-1])
    assert Path("outputs/adapt/ssl_curves.png").stat().st_size > 1000

    for stage in ("embed", "train"):
        run(stage, "--variant", "adapted")
    record = json.loads(Path("outputs/adapt/adapt.json").read_text())
    embedded = json.loads(Path("outputs/embed/adapted/backbone.json").read_text())
    assert embedded["fingerprint"] == record["backbone_fingerprint"] != record["base_backbone"]["fingerprint"]
    trained = json.loads(Path("outputs/train/adapted/model/backbone.json").read_text())
    assert trained["fingerprint"] == record["backbone_fingerprint"]
    assert -1 <= json.loads(Path("outputs/train/adapted/metrics.json").read_text())["val_select_mcc"] <= 1

    # the optional supervised follow-up: LoRA + head on top of the adapted backbone
    finetune = ("train.mode=finetune", "train.max_epochs=2", "calibrate.threshold_data=val_calib")
    run("train", "--variant", "adapted", *finetune)
    finetuned = json.loads(Path("outputs/train/adapted/model/backbone.json").read_text())
    assert finetuned["finetuned"] and finetuned["fingerprint"] != record["backbone_fingerprint"]
    meta = json.loads(Path("outputs/train/adapted/model/finetune.json").read_text())
    assert meta["base_backbone"]["fingerprint"] == record["backbone_fingerprint"]


def test_unlabeled_pool_is_used_and_validation_copies_are_excluded(adapt_work: Path) -> None:
    pool = adapt_work / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray((rng.random((80, 96, 3)) * 255).astype(np.uint8)).save(pool / f"new{k}.png")
    splits = pd.read_csv("outputs/split/splits.csv")
    held_out = splits[splits["split"] == "val_test"]["path"].iloc[0]
    shutil.copy(adapt_work / "data" / held_out, pool / "copy_of_a_test_image.jpg")
    (pool / "notes.txt").write_text("not an image")
    (pool / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    (pool / "link.png").symlink_to(pool / "new0.png")

    run("adapt", f"adapt.unlabeled_dir={pool}")
    table = pd.read_csv("outputs/adapt/unlabeled.csv", keep_default_na=False).set_index("path")
    assert len(table) == 6  # every file found has a row
    used = {Path(p).name for p in table.index[table["used"]]}
    assert used == {"new0.png", "new1.png"}
    reasons = {Path(p).name: r for p, r in table["reason"].items()}
    assert "outside the train split" in reasons["copy_of_a_test_image.jpg"]
    assert "not an image extension" in reasons["notes.txt"]
    assert reasons["broken.jpg"].split(":")[0] in ("not_an_image", "truncated", "decode_error")
    assert "symlink" in reasons["link.png"]
    metrics = json.loads(Path("outputs/adapt/metrics.json").read_text())
    assert metrics["unlabeled_images"] == 2 and metrics["unlabeled_excluded"] == 4


def test_missing_unlabeled_dir_is_a_clear_error(adapt_work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["adapt", "adapt.unlabeled_dir=no/such/folder"]) == 2
    err = capsys.readouterr().err
    assert "adapt.unlabeled_dir" in err and "no/such/folder" in err
    assert not Path("outputs/adapt/backbone").exists()
