"""Argument checks shared by the plot writers; each error names the offending argument."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from roadwork.validation import check_labels, check_same_length


def check_path(path: str | os.PathLike[str]) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike ending in .png; got {type(path).__name__}.")
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png (the file is always a PNG); got {str(out)!r}.")
    return out


def check_title(title: str | None) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None; got {type(title).__name__}.")


def check_labels_and(
    y_true: ArrayLike, other: ArrayLike, name: str, check: Callable[[ArrayLike, str], NDArray[Any]]
) -> tuple[NDArray[np.int64], NDArray[Any]]:
    y = check_labels(y_true, "y_true")
    values = check(other, name)
    check_same_length([("y_true", y), (name, values)])
    return y, values


def check_frame(
    frame: Any, name: str, required: Sequence[str], optional: Sequence[str] = ()
) -> dict[str, NDArray[np.float64]]:
    """Return the named columns of a non-empty DataFrame as finite float arrays, or raise naming ``name``."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame; got {type(frame).__name__}.")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks required column(s) {missing}; it has {[str(c) for c in frame.columns]}."
        )
    if len(frame) == 0:
        raise ValueError(f"{name} is empty; at least one row is required.")
    out: dict[str, NDArray[np.float64]] = {}
    for col in (*required, *(c for c in optional if c in frame.columns)):
        series = frame[col]
        if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_complex_dtype(series)):
            raise TypeError(f"{name}[{col!r}] must be numeric; got dtype {series.dtype}.")
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise ValueError(f"{name}[{col!r}] contains {bad} non-finite value(s) (nan or inf).")
        out[col] = values
    return out
