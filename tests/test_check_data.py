"""Tests for roadwork.data.check and ``roadwork check-data``: each attack of issue 18 that stopped, hung or
leaked through ``dvc add`` is found with its fix, and ``--fix`` moves it outside the data folder losing
nothing. The expected findings are written out by hand per entry (the oracle)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from roadwork.cli import main
from roadwork.data.check import FIXES, default_quarantine_dir, find_problems, move_aside

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_IGNORES_MODES = "running as root: chmod cannot make a file unreadable to root"
SYSTEM_FILE = Path("/etc/passwd")


def _tree(root: Path) -> Path:
    """A clean data folder: two class folders, a nested image and a link to a file inside."""
    data = root / "data"
    (data / "roadwork/sub").mkdir(parents=True)
    (data / "no_roadwork").mkdir()
    (data / "roadwork/a.jpg").write_bytes(b"a")
    (data / "roadwork/sub/b.jpg").write_bytes(b"b")
    (data / "no_roadwork/c.jpg").write_bytes(b"c")
    (data / "no_roadwork/alias.jpg").symlink_to("../roadwork/a.jpg")
    return data


def _hostile(root: Path) -> tuple[Path, dict[str, str]]:
    """The attacks of issue 18 on top of :func:`_tree`, with the kind each must be reported as."""
    data = _tree(root)
    (data / "roadwork/l1.jpg").symlink_to("l2.jpg")
    (data / "roadwork/l2.jpg").symlink_to("l1.jpg")
    (data / "roadwork/sub/up").symlink_to("..")
    (data / "roadwork/gone.jpg").symlink_to("missing.jpg")
    os.mkfifo(data / "no_roadwork/pipe.jpg")
    (data / "no_roadwork/to_pipe.jpg").symlink_to("pipe.jpg")
    (data / "no_roadwork/secret.jpg").symlink_to(SYSTEM_FILE)
    (data / "no_roadwork/linked").symlink_to("../roadwork/sub")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(data / "no_roadwork/sock"))
    expected = {
        "roadwork/l1.jpg": "symlink_loop",
        "roadwork/l2.jpg": "symlink_loop",
        "roadwork/sub/up": "symlink_loop",
        "roadwork/gone.jpg": "dangling_symlink",
        "no_roadwork/pipe.jpg": "fifo",
        "no_roadwork/to_pipe.jpg": "link_to_special_file",
        "no_roadwork/secret.jpg": "symlink_outside_data",
        "no_roadwork/linked": "symlinked_folder",
        "no_roadwork/sock": "socket",
    }
    return data, expected


def _kinds(data: Path) -> dict[str, str]:
    return {problem.path: problem.kind for problem in find_problems(data)}


def _snapshot(root: Path) -> dict[str, tuple[str, object]]:
    """Every entry under ``root`` without following anything: links by target, files by bytes."""
    entries: dict[str, tuple[str, object]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(mode):
            entries[rel] = ("link", os.readlink(path))
        elif stat.S_ISREG(mode):
            entries[rel] = ("file", path.read_bytes())
        else:
            entries[rel] = ("dir" if stat.S_ISDIR(mode) else "special", None)
    return entries


def test_clean_folder_has_no_problem(tmp_path: Path) -> None:
    assert find_problems(_tree(tmp_path)) == []


@pytest.mark.timeout(30)  # opening the FIFO would block forever
@pytest.mark.skipif(not SYSTEM_FILE.is_file(), reason="no /etc/passwd to link to")
def test_each_attack_is_found_with_its_fix(tmp_path: Path) -> None:
    data, expected = _hostile(tmp_path)
    problems = find_problems(data)
    assert {p.path: p.kind for p in problems} == expected
    assert [p.path for p in problems] == sorted(expected)
    by_path = {p.path: p for p in problems}
    secret = by_path["no_roadwork/secret.jpg"]
    assert str(SYSTEM_FILE) in secret.detail and "dvc push" in secret.detail
    assert f"cp -r {SYSTEM_FILE}" in secret.fix
    assert "too many levels of symbolic links" in by_path["roadwork/l1.jpg"].detail
    assert by_path["roadwork/gone.jpg"].fix.startswith(f"remove the link (rm {data}/roadwork/gone.jpg)")
    assert all(p.fix for p in problems) and set(FIXES) >= {p.kind for p in problems}


@pytest.mark.skipif(not hasattr(os, "mknod") or not AS_ROOT, reason="creating a device node needs root")
def test_device_node_is_found(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    try:
        os.mknod(data / "roadwork/null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("this container refuses mknod")
    assert _kinds(data) == {"roadwork/null": "device"}


def test_unreadable_file_and_folder_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root reads everything, so the refusals a non-root user gets are injected at os.open / os.scandir."""
    data = _tree(tmp_path)
    (data / "roadwork/locked").mkdir()
    (data / "roadwork/locked/x.jpg").write_bytes(b"x")
    opener, lister = os.open, os.scandir
    locked_file, locked_folder = data / "roadwork/sub/b.jpg", data / "roadwork/locked"

    def refuse_open(path: object, *args: object, **kwargs: object) -> int:
        if Path(str(path)) == locked_file:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opener(path, *args, **kwargs)  # type: ignore[arg-type]

    def refuse_listing(path: object) -> object:
        if Path(str(path)) == locked_folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return lister(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse_open)
    monkeypatch.setattr(os, "scandir", refuse_listing)
    problems = {p.path: p for p in find_problems(data)}
    assert {path: p.kind for path, p in problems.items()} == {
        "roadwork/locked": "unreadable_folder",
        "roadwork/sub/b.jpg": "unreadable_file",
    }
    assert "chmod u+rx" in problems["roadwork/locked"].fix
    assert "chmod u+r " in problems["roadwork/sub/b.jpg"].fix


@pytest.mark.skipif(AS_ROOT, reason=ROOT_IGNORES_MODES)
def test_unreadable_by_mode(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    (data / "roadwork/sub/b.jpg").chmod(0)
    (data / "no_roadwork").chmod(0)
    try:
        kinds = _kinds(data)
    finally:
        (data / "no_roadwork").chmod(0o755)
    assert kinds == {"no_roadwork": "unreadable_folder", "roadwork/sub/b.jpg": "unreadable_file"}


@pytest.mark.timeout(30)
@pytest.mark.skipif(not SYSTEM_FILE.is_file(), reason="no /etc/passwd to link to")
def test_cli_lists_and_exits_non_zero_then_fix_moves_everything_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, expected = _hostile(tmp_path)
    before = _snapshot(data)
    assert main(["check-data", str(data)]) == 1
    listing = capsys.readouterr()
    for rel, kind in expected.items():
        assert f"{data / rel}: {kind}: " in listing.out
    assert "--fix" in listing.err and _snapshot(data) == before  # listing alone changes nothing

    assert main(["check-data", str(data), "--fix"]) == 0
    quarantine = default_quarantine_dir(data)
    assert quarantine == tmp_path / "data-quarantine"
    moved, left = _snapshot(quarantine), _snapshot(data)
    # every problem entry now lives at its old relative path under the quarantine, as the same link or node
    for rel in expected:
        assert moved[rel] == before[rel] and rel not in left
    # nothing else moved, nothing lost: what stayed plus what moved (less parent folders) is what was there
    assert left == {rel: entry for rel, entry in before.items() if rel not in expected}
    assert set(moved) - set(expected) <= {"roadwork", "roadwork/sub", "no_roadwork"}
    assert SYSTEM_FILE.is_file()  # a link's target is never touched
    assert main(["check-data", str(data)]) == 0


def test_fix_never_overwrites_earlier_quarantine(tmp_path: Path) -> None:
    data = _tree(tmp_path)
    quarantine = tmp_path / "q"
    for round_ in range(2):
        (data / "roadwork/gone.jpg").symlink_to(f"missing-{round_}.jpg")
        outcomes = move_aside(data, find_problems(data), quarantine)
        assert [o.error for o in outcomes] == [None]
    assert os.readlink(quarantine / "roadwork/gone.jpg") == "missing-0.jpg"
    assert os.readlink(quarantine / "roadwork/gone.jpg.1") == "missing-1.jpg"


def test_quarantine_inside_data_and_missing_data_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tree(tmp_path)
    assert main(["check-data", str(data), "--fix", "--quarantine", str(data / "q")]) == 2
    assert "must lie outside" in capsys.readouterr().err
    assert main(["check-data", str(data), "--quarantine", str(tmp_path)]) == 2
    assert main(["check-data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.skipif(not SYSTEM_FILE.is_file(), reason="no /etc/passwd to link to")
def test_dvc_add_takes_the_folder_after_fix(tmp_path: Path) -> None:
    """The independent oracle: DVC itself. After --fix, `dvc add data` succeeds and caches no system file."""
    data, _ = _hostile(tmp_path)
    assert main(["check-data", str(data), "--fix"]) == 0
    dvc = [sys.executable, "-m", "dvc"]
    environment = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True, env=environment)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True, env=environment, timeout=90)
    cached = [p.read_bytes() for p in (tmp_path / ".dvc/cache").rglob("*") if p.is_file()]
    assert SYSTEM_FILE.read_bytes() not in cached
