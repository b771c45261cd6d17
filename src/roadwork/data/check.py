"""What in a data folder DVC cannot take or should not copy, and moving it aside (``roadwork check-data``).

``dvc add data`` (and ``dvc repro``, which hashes ``data/``) walks the folder without following folder links
and opens every file, following file links. So:

* a symlink loop or a dangling link makes it fail (``Too many levels of symbolic links``, no such file);
* a FIFO makes it hang forever (opening a FIFO blocks until a writer comes); sockets and devices are not
  data either;
* a link to a file outside the folder (``/etc/passwd``) is copied into ``.dvc/cache``, and ``dvc push``
  would upload it;
* a folder link is skipped, so a clone lacks its files while ingest, which follows links inside the
  folder, reads them here;
* an unreadable file or folder makes it fail.

:func:`find_problems` lists each such entry without opening anything but regular files (those are opened
non-blocking and closed at once, to prove they are readable); :func:`move_aside` moves entries into a
quarantine folder outside the data folder, keeping their relative paths, by rename only, so nothing is
copied, overwritten or lost.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

# kind -> what to do about it; {path} is the entry's shell-quoted path, {target} its link target's
FIXES: dict[str, str] = {
    "symlink_loop": "remove the link (rm {path}) or point it at a real file inside the data folder",
    "dangling_symlink": "remove the link (rm {path}) or restore what it points to",
    "symlink_outside_data": "replace the link by a copy (rm {path} && cp -r {target} {path}) or remove it",
    "symlinked_folder": "replace the link by a real folder (rm {path} && cp -r {target} {path}) or remove it",
    "link_to_special_file": "remove the link (rm {path}): it points at a FIFO, socket or device",
    "fifo": "remove it (rm {path}): a FIFO holds no data and DVC blocks reading it",
    "socket": "remove it (rm {path}): a socket holds no data",
    "device": "remove it (rm {path}): a device file holds no data",
    "unreadable_file": "make it readable (chmod u+r {path}) or remove it",
    "unreadable_folder": "make it readable (chmod u+rx {path}) or remove it",
}


@dataclass(frozen=True)
class DataProblem:
    """One entry DVC cannot take or should not copy; ``path`` is POSIX, relative to the data folder."""

    path: str
    kind: str
    detail: str
    fix: str


@dataclass(frozen=True)
class Moved:
    """Where :func:`move_aside` put a problem entry (``destination``), or why it could not (``error``)."""

    problem: DataProblem
    destination: Path | None
    error: str | None = None


def default_quarantine_dir(data_dir: Path) -> Path:
    """``data-quarantine/`` beside ``data/``: outside it, so DVC and ingest never see what was moved."""
    real = data_dir.resolve()
    return real.parent / f"{real.name}-quarantine"


def find_problems(data_dir: Path) -> list[DataProblem]:
    """Every entry under ``data_dir`` that DVC cannot take or should not copy, sorted by path.

    Folder links are examined, never followed (as DVC does). Raises ValueError when ``data_dir`` is not a
    readable folder.
    """
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir} does not exist or is not a folder")
    root = data_dir.resolve()
    problems: list[DataProblem] = []

    def report(rel: str, kind: str, detail: str, target: str = "") -> None:
        full = shlex.quote(str(data_dir / rel) if rel else str(data_dir))
        fix = FIXES[kind].format(path=full, target=shlex.quote(target))
        problems.append(DataProblem(rel, kind, detail, fix))

    def visit(folder: Path, rel_parts: tuple[str, ...]) -> None:
        rel = "/".join(rel_parts)
        try:
            with os.scandir(folder) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
            statuses = [(entry, entry.stat(follow_symlinks=False)) for entry in entries]
        except OSError as error:
            if not rel_parts:
                raise ValueError(f"{data_dir} cannot be read ({error.strerror or error})") from None
            report(rel, "unreadable_folder", f"cannot be listed ({error.strerror or error})")
            return
        for entry, status in statuses:
            parts = (*rel_parts, entry.name)
            if stat.S_ISDIR(status.st_mode):
                visit(Path(entry.path), parts)
            else:
                found = _examine(Path(entry.path), status, root)
                if found is not None:
                    report("/".join(parts), *found)

    visit(data_dir, ())
    return sorted(problems, key=lambda problem: problem.path)


def _examine(path: Path, status: os.stat_result, root: Path) -> tuple[str, str, str] | None:
    """(kind, detail, link target) of what is wrong with the non-folder ``path``, or None."""
    mode = status.st_mode
    if stat.S_ISLNK(mode):
        return _examine_link(path, root)
    if stat.S_ISFIFO(mode):
        return "fifo", "a named pipe (FIFO)", ""
    if stat.S_ISSOCK(mode):
        return "socket", "a Unix socket", ""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device", "a character or block device", ""
    try:
        # O_NONBLOCK: should the file have been swapped for a FIFO since lstat, opening it still returns
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
    except OSError as error:
        return "unreadable_file", f"cannot be opened ({error.strerror or error})", ""
    return None


def _examine_link(path: Path, root: Path) -> tuple[str, str, str] | None:
    target = Path(os.path.realpath(path))
    try:
        status = path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink_loop", "a chain of links that never ends (too many levels of symbolic links)", ""
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return "dangling_symlink", f"points to {os.readlink(path)}, which does not exist", ""
        return "unreadable_file", f"cannot be followed ({error.strerror or error})", ""
    if not target.is_relative_to(root):
        return (
            "symlink_outside_data",
            f"points outside the data folder, to {target}: DVC would copy it into .dvc/cache and dvc push "
            "would upload it",
            str(target),
        )
    if stat.S_ISDIR(status.st_mode):
        if path.parent.resolve().is_relative_to(target):
            return "symlink_loop", f"folder link to its own ancestor {target.relative_to(root)}/", ""
        return (
            "symlinked_folder",
            f"folder link to {target.relative_to(root)}/: DVC skips folder links, so a clone lacks "
            "these files while ingest reads them here",
            str(target),
        )
    if not stat.S_ISREG(status.st_mode):
        return (
            "link_to_special_file",
            f"points to {target.relative_to(root)}, which is not a regular file",
            "",
        )
    return None


def check_quarantine_dir(data_dir: Path, quarantine_dir: Path) -> None:
    """Refuse a quarantine folder inside ``data_dir`` (DVC would take it back in) or holding it."""
    data_real, quarantine_real = data_dir.resolve(), quarantine_dir.resolve()
    if quarantine_real.is_relative_to(data_real) or data_real.is_relative_to(quarantine_real):
        raise ValueError(
            f"quarantine folder {quarantine_dir} must lie outside {data_dir} and not contain it; "
            f"e.g. {default_quarantine_dir(data_dir)}"
        )


def move_aside(data_dir: Path, problems: list[DataProblem], quarantine_dir: Path) -> list[Moved]:
    """Move each problem entry to ``quarantine_dir/<its relative path>`` by rename, keeping the link or file
    itself (a link's target is never touched). An existing destination gets a ``.1``, ``.2``… suffix, never
    overwritten; an entry that cannot be renamed (another file system, no permission) stays where it is and
    its ``Moved.error`` says why."""
    check_quarantine_dir(data_dir, quarantine_dir)
    moved: list[Moved] = []
    for problem in problems:
        source = data_dir / problem.path
        destination = quarantine_dir / problem.path
        suffix = 0
        while os.path.lexists(destination):
            suffix += 1
            destination = quarantine_dir / f"{problem.path}.{suffix}"
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.rename(source, destination)
        except OSError as error:
            moved.append(Moved(problem, None, f"{error.strerror or error}; move it by hand"))
            continue
        moved.append(Moved(problem, destination))
    return moved
