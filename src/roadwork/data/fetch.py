"""``roadwork fetch natix``: the NATIX roadwork parquet set at a pinned revision, verified, for ``dvc add``.

The files come through ``huggingface_hub.snapshot_download`` (``repo_type="dataset"``) into the Hugging Face
cache and are then copied to ``out``; each copy is hashed as it is written and must match the revision's
metadata, or the fetch fails naming the file. What the hashes are checked against:

* online: the Hub's file metadata for that commit (``HfApi.dataset_info(files_metadata=True)``): the
  SHA-256 of each LFS file, the git blob SHA-1 of a file stored in git itself, and the size;
* offline (``HF_HUB_OFFLINE=1``, or the Hub unreachable): the cache's own record of that metadata, the tree
  listing ``snapshot_download`` keeps in ``<repo folder>/trees/<commit>.json``, when present; and always the
  blob's name, since the cache names the blob of an LFS file by its SHA-256 (``blobs/<sha256>``) and that of a
  git-stored file by its git blob SHA-1 (the ETag the Hub serves for each).

So a blob changed on disk after its download is caught either way. Only a commit SHA (40 hex digits) is
accepted as the revision by default: a branch or tag (``main``) moves, and a data set pinned by one would not
be the data set that was trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from roadwork.atomic import atomic_write

# natixnetwork/streetvision-subnet, natix/validator/config.py: IMAGE_DATASETS["Roadwork"] is
# f"{HUGGINGFACE_REPO}/roadwork" with HUGGINGFACE_REPO = "natix-network-org" (the validator's challenges
# are drawn from its parquet files).
NATIX_REPO = "natix-network-org/roadwork"
DATA_PATTERNS: tuple[str, ...] = ("*.parquet",)
_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 22
_TREE_FORMAT = 1  # huggingface_hub._tree_cache.TREE_CACHE_FORMAT_VERSION


class FetchError(ValueError):
    """The data set could not be fetched or did not verify; the message names the file or the cause."""


@dataclass(frozen=True)
class Expected:
    """What the revision's metadata says of one file: an LFS file's SHA-256, or the git blob SHA-1 of a
    file stored in git, and its size (None where unknown)."""

    sha256: str | None = None
    git_sha1: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class FetchResult:
    repo_id: str
    commit: str
    out: Path
    files: tuple[str, ...]
    n_bytes: int
    checked_against: str  # "the Hub's file metadata" | "the cached tree listing" | "the cache's blob names"


def check_revision(revision: str, allow_moving_revision: bool) -> None:
    """Refuse anything but a full commit SHA unless ``allow_moving_revision``."""
    if not _COMMIT.fullmatch(revision) and not allow_moving_revision:
        raise FetchError(
            f"revision {revision!r} is not a commit SHA (40 hex digits): a branch or tag moves, so the "
            "data would change under the same name. Pass the commit (the dataset's 'Files and versions' tab "
            "on the Hub, or `HfApi().dataset_info(repo).sha`), or --allow-moving-revision to take what it "
            "points to now"
        )


def _unreachable(repo_id: str, revision: str, cache: Path, error: BaseException) -> FetchError:
    detail = str(error).splitlines()[0] if str(error) else "no detail"
    return FetchError(
        f"cannot fetch {repo_id} at revision {revision}: the Hugging Face Hub could not be reached "
        f"({type(error).__name__}: {detail}), and the cache {cache} does not hold that revision complete. "
        "Check the network (and that HF_HUB_OFFLINE is not set to 1), set HF_TOKEN to a token of an account "
        "that accepted the dataset's terms if it is gated, or point --cache-dir / HF_HUB_CACHE at a cache "
        "that holds the revision"
    )


def _download(repo_id: str, revision: str, cache: Path, token: str | None, endpoint: str | None) -> Path:
    """The snapshot folder of ``revision``: downloaded, or found in the cache when the Hub is out of reach."""
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            cache_dir=cache,
            allow_patterns=list(DATA_PATTERNS),
            token=token,
            endpoint=endpoint,
        )
    except RevisionNotFoundError as error:
        raise FetchError(f"{repo_id} has no revision {revision!r} on the Hub ({error})") from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise FetchError(
            f"the Hub refused {repo_id} at revision {revision} ({type(error).__name__}): it is private, "
            "gated or misspelt. Set HF_TOKEN (or `hf auth login`) to a token of an account that has "
            "accepted the dataset's terms"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, httpx2.HTTPError) as error:
        raise _unreachable(repo_id, revision, cache, error) from None
    return Path(folder)


def _from_siblings(siblings: Iterable[Any]) -> dict[str, Expected]:
    """``Expected`` per path from the Hub's ``RepoSibling`` records (name, size, blob_id, lfs)."""
    expected = {}
    for item in siblings:
        if item.lfs is not None:
            expected[item.rfilename] = Expected(sha256=item.lfs.sha256, size=item.lfs.size)
        else:
            expected[item.rfilename] = Expected(git_sha1=item.blob_id, size=item.size)
    return expected


def _cached_listing(snapshot: Path, commit: str) -> dict[str, Expected] | None:
    """The tree listing huggingface_hub cached for ``commit`` beside the snapshots (``trees/<commit>.json``,
    format 1: per path ``size``, ``blob_id`` and, for LFS files, ``lfs_sha256`` and ``lfs_size``), or None.

    Read here because ``get_cached_repo_tree`` drops the LFS hashes from what it returns.
    """
    path = snapshot.parent.parent / "trees" / f"{commit}.json"
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise FetchError(f"{path}: the cached tree listing cannot be read ({error}); delete it") from None
    if listing.get("format_version") != _TREE_FORMAT:
        return None
    expected = {}
    for rel, entry in listing["files"].items():
        if entry.get("lfs_sha256") is not None:
            expected[rel] = Expected(sha256=entry["lfs_sha256"], size=entry.get("lfs_size"))
        else:
            expected[rel] = Expected(git_sha1=entry["blob_id"], size=entry["size"])
    return expected


def _revision_metadata(
    repo_id: str, snapshot: Path, token: str | None, endpoint: str | None
) -> tuple[dict[str, Expected] | None, str]:
    """The revision's file metadata and where it came from; ``None`` when neither the Hub nor the cache's
    tree listing has it (the blob names are then all there is)."""
    import httpx2
    from huggingface_hub import HfApi, constants

    if not constants.is_offline_mode():
        try:
            info = HfApi(endpoint=endpoint, token=token).dataset_info(
                repo_id, revision=snapshot.name, files_metadata=True
            )
        except httpx2.HTTPError:  # the download just came from the cache; so does the metadata then
            pass
        else:
            return _from_siblings(info.siblings or []), "the Hub's file metadata"
    listing = _cached_listing(snapshot, snapshot.name)
    return (None, "the cache's blob names") if listing is None else (listing, "the cached tree listing")


def _blob_name_digest(snapshot_file: Path) -> Expected:
    """What the cache's blob name says of a snapshot file's content (nothing if it is not a cache link)."""
    name = Path(os.readlink(snapshot_file)).name if snapshot_file.is_symlink() else ""
    if _SHA256.fullmatch(name):
        return Expected(sha256=name)
    if _COMMIT.fullmatch(name):
        return Expected(git_sha1=name)
    return Expected()


def _copy_verified(source: Path, target: Path, checks: Mapping[str, Expected], rel: str) -> int:
    """Copy ``source`` to ``target`` atomically, hashing the bytes written; raise FetchError (target
    untouched) unless they match every entry of ``checks`` (what says so -> what it says)."""
    size = source.stat().st_size

    def write(tmp: Path) -> None:
        sha256 = hashlib.sha256()
        git_sha1 = hashlib.sha1(f"blob {size}\0".encode())  # git's object id of a blob
        with source.open("rb") as reader, tmp.open("wb") as writer:
            while chunk := reader.read(_CHUNK):
                sha256.update(chunk)
                git_sha1.update(chunk)
                writer.write(chunk)
        got = {"sha256": sha256.hexdigest(), "git_sha1": git_sha1.hexdigest(), "size": size}
        for by, expected in checks.items():
            for field in ("sha256", "git_sha1", "size"):
                want = getattr(expected, field)
                if want is not None and want != got[field]:
                    raise FetchError(
                        f"{rel}: {field} of the cached file {source.resolve()} is {got[field]}, but {by} "
                        f"says {want}: the cache is corrupt or the download was cut short. Delete that blob "
                        "and fetch again"
                    )

    atomic_write(target, write)
    return size


def _check_out(out: Path, wanted: set[str]) -> None:
    """Refuse an ``out`` holding files that are not part of the revision (they would enter ``dvc add``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FetchError(f"--out {out} exists and is not a folder")
    held = (p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
    extra = sorted(rel for rel in held if rel not in wanted)
    if extra:
        raise FetchError(
            f"--out {out} holds {len(extra)} file(s) that are not part of this revision, e.g. {extra[:3]}; "
            "they would be versioned with it. Empty the folder or choose another --out"
        )


def fetch_dataset(
    out: Path,
    revision: str,
    *,
    repo_id: str = NATIX_REPO,
    allow_moving_revision: bool = False,
    cache_dir: Path | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> FetchResult:
    """Fetch the parquet files of ``repo_id`` at ``revision`` into ``out``, each verified (module docstring).

    Raises:
        FetchError: a moving revision without ``allow_moving_revision``; the Hub unreachable and the cache
            without the revision (the message names HF_TOKEN, the revision and the network); a file whose
            bytes do not match the metadata; files missing from the snapshot; ``out`` holding other files.
    """
    from huggingface_hub import constants

    check_revision(revision, allow_moving_revision)
    cache = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    snapshot = _download(repo_id, revision, cache, token, endpoint)
    commit = snapshot.name
    metadata, checked_against = _revision_metadata(repo_id, snapshot, token, endpoint)
    present = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if not p.is_dir())
    present = [rel for rel in present if any(fnmatch(rel, pattern) for pattern in DATA_PATTERNS)]
    if metadata is not None:
        listed = sorted(rel for rel in metadata if any(fnmatch(rel, pattern) for pattern in DATA_PATTERNS))
        missing = sorted(set(listed) - set(present))
        if missing or set(present) - set(listed):
            raise FetchError(
                f"the cached snapshot {snapshot} does not match {checked_against} of {repo_id}@{commit}: "
                f"missing {missing[:3]}, not listed {sorted(set(present) - set(listed))[:3]}; fetch again"
            )
    if not present:
        raise FetchError(f"{repo_id}@{commit} holds no file matching {list(DATA_PATTERNS)}")
    _check_out(out, set(present))
    n_bytes = 0
    for rel in present:
        checks = {"the cache's blob name": _blob_name_digest(snapshot / rel)}
        if metadata is not None:
            checks[checked_against] = metadata[rel]
        n_bytes += _copy_verified(snapshot / rel, out / rel, checks, rel)
    return FetchResult(repo_id, commit, out, tuple(present), n_bytes, checked_against)


def dvc_add_command(out: Path, commit: str, root: Path | None = None) -> str:
    """The commands that version ``out`` from ``root`` (default: the working folder): ``dvc add`` of the
    folder DVC already tracks around it (a ``<folder>.dvc`` beside an enclosing folder, e.g. ``data.dvc``;
    DVC refuses to track a folder inside a tracked one), else of ``out`` itself; then the git commit."""
    root = (Path.cwd() if root is None else root).resolve()
    absolute = (root / out).resolve()
    inside = [
        folder for folder in (absolute, *absolute.parents) if folder.is_relative_to(root) and folder != root
    ]
    tracked = next((f for f in inside if f.with_name(f.name + ".dvc").is_file()), absolute)
    shown = Path(os.path.relpath(tracked, root))
    ignore = shown.parent / ".gitignore"
    return (
        f"dvc add {shown} && git add {shown}.dvc {ignore} && "
        f'git commit -m "data: NATIX roadwork @ {commit[:12]}"'
    )
