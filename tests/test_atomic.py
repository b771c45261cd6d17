"""roadwork.atomic: a target is either the old file or the complete new one; failures leave no debris."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from roadwork.atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("durable", [True, False])
def test_writes_the_whole_file_with_shared_permissions(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "deep" / "folder" / "out.bin"
    assert atomic_write_bytes(target, b"\x00\x01" * 1000, durable=durable) == target
    assert target.read_bytes() == b"\x00\x01" * 1000
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"mcc": 0.5})

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"mcc": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"mcc": 0.5}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_the_writer_gets_a_path_in_the_target_folder(tmp_path: Path) -> None:
    seen: list[Path] = []
    atomic_write(tmp_path / "a.txt", lambda tmp: (seen.append(tmp), tmp.write_text("x")))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".a.txt.") and not seen[0].exists()


def test_text_and_json_helpers(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "j.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"
