"""Ingest's first half: find every input under ``data_dir`` (or under each source's folder) and check the
layout, ``metadata.csv`` and the parquet schemas, before anything is decoded.

The accepted layouts and the quarantine rules are described in :mod:`roadwork.data.ingest`; what is found
here is decoded by :mod:`roadwork.data.ingest_decode`.
"""

from __future__ import annotations

import csv
import errno
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from roadwork.data.sources import INGESTED_ROLES, Source

CLASS_FOLDERS: dict[str, int] = {"roadwork": 1, "1": 1, "no_roadwork": 0, "0": 0}
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
METADATA_FILE = "metadata.csv"
PARQUET_COLUMNS: tuple[str, ...] = ("image", "label", "scene_description")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "sha256", "size_bytes", "width", "height", "label", "source", "working_path"
)  # fmt: skip
"""The manifest's own columns; ``metadata.csv`` and parquet metadata columns may not reuse these names."""

LAYOUTS_HELP = (
    "expected class folders roadwork/ or 1/ (label 1) and no_roadwork/ or 0/ (label 0) with images inside, "
    "and/or NATIX parquet files (*.parquet with columns image, label, scene_description)"
)
_DATA_SIDECARS = frozenset({METADATA_FILE, "near_duplicates.csv"})


@dataclass(frozen=True)
class Quarantined:
    """An input that is not kept: ``reason`` is a code of ``roadwork.data.ingest.QUARANTINE_REASONS``."""

    path: str
    reason: str
    detail: str


@dataclass
class Scan:
    """What walking ``data_dir`` found, before anything is decoded."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    parquets: list[tuple[str, Path]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


def _is_versioning_file(name: str) -> bool:
    """Root files that belong to no data set: READMEs, .gitignore, *.dvc."""
    return name == ".gitignore" or name.upper().startswith("README") or name.lower().endswith(".dvc")


def _is_root_sidecar(name: str) -> bool:
    return name in _DATA_SIDECARS or _is_versioning_file(name)


def _scan(data_dir: Path, root_real: Path) -> Scan:
    """Walk ``data_dir`` in sorted order, classifying every entry; symlinks are checked, not trusted."""
    scan = Scan()

    def visit(directory: Path, rel_parts: tuple[str, ...], ancestry: tuple[Path, ...]) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name)
        except OSError as error:
            if not rel_parts:
                raise ValueError(
                    f"data_dir {data_dir} cannot be listed ({error.strerror or error}); make it readable "
                    "(chmod u+rx)"
                ) from None
            rel = "/".join(rel_parts)
            detail = f"folder cannot be listed ({error.strerror or error}); its files are not counted"
            scan.quarantined.append(Quarantined(rel, "unreadable_folder", detail))
            return
        for entry in entries:
            rel_entry = (*rel_parts, entry.name)
            if not rel_parts and _is_root_sidecar(entry.name):
                continue
            try:
                subfolder = _classify(scan, entry, "/".join(rel_entry), root_real, ancestry)
            except OSError as error:  # e.g. a folder that lists its names but cannot be entered
                detail = f"cannot be examined: {error.strerror or error}"
                scan.quarantined.append(Quarantined("/".join(rel_entry), "unreadable_file", detail))
                continue
            if subfolder is not None:
                visit(Path(entry.path), rel_entry, (*ancestry, subfolder))

    visit(data_dir, (), (root_real,))
    return scan


def _classify(
    scan: Scan, entry: os.DirEntry[str], rel: str, root_real: Path, ancestry: tuple[Path, ...]
) -> Path | None:
    """Record ``entry`` in ``scan``; return its real path when it is a folder to walk into."""
    path = Path(entry.path)
    if entry.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(root_real):
            detail = "symlink resolves outside data_dir; not followed"
            scan.quarantined.append(Quarantined(rel, "symlink_outside_data", detail))
            return None
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                detail = "symlink loop (too many levels of symbolic links)"
                scan.quarantined.append(Quarantined(rel, "symlink_cycle", detail))
            elif error.errno in (errno.ENOENT, errno.ENOTDIR):
                scan.quarantined.append(Quarantined(rel, "unreadable_file", "dangling symlink"))
            else:
                raise
            return None
        if target.is_dir():
            if target in ancestry:
                detail = "folder symlink points to its own ancestor"
                scan.quarantined.append(Quarantined(rel, "symlink_cycle", detail))
                return None
            return target
    elif entry.is_dir(follow_symlinks=False):
        return Path(os.path.realpath(path))
    if not path.is_file():
        # FIFOs, sockets and devices: never opened (reading a FIFO blocks until a writer comes)
        scan.quarantined.append(Quarantined(rel, "unreadable_file", "not a regular file"))
    elif entry.name.lower().endswith(".parquet"):
        scan.parquets.append((rel, path))
    else:
        scan.files.append((rel, path))
    return None


def _read_metadata(data_dir: Path, root_real: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``metadata.csv`` as (columns other than ``path``, {path: {column: value}}); empty when absent."""
    path = data_dir / METADATA_FILE
    if not path.exists() and not path.is_symlink():
        return [], {}
    if not Path(os.path.realpath(path)).is_relative_to(root_real):
        raise ValueError(f"{path}: is a symlink that resolves outside data_dir; refusing to read it")
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error}); make it readable") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: is empty; expected a header row with a 'path' column")
        if "path" not in header:
            raise ValueError(
                f"{path}: has no 'path' column (found {header}); add a 'path' column holding each "
                "image's POSIX path relative to data_dir"
            )
        repeated = sorted(name for name, n in Counter(header).items() if n > 1)
        if repeated:
            raise ValueError(f"{path}: column name(s) {repeated} appear more than once; make them unique")
        columns = [c for c in header if c != "path"]
        clashes = sorted(set(columns) & set(MANIFEST_COLUMNS))
        if clashes:
            raise ValueError(f"{path}: column(s) {clashes} clash with manifest columns; rename them")
        rows: dict[str, dict[str, str]] = {}
        for fields in reader:
            if not fields:  # a blank line holds no record
                continue
            if len(fields) != len(header):
                raise ValueError(
                    f"{path}, line {reader.line_num}: {len(fields)} fields but the header has {len(header)}; "
                    "quote values that contain commas"
                )
            record = dict(zip(header, fields, strict=True))
            key = record.pop("path")
            if key in rows:
                raise ValueError(f"{path}: duplicate path key {key!r}; each path may appear once")
            rows[key] = record
    return columns, rows


def _check_parquet_schema(rel: str, schema: pa.Schema) -> list[str]:
    """Validate a parquet schema; return its metadata columns (all but ``image`` and ``label``)."""
    names = schema.names
    for column in PARQUET_COLUMNS:
        if column not in names:
            raise ValueError(
                f"{rel}: parquet file lacks column '{column}' (has {names}); a NATIX parquet needs columns "
                f"{list(PARQUET_COLUMNS)}: add it, or move the file out of data_dir"
            )
    image_type = schema.field("image").type
    if pa.types.is_struct(image_type):
        index = image_type.get_field_index("bytes")
        if index < 0 or not _is_binary(image_type.field(index).type):
            raise ValueError(
                f"{rel}: column 'image' is a struct {image_type} without a binary 'bytes' field; expected "
                "raw image bytes or the Hugging Face image struct {bytes: binary, path: string}"
            )
    elif not _is_binary(image_type):
        raise ValueError(
            f"{rel}: column 'image' has type {image_type}; expected binary image bytes or the Hugging Face "
            "image struct {bytes: binary, path: string}"
        )
    label_type = schema.field("label").type
    if not pa.types.is_integer(label_type):
        raise ValueError(
            f"{rel}: column 'label' has type {label_type}; expected integers 0 (none) / 1 (roadwork)"
        )
    text_type = schema.field("scene_description").type
    if not (
        pa.types.is_string(text_type)
        or pa.types.is_large_string(text_type)
        or pa.types.is_string_view(text_type)
        or pa.types.is_null(text_type)
    ):
        raise ValueError(f"{rel}: column 'scene_description' has type {text_type}; expected strings")
    metadata = [name for name in names if name not in ("image", "label")]
    clashes = sorted(set(metadata) & set(MANIFEST_COLUMNS))
    if clashes:
        raise ValueError(f"{rel}: column(s) {clashes} clash with manifest columns; rename or drop them")
    return metadata


def _is_binary(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_binary_view(data_type)
    )


@dataclass(frozen=True)
class Root:
    """One folder ingest reads (``data_dir`` itself, or a source's folder in it), scanned and checked."""

    source: Source | None
    scan: Scan
    metadata_columns: list[str]
    metadata: dict[str, dict[str, str]]
    parquet_columns: dict[str, list[str]]
    n_parquet_rows: int

    @property
    def n_inputs(self) -> int:
        """Inputs found: quarantined entries, files and parquet rows (each one kept or quarantined)."""
        return len(self.scan.quarantined) + len(self.scan.files) + self.n_parquet_rows


def read_root(data_dir: Path, source: Source | None) -> Root:
    """Scan ``data_dir`` (``source`` None) or ``source``'s folder in it and check its layout, metadata and
    parquet schemas; a hard-negative source's positives stop ingest here, before anything is decoded."""
    folder = data_dir if source is None else _source_folder(data_dir, source)
    what = f"data_dir {data_dir}" if source is None else f"source {source.name!r} ({folder})"
    root_real = folder.resolve()
    scan = _scan(folder, root_real)
    negatives_only = source is not None and source.role == "hard_negative"
    if negatives_only:
        if not scan.files and not scan.parquets:
            raise ValueError(f"{what} holds no file; a hard_negative source holds images of label 0")
    elif not any((folder / name).is_dir() for name in CLASS_FOLDERS) and not scan.parquets:
        raise ValueError(f"{what} holds no class folder and no parquet file; {LAYOUTS_HELP}")

    metadata_columns, metadata = _read_metadata(folder, root_real)
    unmatched = sorted(set(metadata) - {rel for rel, _ in scan.files})
    if unmatched:
        raise ValueError(
            f"{folder / METADATA_FILE}: row(s) for path(s) that name no file under "
            f"{'data_dir' if source is None else what}: {unmatched[:5]}; keys must be POSIX paths relative "
            "to that folder of ImageFolder files (e.g. roadwork/a.jpg)"
        )
    parquet_columns: dict[str, list[str]] = {}
    n_parquet_rows = 0
    for rel, path in scan.parquets:
        shown = rel if source is None else f"{source.name}/{rel}"  # the identity its rows get
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise ValueError(
                f"{shown}: cannot be read as parquet ({error}); repair or remove the file"
            ) from None
        with parquet:
            parquet_columns[rel] = _check_parquet_schema(shown, parquet.schema_arrow)
            n_parquet_rows += parquet.metadata.num_rows
    if negatives_only:
        _refuse_positives(what, scan)
    return Root(source, scan, metadata_columns, metadata, parquet_columns, n_parquet_rows)


def _source_folder(data_dir: Path, source: Source) -> Path:
    if source.role not in INGESTED_ROLES:
        raise ValueError(
            f"source {source.name!r} has role {source.role!r}; ingest reads roles {INGESTED_ROLES} "
            "(unlabeled sources feed adapt only)"
        )
    folder = data_dir / source.dir
    if not folder.is_dir():
        raise ValueError(
            f"source {source.name!r}: folder {folder} does not exist or is not a folder; data.sources dirs "
            f"are relative to data_dir {data_dir}"
        )
    return folder


def _refuse_positives(what: str, scan: Scan) -> None:
    """A hard-negative source holds negatives only: a file in a positive class folder or a parquet row
    labelled 1 is a contradiction its owner must resolve (relabelling it would hide it)."""
    fix = "move it to a labelled source or out of this one (a hard_negative source holds label 0 only)"
    for rel, _ in scan.files:
        top, _, rest = rel.partition("/")
        if rest and CLASS_FOLDERS.get(top) == 1:
            raise ValueError(f"{what}: {rel} lies in the positive class folder {top}/; {fix}")
    for rel, path in scan.parquets:
        labels = pq.read_table(path, columns=["label"]).column("label").to_numpy(zero_copy_only=False)
        positive = [i for i, label in enumerate(labels.tolist()) if label == 1]
        if positive:
            raise ValueError(f"{what}: {rel} row {positive[0]} is labelled 1 (roadwork); {fix}")


def unread(data_dir: Path, sources: Sequence[Source]) -> tuple[str, ...]:
    """Entries of ``data_dir`` (POSIX paths relative to it) that lie in no source's folder and hold none."""
    folders = {Path(s.dir).as_posix() for s in sources}
    unread: list[str] = []

    def visit(directory: Path, rel: str) -> None:
        for entry in sorted(directory.iterdir()):
            path = f"{rel}{entry.name}"
            # data_dir's own metadata.csv is reported: with sources, each source's folder has its own
            if path in folders or (not rel and _is_versioning_file(entry.name)):
                continue
            if entry.is_dir() and any(f.startswith(path + "/") for f in folders):
                visit(entry, path + "/")
            else:
                unread.append(path)

    if sources:
        visit(data_dir, "")
    return tuple(unread)
