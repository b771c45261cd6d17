"""Atomic file writes: the one way roadwork writes a file that another stage, a resumed run or a reader in
another process may look at.

:func:`atomic_write` lets the caller write a temporary file beside the target (same folder, so the rename
stays on one file system), flushes it to disk, gives it ordinary permissions and renames it onto the target.
A reader sees the old file or the complete new one, never a partial one, even when the writer is killed
(``kill -9``, out of memory); with ``durable`` the data and the rename also survive a power cut on file
systems that honour ``fsync``. A failed write removes its temporary file and leaves the target untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

# mkstemp creates 0600 files; outputs are shared artefacts (DVC cache, MLflow, other users of a shared box)
_FILE_MODE = 0o644


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
