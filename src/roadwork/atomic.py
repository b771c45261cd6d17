"""Atomic file writes: the one way roadwork writes a file that another stage, a resumed run or a reader in
another process may look at.

:func:`atomic_write` lets the caller write a temporary file beside the target (same folder, so the rename
stays on one file system), flushes it to disk, gives it ordinary permissions and renames it onto the target.
A reader sees the old file or the complete new one, never a partial one, even when the writer is killed
(``kill -9``, out of memory); with ``durable`` the data and the rename also survive a power cut on file
systems that honour ``fsync``. A failed write removes its temporary file and leaves the target untouched.
:func:`atomic_write_csv` is the one CSV writer; :func:`atomic_dir` does the same for a folder that a library
fills file by file (``save_pretrained``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
]

# mkstemp creates 0600 files and mkdtemp 0700 folders; outputs are shared artefacts (DVC cache, MLflow,
# other users of a shared box)
_FILE_MODE = 0o644
_DIR_MODE = 0o755


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, durable: bool = True) -> Path:
    """Write ``path`` all-or-nothing: ``write(tmp)`` fills a temporary path beside it, which is then renamed.

    Args:
        path: the target; its folder is created if needed.
        write: called once with the temporary file's path (the file exists and is empty); it may open it
            itself or hand the path to a library (``save_file``, ``DataFrame.to_csv``, ``savefig``, ...).
        durable: fsync the file before the rename and the folder after it (default). ``False`` skips both
            for many small files whose loss on a power cut only costs recomputation (the feature cache).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable=durable)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), durable=durable)


def atomic_write_json(
    path: str | os.PathLike[str], payload: Mapping[str, Any], *, indent: int = 2, sort_keys: bool = True
) -> Path:
    """:func:`atomic_write` of ``payload`` as JSON with a final newline."""
    return atomic_write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n")


def atomic_write_csv(
    path: str | os.PathLike[str], table: Any, *, columns: Sequence[str] | None = None
) -> Path:
    """:func:`atomic_write` of a CSV: a header row, no index, ``\\n`` line ends, minimal quoting, missing
    values as empty fields. ``table`` is a pandas DataFrame or, with ``columns``, an iterable of rows of
    plain values, each written as ``str`` writes it (what the ``csv`` module writes)."""
    if columns is not None:
        import pandas as pd

        table = pd.DataFrame(list(table), columns=list(columns), dtype=object)
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, lineterminator="\n"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Fill the folder ``path`` all-or-nothing: the ``with`` body writes into the empty temporary folder it
    is given (beside ``path``), which then takes ``path``'s place whole (what was there is moved aside and
    deleted). A body that raises leaves ``path`` untouched and the temporary folder removed.

    A reader sees the old folder, for an instant none, or the complete new one, never a partial one. Unlike
    :func:`atomic_write` nothing is fsynced: what a power cut loses here is recomputed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)
        _replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_folder(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``; an existing ``path`` is moved aside first (a rename cannot replace a
    folder that holds files) and put back if the second rename fails."""
    if not (path.exists() or path.is_symlink()):
        os.replace(new, path)
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.replace(path, aside / path.name)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(aside / path.name, path)
        aside.rmdir()
        raise
    shutil.rmtree(aside)
