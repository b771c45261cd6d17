"""``roadwork predict PATH…``: a registered (or local) model on image files and folders.

Every argument, and every entry of a folder (searched recursively, sorted), gets one row, in that order, so
nothing is skipped silently. Regular files are read here (the served model reads no files) and their bytes
go to the model as the served model receives them; anything else gets its reason without being opened: a
missing path, a symbolic-link loop or dangling link, a FIFO (opening one for reading would block), a socket
or device, a hidden entry inside a folder (``.DS_Store``, ``.git/``), a link to a folder inside a folder
(not followed, so no loop), a folder that cannot be listed, a file over ``max_bytes``. Such rows, and rows
the model cannot use, have ``decision`` -1 and the reason in ``error``. Writes a CSV with ``path`` and the
model's output columns (``--out``, or standard output).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Entry:
    """One row of the output: a path and, when it is not read, why not."""

    path: Path
    reason: str = ""


def _link_reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop: not followed"
    if error.errno == errno.ENOENT:
        return "dangling symbolic link: its target does not exist"
    return f"symbolic link cannot be followed: {error.strerror}"


def _special_reason(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe): not read"
    if stat.S_ISSOCK(mode):
        return "a socket: not read"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device: not read"
    return "not a regular file: not read"


def _visit(path: Path, top: bool, entries: list[Entry]) -> None:
    """Append ``path``'s rows: itself, or for a folder its entries. ``top``: named on the command line."""
    if not top and path.name.startswith("."):
        entries.append(Entry(path, "hidden (name starts with '.'): not read (name it to include it)"))
        return
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            try:
                mode = os.stat(path).st_mode
            except OSError as error:
                entries.append(Entry(path, _link_reason(error)))
                return
            if stat.S_ISDIR(mode) and not top:
                entries.append(Entry(path, "symbolic link to a folder: not followed (name it to include it)"))
                return
    except FileNotFoundError:
        entries.append(Entry(path, "no such file or folder"))
        return
    except OSError as error:
        entries.append(Entry(path, f"cannot be examined: {error.strerror}"))
        return
    if stat.S_ISREG(mode):
        entries.append(Entry(path))
    elif stat.S_ISDIR(mode):
        try:
            with os.scandir(path) as iterator:
                names = sorted(entry.name for entry in iterator)
        except OSError as error:
            entries.append(Entry(path, f"folder cannot be listed: {error.strerror}"))
            return
        for name in names:
            _visit(path / name, False, entries)
    else:
        entries.append(Entry(path, _special_reason(mode)))


def collect(paths: list[Path]) -> list[Entry]:
    """One :class:`Entry` per argument and per entry of a folder argument, in order; nothing is opened."""
    entries: list[Entry] = []
    for path in paths:
        _visit(path, True, entries)
    return entries


def read_image_file(path: Path, predictor: Any) -> bytes:
    """The bytes of a regular file no larger than the model's ``max_bytes``.

    Opened non-blocking and checked again on the open descriptor, so a file swapped for a FIFO after
    :func:`collect` cannot block. Raises OSError or ValueError saying why not.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(_special_reason(info.st_mode))
        predictor.check_size(info.st_size)
        return handle.read()


def predict_paths(
    model: Any, entries: list[Entry], progress: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """One row per entry, in order: ``path`` and the model's output columns; unread entries and entries
    the model cannot use get decision -1 and an ``error``."""
    from roadwork.deploy.predictor import OUTPUT_COLUMNS, unscored_rows
    from roadwork.deploy.registry import predict_with

    predictor = model.unwrap_python_model().predictor
    errors = [entry.reason for entry in entries]
    sent: list[int] = []

    def inputs() -> Iterator[bytes]:
        for i, entry in enumerate(entries):
            if entry.reason:
                continue
            try:
                data = read_image_file(entry.path, predictor)
            except (OSError, ValueError) as exc:
                errors[i] = f"{type(exc).__name__}: {exc}"
                if progress:
                    progress(1)
                continue
            sent.append(i)
            yield data

    scored = predict_with(model, inputs(), progress)
    schema = model.metadata.get_output_schema()
    columns = schema.input_names() if schema is not None else list(OUTPUT_COLUMNS)
    frame = unscored_rows(errors).reindex(columns=columns)
    for column in columns:
        frame.loc[sent, column] = scored[column].to_numpy()
    frame.insert(0, "path", [str(entry.path) for entry in entries])
    return frame


def main(model_uri: str, paths: list[Path], out: Path | None, show_progress: bool = True) -> int:
    import mlflow

    from roadwork.atomic import atomic_write_csv
    from roadwork.progress import progress_bar
    from roadwork.tracking import check_reachable, tracking_uri

    entries = collect(paths)
    if model_uri.startswith("models:/"):
        uri = tracking_uri()
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    readable = sum(not entry.reason for entry in entries)
    with progress_bar(total=readable, desc="predict", unit="img", show=show_progress) as bar:
        frame = predict_paths(model, entries, bar.update)
    if out is None:
        frame.to_csv(sys.stdout, index=False, lineterminator="\n")
    else:
        atomic_write_csv(out, frame)
    failed = frame["error"].fillna("").astype(bool)
    print(
        f"predict: {int((~failed).sum())} images scored, {int(failed.sum())} unusable"
        + (f" (see the error column of {out})" if out and failed.any() else ""),
        file=sys.stderr,
    )
    return 0
