"""`roadwork fetch natix` from a Hugging Face cache the tests build themselves; no test reaches a network
(offline mode, or an endpoint on the loopback port 9 that refuses every connection)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from roadwork.data.fetch import NATIX_REPO, FetchError, dvc_add_command, fetch_dataset

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REFUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once


def parquet_bytes(rows: int, seed: int) -> bytes:
    table = pa.table(
        {
            "image": [bytes([seed, i]) * 50 for i in range(rows)],
            "label": [i % 2 for i in range(rows)],
            "scene_description": ["cones at night" if i % 2 else None for i in range(rows)],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


FILES = {
    "data/train-00000-of-00002.parquet": (parquet_bytes(6, 1), "lfs"),
    "data/train-00001-of-00002.parquet": (parquet_bytes(4, 2), "lfs"),
    "extra/small.parquet": (parquet_bytes(2, 3), "git"),  # stored in git itself: blob named by git SHA-1
}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def build_cache(cache: Path, *, listing: bool = True, ref: str | None = "main") -> Path:
    """The layout huggingface_hub writes: blobs named by sha256 (LFS) or git SHA-1, snapshot links to them,
    a ref, and (``listing``) the tree listing of the commit, which also names a README never downloaded."""
    repo = cache / ("datasets--" + NATIX_REPO.replace("/", "--"))
    tree = {"README.md": {"size": 12, "blob_id": "f" * 40}}
    for rel, (data, kind) in FILES.items():
        name = hashlib.sha256(data).hexdigest() if kind == "lfs" else git_blob_sha1(data)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "blobs" / name).write_bytes(data)
        link = repo / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / name, link.parent))
        entry = {"size": len(data), "blob_id": git_blob_sha1(data)}
        if kind == "lfs":
            entry = {"size": 134, "blob_id": "e" * 40, "lfs_sha256": name, "lfs_size": len(data)}
        tree[rel] = entry
    if ref is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / ref).write_text(COMMIT)
    if listing:
        (repo / "trees").mkdir()
        (repo / "trees" / f"{COMMIT}.json").write_text(json.dumps({"format_version": 1, "files": tree}))
    return repo


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize(
    ("listing", "checked_against"),
    [(True, "the cached tree listing"), (False, "the cache's blob names")],
)
def test_offline_fetch_copies_every_parquet_file_verified(
    tmp_path: Path, offline: None, listing: bool, checked_against: str
) -> None:
    build_cache(tmp_path / "hub", listing=listing)
    result = fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "hub")
    assert (result.commit, result.checked_against) == (COMMIT, checked_against)
    assert list(result.files) == sorted(FILES)
    for rel, (data, _) in FILES.items():
        assert (tmp_path / "out" / rel).read_bytes() == data
        assert not (tmp_path / "out" / rel).is_symlink()
    assert result.n_bytes == sum(len(data) for data, _ in FILES.values())


@pytest.mark.parametrize("rel", sorted(FILES))
def test_a_corrupted_blob_is_detected_and_not_copied(tmp_path: Path, offline: None, rel: str) -> None:
    repo = build_cache(tmp_path / "hub", listing=False)
    blob = (repo / "snapshots" / COMMIT / rel).resolve()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    blob.write_bytes(bytes(data))
    field = "sha256" if FILES[rel][1] == "lfs" else "git_sha1"
    with pytest.raises(FetchError, match=rf"{rel}: {field} of the cached file .* cache's blob name"):
        fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "hub")
    assert not (tmp_path / "out" / rel).exists()


def test_a_blob_renamed_to_match_its_content_still_fails_the_cached_listing(
    tmp_path: Path, offline: None
) -> None:
    repo = build_cache(tmp_path / "hub")
    rel = "data/train-00000-of-00002.parquet"
    link = repo / "snapshots" / COMMIT / rel
    forged = b"not the revision's bytes"
    name = hashlib.sha256(forged).hexdigest()
    (repo / "blobs" / name).write_bytes(forged)
    link.unlink()
    link.symlink_to(os.path.relpath(repo / "blobs" / name, link.parent))
    with pytest.raises(FetchError, match=rf"{rel}: sha256 .* the cached tree listing says"):
        fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "hub")


def test_the_hubs_metadata_is_checked_when_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online, the cached snapshot needs no request; the Hub's metadata (stubbed here) still decides."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    build_cache(tmp_path / "hub")
    siblings = [
        RepoSibling(rel, size=len(data), blob_id=git_blob_sha1(data))
        if kind == "git"
        else RepoSibling(
            rel, blob_id="e" * 40, lfs=BlobLfsInfo(len(data), hashlib.sha256(data).hexdigest(), 134)
        )
        for rel, (data, kind) in FILES.items()
    ]
    calls = []

    def dataset_info(self: HfApi, repo_id: str, *, revision: str, files_metadata: bool) -> SimpleNamespace:
        calls.append((repo_id, revision, files_metadata))
        return SimpleNamespace(siblings=siblings)

    monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
    result = fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "hub", endpoint=REFUSED)
    assert result.checked_against == "the Hub's file metadata"
    assert calls == [(NATIX_REPO, COMMIT, True)]
    siblings[0] = RepoSibling(siblings[0].rfilename, lfs=BlobLfsInfo(1, "0" * 64, 134))
    with pytest.raises(FetchError, match=r"train-00000-of-00002\.parquet: sha256 .* the Hub's file metadata"):
        fetch_dataset(tmp_path / "out2", COMMIT, cache_dir=tmp_path / "hub", endpoint=REFUSED)


def test_a_moving_revision_is_refused_unless_allowed(tmp_path: Path, offline: None) -> None:
    build_cache(tmp_path / "hub")
    with pytest.raises(FetchError, match=r"revision 'main' is not a commit SHA.*--allow-moving-revision"):
        fetch_dataset(tmp_path / "out", "main", cache_dir=tmp_path / "hub")
    assert not (tmp_path / "out").exists()
    result = fetch_dataset(tmp_path / "out", "main", cache_dir=tmp_path / "hub", allow_moving_revision=True)
    assert result.commit == COMMIT  # what the cached ref pointed to


@pytest.mark.parametrize(
    "how", ["offline", pytest.param("refused", marks=pytest.mark.slow)]
)  # 23 s of retries
def test_nothing_reachable_names_token_revision_and_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", how == "offline")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    endpoint = REFUSED if how == "refused" else None
    with pytest.raises(FetchError) as caught:
        fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "empty", endpoint=endpoint)
    message = str(caught.value)
    assert f"at revision {COMMIT}" in message and "HF_TOKEN" in message and "network" in message


def test_out_holding_other_files_is_refused(tmp_path: Path, offline: None) -> None:
    build_cache(tmp_path / "hub")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"x")
    with pytest.raises(
        FetchError, match=r"holds 1 file\(s\) that are not part of this revision.*old\.parquet"
    ):
        fetch_dataset(tmp_path / "out", COMMIT, cache_dir=tmp_path / "hub")


def test_dvc_add_targets_the_folder_dvc_already_tracks(tmp_path: Path) -> None:
    (tmp_path / "data" / "natix").mkdir(parents=True)
    assert dvc_add_command(Path("data/natix"), COMMIT, tmp_path).startswith(
        "dvc add data/natix && git add data/natix.dvc data/.gitignore"
    )
    (tmp_path / "data.dvc").write_text("outs:\n- path: data\n")
    command = dvc_add_command(Path("data/natix"), COMMIT, tmp_path)
    commit_message = f"data: NATIX roadwork @ {COMMIT[:12]}"
    assert command == f'dvc add data && git add data.dvc .gitignore && git commit -m "{commit_message}"'


def test_cli_fetches_offline_from_the_cache_and_fails_clearly_without_it(tmp_path: Path) -> None:
    build_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    argv = [
        sys.executable,
        "-m",
        "roadwork.cli",
        "fetch",
        "natix",
        "--revision",
        COMMIT,
        "--out",
        "data/natix",
    ]
    done = subprocess.run(
        [*argv, "--cache-dir", str(tmp_path / "hub")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "verified against the cached tree listing" in done.stdout
    assert "next: dvc add data/natix" in done.stdout
    failed = subprocess.run(
        [*argv, "--cache-dir", str(tmp_path / "none")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 2
    assert "HF_TOKEN" in failed.stderr and COMMIT in failed.stderr and "network" in failed.stderr
