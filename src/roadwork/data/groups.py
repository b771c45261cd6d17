"""Groups the user knows: metadata columns and time windows that join images into split groups.

Dedupe's groups keep copies of one picture together; a user knows more: frames of one drive, one sequence or
one place look alike without being copies, and a model that saw a drive in training scores that drive's
other frames too well. :func:`split_groups` joins images into the groups that the split keeps whole:

* **dedupe's groups**, always;
* **``group_by`` columns** (``split.group_by``): for *each* named column separately, images that share a
  non-empty value join one group. Naming two columns (``[drive, location]``) joins images sharing a drive *or*
  a location, so neither crosses splits. An empty value (a path absent from ``metadata.csv``, a null parquet
  cell) joins nothing: that image keeps only its other links;
* **time windows** (``split.time_window_s`` with ``split.time_column`` and ``split.drive_column``): two frames
  of the same non-empty drive whose timestamps differ by *less than* the window join, and joining is
  transitive: a chain of frames, each less than the window after the previous one, is one group (single
  linkage). A drive therefore falls into its segments separated by gaps of at least the window, and
  different segments may land in different splits, unless ``group_by`` also names the drive column, which
  keeps the whole drive together anyway. Frames of different drives never join by time, and a frame with an
  empty drive or timestamp joins nothing by time.

All links are unioned (connected components), so a group may hold several drives when near-duplicates
bridge them. Timestamps are either all numbers (seconds, e.g. Unix time) or all ISO 8601 date-times (those
without a zone are read as UTC); anything else is an error naming the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from roadwork.data.dedupe import connected_groups

_EMPTY_EDGES = np.empty((0, 2), dtype=np.int64)
_SHOWN_VALUES = 3


@dataclass(frozen=True)
class UserGrouping:
    """What ``split.*`` says about the groups the user knows (see the module docstring)."""

    group_by: tuple[str, ...] = ()
    time_window_s: float | None = None
    time_column: str = "timestamp"
    drive_column: str | None = None

    def __post_init__(self) -> None:
        if self.time_window_s is not None and (self.time_window_s <= 0 or not self.drive_column):
            raise ValueError(
                f"time_window_s={self.time_window_s} needs a positive window and a drive_column (got "
                f"{self.drive_column!r}): frames join by time only within one drive"
            )

    def joins_anything(self) -> bool:
        """Whether this grouping adds links to dedupe's groups at all."""
        return bool(self.group_by) or self.time_window_s is not None

    def columns(self) -> list[str]:
        """Every metadata column this grouping reads, in a fixed order without repeats."""
        named = [*self.group_by]
        if self.time_window_s is not None and self.drive_column:
            named += [self.drive_column, self.time_column]
        return list(dict.fromkeys(named))

    def key_columns(self) -> list[str]:
        """The columns whose values name a group (``group_by`` and the drive column)."""
        drive = [self.drive_column] if self.time_window_s is not None and self.drive_column else []
        return list(dict.fromkeys([*self.group_by, *drive]))


def check_columns(frame: pd.DataFrame, grouping: UserGrouping, source: str, hint: str) -> None:
    """Raise ValueError naming the first column ``grouping`` reads that ``frame`` (read from ``source``)
    lacks; ``hint`` says where such a column comes from."""
    for column in grouping.columns():
        if column not in frame.columns:
            raise ValueError(
                f"{source} has no column '{column}' (named in split.group_by, split.drive_column or "
                f"split.time_column); {hint}. Its columns: {list(frame.columns)}"
            )


def _text(values: Sequence[object] | pd.Series) -> pd.Series:
    """Values as stripped strings; missing values become ""."""
    series = pd.Series(values, dtype=object).reset_index(drop=True)
    return series.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip())


def value_edges(values: Sequence[object] | pd.Series) -> np.ndarray:
    """Index pairs ``[P, 2]`` that link all items sharing a non-empty value (each to the next, a chain)."""
    text = _text(values)
    order = np.argsort(text.to_numpy(dtype=str), kind="stable")
    ordered = text.to_numpy(dtype=str)[order]
    same = (ordered[1:] == ordered[:-1]) & (ordered[1:] != "")
    return np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)


def parse_timestamps(values: Sequence[object] | pd.Series, paths: Sequence[str], column: str) -> np.ndarray:
    """Seconds as float64 (NaN where empty): all numbers (seconds) or all ISO 8601 date-times.

    Raises ValueError naming ``column``, the first value that is neither and its path.
    """
    text = _text(values)
    present = text != ""
    result = np.full(len(text), np.nan)
    if not present.any():
        return result
    numbers = pd.to_numeric(text[present], errors="coerce")
    if numbers.notna().all():
        result[present.to_numpy()] = numbers.to_numpy(dtype=float)
    else:
        dates = pd.to_datetime(text[present], errors="coerce", utc=True, format="ISO8601")
        bad = dates.isna()
        if bad.any():
            at = int(bad.index[bad.to_numpy()][0])
            raise ValueError(
                f"column '{column}': value {text[at]!r} (path {paths[at]!r}) is not a timestamp; use seconds "
                "(e.g. 1700000000.5) or ISO 8601 date-times (e.g. 2024-05-01T12:00:03Z) throughout the column"
            )
        epoch = pd.Timestamp(0, tz="UTC")
        result[present.to_numpy()] = ((dates - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
    if not np.isfinite(result[present.to_numpy()]).all():
        raise ValueError(f"column '{column}': timestamps must be finite numbers of seconds")
    return result


def time_window_edges(drives: Sequence[object] | pd.Series, seconds: np.ndarray, window: float) -> np.ndarray:
    """Index pairs linking frames of one non-empty drive whose timestamps differ by less than ``window``.

    Consecutive frames of a drive (in time order) are linked when their gap is below the window: the
    transitive closure of these links equals that of all pairs closer than the window.
    """
    drive = _text(drives).to_numpy(dtype=str)
    usable = np.flatnonzero((drive != "") & ~np.isnan(seconds))
    if usable.size < 2:
        return _EMPTY_EDGES
    order = usable[np.lexsort((seconds[usable], drive[usable]))]
    close = (drive[order][1:] == drive[order][:-1]) & (np.diff(seconds[order]) < window)
    return np.stack([order[:-1][close], order[1:][close]], axis=1).astype(np.int64)


def split_groups(frame: pd.DataFrame, grouping: UserGrouping) -> np.ndarray:
    """The group of each row of ``frame``: dedupe's ``group`` column unioned with ``grouping``'s links.

    A group's id is the smallest dedupe group id it holds, so without user links the ids are dedupe's own.
    ``frame`` must hold every column :meth:`UserGrouping.columns` names (see :func:`check_columns`).
    """
    dedupe = frame["group"].to_numpy()
    edges = [value_edges(frame["group"])]
    edges += [value_edges(frame[column]) for column in grouping.group_by]
    if grouping.time_window_s is not None and grouping.drive_column:
        seconds = parse_timestamps(frame[grouping.time_column], frame["path"].tolist(), grouping.time_column)
        edges.append(time_window_edges(frame[grouping.drive_column], seconds, grouping.time_window_s))
    component = connected_groups(len(frame), *edges)
    return pd.Series(dedupe).groupby(component).transform("min").to_numpy()


def describe_group(frame: pd.DataFrame, group: object, grouping: UserGrouping) -> str:
    """A group in words for an error or a log line: its key values (column='value') and its size."""
    members = frame[frame["group"] == group]
    keys = []
    for column in grouping.key_columns():
        values = sorted({v for v in _text(members[column]) if v})
        if len(values) == 1:
            keys.append(f"{column}={values[0]!r}")
        elif values:
            shown = ", ".join(repr(v) for v in values[:_SHOWN_VALUES])
            more = f", … {len(values) - _SHOWN_VALUES} more" if len(values) > _SHOWN_VALUES else ""
            keys.append(f"{column} in {{{shown}{more}}}")
    where = " and ".join(keys) if keys else f"dedupe group {group} (e.g. {members['path'].iloc[0]!r})"
    return f"{where}: {len(members)} of {len(frame)} images ({len(members) / len(frame):.1%})"
