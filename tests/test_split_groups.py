"""Groups the user knows (split.group_by, split.time_window_s) joined with dedupe's groups, and the
fraction tolerance that names a group too large to place."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from roadwork.config import load_config
from roadwork.data.dedupe import connected_groups
from roadwork.data.groups import (
    UserGrouping,
    parse_timestamps,
    split_groups,
    time_window_edges,
)
from roadwork.data.split import SPLITS, group_stratified_split
from roadwork.stages.split import check_group_sizes

REPO = Path(__file__).resolve().parents[1]
FRACTIONS = {"train": 0.6, "val_select": 0.15, "val_calib": 0.15, "val_test": 0.1}


def frames(seed: int, drive_sizes: list[int], bridges: int = 4) -> pd.DataFrame:
    """Rows of drives (``d0``, ``d1``, ...) with labels drawn per row, dedupe groups of one row each except
    ``bridges`` planted pairs that may bridge two drives, and a few rows with no drive."""
    rng = np.random.default_rng(seed)
    drive = np.repeat([f"d{k}" for k in range(len(drive_sizes))], drive_sizes).astype(object)
    n = len(drive)
    drive[rng.choice(n, 5, replace=False)] = ""
    group = np.arange(n)
    pairs = rng.choice(n, (bridges, 2), replace=False)
    group[pairs[:, 1]] = group[pairs[:, 0]]  # near-duplicates in two different drives
    return pd.DataFrame(
        {
            "path": [f"roadwork/{i:04d}.jpg" for i in range(n)],
            "label": (rng.random(n) < 0.6).astype(int),
            "group": group,
            "drive": drive,
        }
    )


def oracle_components(n: int, linked: list[tuple[int, int]]) -> np.ndarray:
    """Component label (smallest member) of each item, by a plain union-find over ``linked``."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a, b in linked:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    return np.array([root(i) for i in range(n)])


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings put the same items together."""
    return bool((pd.factorize(a)[0] == pd.factorize(b)[0]).all())


def test_a_drive_column_keeps_every_drive_and_every_dedupe_group_in_one_split() -> None:
    frame = frames(0, list(np.random.default_rng(1).integers(3, 25, 60)))
    grouping = UserGrouping(group_by=("drive",))
    frame["group"] = split_groups(frame, grouping)
    frame["split"] = group_stratified_split(frame["label"], frame["group"], FRACTIONS, seed=0)
    named = frame[frame["drive"] != ""]
    assert (named.groupby("drive")["split"].nunique() == 1).all()
    original = frames(0, list(np.random.default_rng(1).integers(3, 25, 60)))["group"]
    assert (frame.groupby(original.to_numpy())["split"].nunique() == 1).all()
    # without the drive column, the same frames cross splits: the test can fail
    plain = frames(0, list(np.random.default_rng(1).integers(3, 25, 60)))
    plain["split"] = group_stratified_split(plain["label"], plain["group"], FRACTIONS, seed=0)
    assert (plain[plain["drive"] != ""].groupby("drive")["split"].nunique() > 1).any()


def test_joined_groups_match_a_brute_force_union_and_keep_dedupe_ids() -> None:
    frame = frames(2, [4, 7, 1, 9, 3])
    linked = [
        (i, j)
        for i in range(len(frame))
        for j in range(i + 1, len(frame))
        if frame["group"][i] == frame["group"][j]
        or (frame["drive"][i] != "" and frame["drive"][i] == frame["drive"][j])
    ]
    joined = split_groups(frame, UserGrouping(group_by=("drive",)))
    assert same_partition(joined, oracle_components(len(frame), linked))
    # ids are dedupe's: the smallest dedupe id of each joined group; with no user columns, unchanged
    assert set(joined) <= set(frame["group"])
    assert (split_groups(frame, UserGrouping()) == frame["group"].to_numpy()).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_time_window_joins_exactly_the_frames_a_brute_force_oracle_joins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, window = 300, 4.0
    drive = rng.choice(["a", "b", "c", ""], n, p=[0.4, 0.3, 0.25, 0.05])
    seconds = np.round(rng.uniform(0, 400, n), 1)
    seconds[rng.choice(n, 6, replace=False)] = np.nan
    edges = time_window_edges(pd.Series(drive), seconds, window)
    linked = [
        (i, j)
        for i in range(n)
        for j in range(i + 1, n)
        if drive[i] != "" and drive[i] == drive[j] and abs(seconds[i] - seconds[j]) < window
    ]
    assert same_partition(connected_groups(n, edges), oracle_components(n, linked))
    # the window is strict: frames exactly one window apart stay apart
    assert len(time_window_edges(pd.Series(["a", "a"]), np.array([0.0, window]), window)) == 0


def test_time_window_splits_a_drive_at_its_gaps_unless_group_by_names_the_drive() -> None:
    times = ["2024-05-01T12:00:00Z", "2024-05-01T12:00:02Z", "2024-05-01T12:00:04Z", "2024-05-01T13:00:00Z"]
    frame = pd.DataFrame(
        {
            "path": [f"p{i}" for i in range(6)],
            "group": range(6),
            "drive": ["d1"] * 4 + ["d2", "d2"],
            "timestamp": [*times, "2024-05-01T12:00:01Z", ""],
        }
    )
    by_time = split_groups(frame, UserGrouping(time_window_s=3.0, drive_column="drive"))
    assert by_time.tolist() == [0, 0, 0, 3, 4, 5]  # the hour-later frame and the timeless frame stay apart
    both = split_groups(frame, UserGrouping(group_by=("drive",), time_window_s=3.0, drive_column="drive"))
    assert both.tolist() == [0, 0, 0, 0, 4, 4]


def test_timestamps_are_seconds_or_iso_and_anything_else_is_named() -> None:
    assert parse_timestamps(["1.5", "", "3"], ["a", "b", "c"], "ts")[[0, 2]].tolist() == [1.5, 3.0]
    iso = parse_timestamps(["1970-01-01T00:00:10Z", "1970-01-01 00:00:12"], ["a", "b"], "ts")
    assert iso.tolist() == [10.0, 12.0]
    with pytest.raises(ValueError, match=r"column 'ts': value 'noon' \(path 'b'\)"):
        parse_timestamps(["1970-01-01T00:00:10Z", "noon"], ["a", "b"], "ts")
    with pytest.raises(ValueError, match=r"'1700000000'.*throughout the column"):
        parse_timestamps(["2024-05-01T12:00:00Z", "1700000000"], ["a", "b"], "ts")


def test_a_drive_too_large_to_place_fails_naming_column_value_and_size() -> None:
    frame = frames(3, [10] * 30 + [700], bridges=0)
    frame.loc[frame["drive"] == "d30", "drive"] = "night-drive-7"
    grouping = UserGrouping(group_by=("drive",))
    frame["group"] = split_groups(frame, grouping)
    frame["split"] = group_stratified_split(frame["label"], frame["group"], FRACTIONS, seed=0)
    with pytest.raises(ValueError) as caught:
        check_group_sizes(frame, FRACTIONS, 0.05, grouping)
    size = int((frame["drive"] == "night-drive-7").sum())
    assert f"drive='night-drive-7': {size} of {len(frame)} images" in str(caught.value)
    assert "'train'" in str(caught.value) and "split.group_tolerance = 0.05" in str(caught.value)
    check_group_sizes(frame, FRACTIONS, 0.2, grouping)  # within a looser tolerance


def test_a_dedupe_group_too_large_only_warns_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    """Without group_by or a time window the split behaves as before the tolerance existed: it goes on."""
    frame = frames(3, [10] * 30 + [700], bridges=0)
    frame["group"] = np.where(frame["drive"] == "d30", -1, frame["group"])  # one huge dedupe group
    frame["split"] = group_stratified_split(frame["label"], frame["group"], FRACTIONS, seed=0)
    check_group_sizes(frame, FRACTIONS, 0.05, UserGrouping())
    warning = capsys.readouterr().err
    assert (
        warning.startswith("split: warning: whole groups miss the fractions") and "dedupe group -1" in warning
    )
    check_group_sizes(frame, FRACTIONS, 0.2, UserGrouping())
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------------- the stage


@pytest.fixture()
def split_project(tmp_path: Path) -> Iterator[Path]:
    """A folder with params.yaml and the two files the split stage reads (no images needed)."""
    frame = frames(4, list(np.random.default_rng(5).integers(4, 20, 50)))
    groups = frame.assign(
        sha256=[f"{i:064x}" for i in range(len(frame))],
        keep=True,
        drop_reason="",
        phash="0" * 16,
        working_path="images/x.jpg",
        source="imagefolder",
    )
    (tmp_path / "outputs/dedupe").mkdir(parents=True)
    (tmp_path / "outputs/ingest").mkdir(parents=True)
    groups.to_csv(tmp_path / "outputs/dedupe/groups.csv", index=False)
    (tmp_path / "outputs/ingest/known_duplicates.csv").write_text("path_a,path_b\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


@pytest.mark.slow  # ~10 s: the stage's MLflow run
def test_split_stage_keeps_drives_whole_and_reports_group_and_fractions(split_project: Path) -> None:
    from roadwork.stages import split

    split.main(load_config("params.yaml", ["split.group_by=[drive]"]), ("split.group_by=[drive]",))
    splits = pd.read_csv("outputs/split/splits.csv", keep_default_na=False)
    assert (splits[splits["drive"] != ""].groupby("drive")["split"].nunique() == 1).all()
    metrics = json.loads(Path("outputs/split/metrics.json").read_text())
    sizes = splits["group"].value_counts()
    assert metrics["largest_group"] == sizes.max()
    assert metrics["n_groups"] == len(sizes) < metrics["n_dedupe_groups"]
    for name in SPLITS:
        assert metrics[f"{name}_fraction"] == pytest.approx((splits["split"] == name).mean())
        assert abs(metrics[f"{name}_fraction"] - FRACTIONS[name]) <= 0.05
    assert metrics["n_empty_drive"] == 5


def test_split_stage_names_a_missing_group_by_column_and_the_file(split_project: Path) -> None:
    from roadwork.stages import split

    with pytest.raises(ValueError, match=r"groups\.csv has no column 'sequence'.*data/metadata\.csv"):
        split.main(load_config("params.yaml", ["split.group_by=[drive,sequence]"]))


def test_split_keys_are_checked_when_params_load() -> None:
    from roadwork.config import ConfigError

    params = REPO / "params.yaml"
    assert load_config(params).split.group_by == []  # today's behaviour: dedupe's groups only
    with pytest.raises(ConfigError, match=r"needs 'split\.drive_column'"):
        load_config(params, ["split.time_window_s=5"])
    with pytest.raises(ConfigError, match=r"'split\.group_by' is \['drive', 'drive'\]"):
        load_config(params, ["split.group_by=[drive,drive]"])
    with pytest.raises(ConfigError, match=r"'split\.group_tolerance' is 0"):
        load_config(params, ["split.group_tolerance=0"])
