"""NATIX's scene_description becomes keyword slices in evaluate, not one slice per distinct text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from roadwork.config import ConfigError, load_config
from roadwork.stages.evaluate import NO_DESCRIPTION, NO_KEYWORD, keyword_slices, slice_table

REPO = Path(__file__).resolve().parents[1]
TEXTS = pd.Series(
    [
        "Night scene with RAIN and traffic cones",
        "rainy terrain at night-time",
        "",
        None,
        "Construction\n  Workers on the highway",
        "A yield sign, nothing else",
        "a construction site worker",
    ]
)


def test_keywords_match_whole_words_in_any_case_and_an_image_may_be_in_several() -> None:
    found = keyword_slices(TEXTS, ["night", "rain", "cone", "construction worker", "highway", "fog"])
    expected = {
        "night": [0, 1],  # "night-time": the hyphen is a word boundary
        "rain": [0],  # not "rainy", not "terrain"
        "cone": [0],  # plural
        "construction worker": [4],  # any white space between, plural; not "construction site worker"
        "highway": [4],
        NO_DESCRIPTION: [2, 3],
        NO_KEYWORD: [5, 6],
    }
    assert {name: index.tolist() for name, index in found.items()} == expected  # "fog" matched nothing


def test_slice_table_slices_descriptions_by_keyword_and_other_columns_by_value() -> None:
    frame = pd.DataFrame(
        {
            "path": [f"{i}.jpg" for i in range(len(TEXTS))],
            "label": [1, 1, 0, 0, 1, 1, 1],
            "scene_description": TEXTS,
            "weather": ["rain", "rain", "clear", "clear", "clear", "fog", "fog"],
        }
    )
    decision = np.array([1, 0, 0, 1, 1, 1, 0])
    table = slice_table(frame, decision, 0.95, ["night", "rain", "highway"])
    assert set(table["column"]) == {"scene_keyword", "weather"}  # no slice per distinct text
    night = table[(table["column"] == "scene_keyword") & (table["value"] == "night")].iloc[0]
    assert (night["n"], night["n_positive"], night["accuracy"]) == (2, 2, 0.5)
    keyword_rows = table[table["column"] == "scene_keyword"].set_index("value")["n"].to_dict()
    assert keyword_rows == {"night": 2, "rain": 1, "highway": 1, NO_DESCRIPTION: 2, NO_KEYWORD: 2}
    assert table.loc[table["column"] == "weather", "n"].sum() == len(frame)


def test_scene_keywords_are_a_checked_param() -> None:
    params = REPO / "params.yaml"
    assert "night" in load_config(params).evaluate.scene_keywords
    with pytest.raises(ConfigError, match=r"evaluate\.scene_keywords"):
        load_config(params, ["evaluate.scene_keywords=[Night,night]"])


def test_identifier_columns_such_as_timestamps_are_not_sliced() -> None:
    """A column with more than MAX_SLICE_VALUES distinct values (a timestamp, a frame id) gives no slices; a
    column with few values still does."""
    from roadwork.stages.evaluate import MAX_SLICE_VALUES

    n = MAX_SLICE_VALUES + 1
    frame = pd.DataFrame(
        {
            "path": [f"{i}.jpg" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "timestamp": np.arange(n) * 0.5,
            "drive": ["a", "b", "c"] * (n // 3) + ["a"] * (n % 3),
        }
    )
    table = slice_table(frame, np.ones(n, dtype=int), 0.95, [])
    assert set(table["column"]) == {"drive"}
    assert len(slice_table(frame.iloc[:MAX_SLICE_VALUES], np.ones(MAX_SLICE_VALUES, dtype=int), 0.95, [])) > 3
