"""Several sources and the hard-negative loop through the stages, in-process on a small prepared project.

``data/main`` is a synthetic set, ``data/pool`` the negatives of another synthetic draw (a hard-negative
source of weight 2) and ``data/unl`` that draw's positives as an unlabeled source. Marked slow (the tiny
backbone; about a minute on 2 cores).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from helpers.project import SHRUNK_MODEL_STAGES, prepare_project, run, working_copy
from roadwork.data.images import sha256_file
from roadwork.data.synth import generate_dataset

pytestmark = pytest.mark.slow

SOURCES = [
    {"name": "main", "dir": "main"},
    {"name": "pool", "dir": "pool", "role": "hard_negative", "weight": 2.0},
    {"name": "unl", "dir": "unl", "role": "unlabeled"},
]


def make_sources(data: Path) -> None:
    generate_dataset(data / "main", n=70, seed=5, show_progress=False)
    draw = data.parent / "draw"
    generate_dataset(draw, n=60, seed=6, near_duplicate_fraction=0.0, show_progress=False)
    (draw / "no_roadwork").rename(data / "pool")
    (draw / "roadwork").rename(data / "unl")
    shutil.rmtree(draw)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_project(
        tmp_path_factory.mktemp("project"),
        n=0,
        seed=0,
        make_data=make_sources,
        updates={"data": {"sources": SOURCES}, **SHRUNK_MODEL_STAGES},
    )


@pytest.fixture()
def work(project: Path, tmp_path: Path) -> Iterator[Path]:
    with working_copy(project, tmp_path) as copy:
        yield copy


def metrics(stage: str) -> dict:
    """Every figure of ``stage``: report.json where the stage writes one (its metrics.json holds the
    headline only), else metrics.json."""
    report = Path(f"outputs/{stage}/report.json")
    return json.loads((report if report.is_file() else Path(f"outputs/{stage}/metrics.json")).read_text())


def test_sources_reach_the_split_stratified_and_unlabeled_images_never_do(work: Path) -> None:
    manifest = pd.read_csv("outputs/ingest/manifest.csv", dtype={"sha256": str})
    splits = pd.read_csv("outputs/split/splits.csv", dtype={"sha256": str})
    assert set(manifest["source"]) == set(splits["source"]) == {"main", "pool"}
    assert (manifest.loc[manifest["source"] == "pool", "label"] == 0).all()
    assert manifest["path"].str.startswith(("main/", "pool/")).all()
    unlabeled = {sha256_file(p) for p in Path("data/unl").rglob("*.jpg")}
    assert unlabeled and not unlabeled & set(manifest["sha256"]) and not unlabeled & set(splits["sha256"])
    assert (splits.groupby("source")["split"].nunique() == 4).all()  # every source in every split
    split = metrics("split")
    assert (
        sum(split[f"{s}_source_pool_n"] for s in ("train", "val_select", "val_calib", "val_test"))
        == (splits["source"] == "pool").sum()
    )
    assert metrics("ingest")["n_source_pool"] == (manifest["source"] == "pool").sum()


def test_hard_negative_loop_scores_train_negatives_only_and_evaluate_reports_by_source(work: Path) -> None:
    run("embed")
    run("train", "train.hard_negatives.rounds=1", "train.hard_negatives.folds=2")
    splits = pd.read_csv("outputs/split/splits.csv", dtype={"sha256": str})
    train_negatives = set(splits.loc[(splits["split"] == "train") & (splits["label"] == 0), "sha256"])
    held_out = set(splits.loc[splits["split"] != "train", "sha256"])
    report = pd.read_csv("outputs/train/base/logits/train_out_of_fold.csv", dtype={"sha256": str})
    assert set(report["sha256"]) == train_negatives and not set(report["sha256"]) & held_out
    assert list(report.columns) == ["sha256", "round", "fold", "oof_margin", "selected", "path"]
    selected = metrics("train/base")["hard_negatives_selected"]
    assert selected == report["selected"].sum() == math.ceil(0.1 * len(train_negatives))

    run("calibrate")
    run("evaluate")
    figures = metrics("evaluate/base")
    assert figures["source_pool_n"] == ((splits["split"] == "val_test") & (splits["source"] == "pool")).sum()
    assert 0 <= figures["source_pool_fpr"] <= 1 and "source_pool_fnr" not in figures
    assert -1 <= figures["source_main_validator_mcc"] <= 1
    slices = pd.read_csv("outputs/evaluate/base/slices.csv")
    assert set(slices.loc[slices["column"] == "source", "value"]) == {"main", "pool"}
    hard = pd.read_csv("outputs/evaluate/base/hard_negatives.csv")
    assert hard["note"].str.contains("never fed back into training").all()
