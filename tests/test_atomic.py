"""roadwork.atomic: a target (file or folder) is either the old one or the complete new one; failures leave no
debris."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from roadwork.atomic import (
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)


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


def test_csv_rows_are_written_as_the_csv_module_writes_them(tmp_path: Path) -> None:
    columns = ["path", "size", "note"]
    rows = [["a/b.jpg", 12, ""], ["x,y.jpg", 10**20, 'say "hi"'], ["n\nl", -1, "é"], ["#0", True, None]]
    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    atomic_write_csv(tmp_path / "rows.csv", rows, columns=columns)
    assert (tmp_path / "rows.csv").read_bytes() == expected.getvalue().encode()
    atomic_write_csv(tmp_path / "empty.csv", [], columns=columns)
    assert (tmp_path / "empty.csv").read_bytes() == b"path,size,note\n"


def test_csv_of_a_frame_has_no_index_and_unix_line_ends(tmp_path: Path) -> None:
    frame = pd.DataFrame({"p": [0.1, float("nan")], "label": [1, 0]})
    atomic_write_csv(tmp_path / "f.csv", frame)
    assert (tmp_path / "f.csv").read_bytes() == b"p,label\n0.1,1\n,0\n"
    assert stat.S_IMODE((tmp_path / "f.csv").stat().st_mode) == 0o644


def test_a_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"old")
    with atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "weights.bin").write_bytes(b"new")
        assert (target / "stale.bin").read_bytes() == b"old"  # untouched until the body is done
    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert os.listdir(tmp_path) == ["model"]
    with atomic_dir(tmp_path / "deep" / "new") as tmp:
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "deep" / "new" / "a.txt").read_text() == "a"


def test_a_failing_folder_body_leaves_the_old_folder_and_no_debris(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"ne")
        raise OSError("disk full")
    assert (target / "weights.bin").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model"]
