"""Several data sources: ingest keeps each image's source, hard-negative sources hold negatives only, the
split stratifies by source, and training draws rows in proportion to their source weights."""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from roadwork.config import ConfigError, load_config
from roadwork.data.ingest import ingest
from roadwork.data.sources import Source, check_sources, source_weights
from roadwork.data.split import group_stratified_split
from roadwork.stages.adapt import unlabeled_folders
from roadwork.stages.ingest import ingested_sources

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.6, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture()
def two_sources(tmp_path: Path) -> Path:
    """data/main (class folders + metadata.csv), data/pools/orange (hard negatives: a flat folder and a
    no_roadwork/ folder), data/unl (unlabeled) and a stray folder data/old that no source names."""
    data = tmp_path / "data"
    _write(data / "main/roadwork/a.jpg", _jpeg(1))
    _write(data / "main/no_roadwork/b.jpg", _jpeg(2))
    (data / "main/metadata.csv").write_text("path,weather\nroadwork/a.jpg,rain\n")
    _write(data / "pools/orange/car.jpg", _jpeg(3))
    _write(data / "pools/orange/no_roadwork/sign.jpg", _jpeg(4))
    _write(data / "pools/orange/odd.txt", b"not an image")
    _write(data / "unl/u.jpg", _jpeg(5))
    _write(data / "old/roadwork/c.jpg", _jpeg(6))
    return data


SOURCES = (Source("main", "main"), Source("orange", "pools/orange", "hard_negative", 2.0))


def test_manifest_keeps_each_images_source_and_hard_negatives_are_label_0(two_sources: Path) -> None:
    out = two_sources.parent / "out"
    result = ingest(two_sources, out, show_progress=False, sources=SOURCES)
    manifest = _read(out / "manifest.csv").set_index("path")
    assert manifest[["label", "source"]].to_dict("index") == {
        "main/no_roadwork/b.jpg": {"label": "0", "source": "main"},
        "main/roadwork/a.jpg": {"label": "1", "source": "main"},
        "orange/car.jpg": {"label": "0", "source": "orange"},
        "orange/no_roadwork/sign.jpg": {"label": "0", "source": "orange"},
    }
    assert manifest.loc["main/roadwork/a.jpg", "weather"] == "rain"
    assert manifest.loc["main/roadwork/a.jpg", "sha256"] == hashlib.sha256(_jpeg(1)).hexdigest()
    assert dict(_read(out / "quarantine.csv")[["path", "reason"]].values) == {
        "orange/odd.txt": "unsupported_extension"
    }
    assert result.n_inputs == result.n_kept + result.n_quarantined == 5
    assert result.source_counts == {"main": 2, "orange": 2}
    # neither the unlabeled folder (not passed to ingest) nor the stray folder is read, and both are named
    assert result.unread == ("old", "unl")


def test_without_sources_the_source_column_holds_the_layout(two_sources: Path) -> None:
    out = two_sources.parent / "out"
    result = ingest(two_sources / "main", out, show_progress=False)
    assert set(_read(out / "manifest.csv")["source"]) == {"imagefolder"}
    assert result.source_counts == {} and result.unread == ()


def test_a_positive_in_a_hard_negative_source_is_refused(two_sources: Path) -> None:
    out = two_sources.parent / "out"
    _write(two_sources / "pools/orange/roadwork/cone.jpg", _jpeg(7))
    with pytest.raises(ValueError, match=r"source 'orange'.*roadwork/cone.jpg.*positive class folder"):
        ingest(two_sources, out, show_progress=False, sources=SOURCES)
    assert not (out / "manifest.csv").exists()

    (two_sources / "pools/orange/roadwork/cone.jpg").unlink()
    table = pa.table(
        {
            "image": pa.array([_jpeg(8), _jpeg(9)], type=pa.binary()),
            "label": pa.array([0, 1], type=pa.int64()),
            "scene_description": pa.array([None, "cones"], type=pa.string()),
        }
    )
    pq.write_table(table, two_sources / "pools/orange/rows.parquet")
    with pytest.raises(ValueError, match=r"rows.parquet row 1 is labelled 1"):
        ingest(two_sources, out, show_progress=False, sources=SOURCES)


def test_sources_are_checked(tmp_path: Path) -> None:
    bad = {
        "overlap": [Source("a", "x"), Source("b", "x/y")],
        "repeat": [Source("a", "x"), Source("a", "y")],
        "inside data.dir": [Source("a", "../x")],
        "no 'labelled'": [Source("a", "x", "hard_negative")],
        "positive number": [Source("a", "x", weight=0.0)],
        "one of": [Source("a", "x", "negative")],
        "starts with a letter": [Source("1st", "x")],
        "not NA": [Source("None", "x")],
    }
    for message, sources in bad.items():
        with pytest.raises(ValueError, match=message):
            check_sources(sources)
    check_sources([Source("a", "x"), Source("b", "y/z", "unlabeled")])
    (tmp_path / "data").mkdir()
    sources = [Source("u", "u", "unlabeled"), Source("a", "a")]
    with pytest.raises(ValueError, match="unlabeled sources feed adapt only"):
        ingest(tmp_path / "data", tmp_path / "out", show_progress=False, sources=sources)


def test_config_sources_and_hard_negative_keys() -> None:
    params = REPO / "params.yaml"
    cfg = load_config(params)
    assert cfg.data.sources == [] and cfg.train.hard_negatives.rounds == 0
    override = (
        "data.sources=[{name: main, dir: main}, {name: orange, dir: pool, role: hard_negative, weight: 2}]"
    )
    cfg = load_config(params, [override])
    assert [(s.name, s.dir, s.role, s.weight) for s in cfg.data.sources] == [
        ("main", "main", "labelled", 1.0),
        ("orange", "pool", "hard_negative", 2.0),
    ]
    # unlabeled sources are adapt's: ingest never reads them, adapt's pool does
    cfg = load_config(params, [override.replace("]", ", {name: frames, dir: frames, role: unlabeled}]")])
    assert [s.name for s in ingested_sources(cfg)] == ["main", "orange"]
    assert unlabeled_folders(cfg) == [Path("data/frames")]
    with pytest.raises(ConfigError, match=r"unknown key 'data.sources\[0\].wieght'"):
        load_config(params, ["data.sources=[{name: a, dir: a, wieght: 2}]"])
    with pytest.raises(ConfigError, match=r"'data.sources\[0\].weight'.*expected a number"):
        load_config(params, ["data.sources=[{name: a, dir: a, weight: heavy}]"])
    with pytest.raises(ConfigError, match=r"train.mode=finetune draws every train image alike"):
        finetune = ["train.mode=finetune", "calibrate.threshold_data=val_calib"]
        load_config(params, [*finetune, "train.hard_negatives.rounds=1"])
    with pytest.raises(ConfigError, match=r"train\.hard_negatives\.top_fraction"):
        load_config(params, ["train.hard_negatives.top_fraction=0"])


# -------------------------------------------------------------------------------------------------- split


def test_split_stratifies_each_source_and_one_stratum_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    n_groups = 900
    sizes = rng.choice([1, 1, 2, 3], size=n_groups)
    groups = np.repeat(np.arange(n_groups), sizes)
    group_source = rng.choice(["main", "orange", "extra"], p=[0.6, 0.25, 0.15], size=n_groups)
    group_label = np.where(group_source == "orange", 0, (rng.random(n_groups) < 0.7).astype(int))
    labels, source = group_label[groups], group_source[groups]

    split = group_stratified_split(labels, groups, FRACTIONS, seed=3, strata=source)
    largest = sizes.max()
    for name in ("main", "orange", "extra"):
        for label in (0, 1):
            members = (source == name) & (labels == label)
            for part, share in FRACTIONS.items():
                got = (members & (split == part)).sum()
                assert abs(got - share * members.sum()) <= largest, (name, label, part)
    assert ((source == "orange") & (split == "val_test")).any()
    # one stratum is the plain label stratification, assignment for assignment
    plain = group_stratified_split(labels, groups, FRACTIONS, seed=3)
    assert (
        group_stratified_split(labels, groups, FRACTIONS, seed=3, strata=np.full(labels.size, "x")) == plain
    ).all()
    with pytest.raises(ValueError, match="strata must match"):
        group_stratified_split(labels, groups, FRACTIONS, seed=3, strata=source[:-1])


# ----------------------------------------------------------------------------------------------- sampling


def test_source_weights_change_the_sampling_frequency_as_stated() -> None:
    """An epoch of the head's DataLoader draws source s with probability w_s n_s / sum_t w_t n_t: counted
    over one epoch against that frequency, within a binomial tolerance of 4.5 standard deviations."""
    from roadwork.train.head_data import FeatureDataModule, FeatureSet

    n_by_source = {"main": 6000, "orange": 2000, "extra": 1000}
    weights = {"main": 1.0, "orange": 3.0, "extra": 0.5}
    names = np.repeat(list(n_by_source), list(n_by_source.values()))
    n = names.size
    rows = FeatureSet(np.zeros((n, 1, 2), np.float32), np.arange(n) % 2, np.array([f"{i}" for i in range(n)]))
    data = FeatureDataModule(rows, rows, batch_size=64, seed=0, sample_weights=source_weights(names, weights))
    order = list(data.train_dataloader().sampler)
    assert len(order) == n  # an epoch holds as many draws as rows
    counts = pd.Series(names[order]).value_counts()
    total = sum(weights[s] * n_by_source[s] for s in n_by_source)
    for name, size in n_by_source.items():
        p = weights[name] * size / total
        assert abs(counts[name] - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), (name, counts[name], n * p)
    # orange (weight 3) is drawn about 6x as often per image as extra (weight 0.5)
    per_image = counts / pd.Series(n_by_source)
    assert 5 < per_image["orange"] / per_image["extra"] < 7


def test_weighted_epochs_shard_like_the_shuffle_and_equal_weights_keep_it() -> None:
    from roadwork.train.sampling import WeightedShardSampler, check_sample_weights, sampler_weights

    weights = np.linspace(0.1, 2.0, 101)
    single = WeightedShardSampler(weights, generator=torch.Generator().manual_seed(4))
    shards = [
        list(WeightedShardSampler(weights, rank=r, world_size=2, generator=torch.Generator().manual_seed(4)))
        for r in (0, 1)
    ]
    whole = list(single)
    padded = whole + whole[:1]  # 101 rows padded to 102 for two processes
    assert [row for pair in zip(*shards, strict=True) for row in pair] == padded
    assert sampler_weights(np.ones(5)) is None and sampler_weights(None) is None
    assert sampler_weights(np.array([1.0, 2.0])) is not None
    for bad in (np.ones(4), np.array([1.0, -1, 1, 1, 1]), np.zeros(5), np.array([1, np.nan, 1, 1, 1])):
        with pytest.raises(ValueError, match="sample_weights"):
            check_sample_weights(bad, 5)
    with pytest.raises(ValueError, match=r"data\.sources does not name"):
        source_weights(["main", "gone"], {"main": 1.0})
