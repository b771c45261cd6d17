"""Ingest: decode every input once, verify it, quarantine bad ones, write the manifest and working copies.

Input layouts (both may be present in one ``data_dir``; their inputs are simply pooled):

* **ImageFolder**: top-level class folders ``roadwork/`` or ``1/`` (label 1) and ``no_roadwork/`` or ``0/``
  (label 0), nested subfolders allowed. Files with extensions in :data:`IMAGE_EXTENSIONS` (any case) are
  images; other files there are quarantined ``unsupported_extension``. Files in any other top-level folder,
  and image files lying directly in ``data_dir``, are quarantined ``unknown_label``. An optional
  ``data_dir/metadata.csv`` keyed by ``path`` (POSIX path relative to ``data_dir``) adds its other columns
  to the manifest rows of those files.
* **Parquet** (the NATIX Hugging Face export): every ``*.parquet`` file anywhere under ``data_dir`` (any
  case, also inside class folders), with columns ``image`` (binary, or the Hugging Face struct
  ``{bytes, path}``), ``label`` (integer: 0 none, 1 roadwork) and ``scene_description`` (string). Any
  further columns become metadata. A row's identity is ``<parquet path relative to data_dir>#<row index>``
  (0-based; paths sort as strings, so ``#10`` precedes ``#2``).

Root-level sidecars are not inputs: ``metadata.csv``, ``near_duplicates.csv``, ``README*``, ``.gitignore``
and ``*.dvc``. Everything else found is an input and ends up either kept (``manifest.csv``) or quarantined
(``quarantine.csv``, with a reason code from :data:`QUARANTINE_REASONS`), never silently skipped.

Symlinks are resolved: one that resolves outside ``data_dir`` is never followed (``symlink_outside_data``),
a dangling one is ``unreadable_file``, a folder link back into its own ancestry or a chain of links that
never ends is ``symlink_cycle``; links staying inside ``data_dir`` are followed, so their files appear under
the link's path as well. FIFOs, sockets and devices are ``unreadable_file`` and never opened; a sub-folder
that cannot be listed is one input, ``unreadable_folder`` (its files cannot be counted).

Labels follow one rule: an input whose label is not 0 or 1 (a parquet label of 2, -1 or null; a file outside
the class folders) is quarantined ``unknown_label`` and ingest goes on. What stops ingest is a problem of a
whole file: a parquet file that cannot be opened, lacks a column or has a column of the wrong type (a
``label`` column that is not integer). A parquet row group whose pages cannot be decoded quarantines its
rows as ``corrupt_row_group`` (the detail names the file and the row group); the other row groups are used.

Checks run in a fixed order and the first failure is the reason recorded: symlink, location/label,
extension, then (parquet) label value and description consistency, then decoding.

**Several sources** (``sources``, :mod:`roadwork.data.sources`): each source is a folder inside
``data_dir`` read by the rules above, its inputs' paths prefixed ``<name>/`` and its name in the
manifest's ``source`` column (without sources that column holds the layout: ``imagefolder`` or
``parquet``). A ``hard_negative`` source holds negatives only: every image in it is label 0 wherever it
lies (a flat folder is fine), and a file under a positive class folder (``roadwork/``, ``1/``) or a parquet
row labelled 1 stops ingest before anything is decoded, naming it. Whatever in ``data_dir`` lies outside
every source is not read and is listed in :attr:`IngestResult.unread`.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import multiprocessing
import os
import re
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from roadwork.atomic import atomic_write, atomic_write_bytes
from roadwork.data.images import (
    REJECTION_REASONS,
    ImageRejected,
    check_max_pixels,
    decode_image,
    downscale_short_side,
    sha256_file,
)
from roadwork.data.sources import INGESTED_ROLES, Source, check_sources
from roadwork.progress import progress_bar

CLASS_FOLDERS: dict[str, int] = {"roadwork": 1, "1": 1, "no_roadwork": 0, "0": 0}
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
METADATA_FILE = "metadata.csv"
PARQUET_COLUMNS: tuple[str, ...] = ("image", "label", "scene_description")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "sha256",
    "size_bytes",
    "width",
    "height",
    "label",
    "source",
    "working_path",
)
QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "reason", "detail")
QUARANTINE_REASONS: tuple[str, ...] = (
    *REJECTION_REASONS,
    "unknown_label",
    "unsupported_extension",
    "description_contradicts_label",
    "symlink_outside_data",
    "symlink_cycle",
    "unreadable_file",
    "unreadable_folder",
    "corrupt_row_group",
)
IMAGES_DIR = "images"

_LAYOUTS_HELP = (
    "expected class folders roadwork/ or 1/ (label 1) and no_roadwork/ or 0/ (label 0) with images inside, "
    "and/or NATIX parquet files (*.parquet with columns image, label, scene_description)"
)
_DATA_SIDECARS = frozenset({METADATA_FILE, "near_duplicates.csv"})
_PARQUET_BATCH_ROWS = 16  # ~16 full-size photos in memory per batch
_IN_FLIGHT_PER_WORKER = 4  # bounds memory held by queued parquet bytes
_OUR_IMAGE_FILE = re.compile(r"^(?:[0-9a-f]{64}\.jpg|\.[0-9a-f]{64}\.jpg\..+\.tmp)$")


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` did.

    ``n_inputs == n_kept + n_quarantined``. ``reason_counts`` has every code of :data:`QUARANTINE_REASONS`
    (zeros included); ``label_counts`` counts *kept* inputs per label, ``{0: ..., 1: ...}``;
    ``source_counts`` kept inputs per source name and ``unread`` the paths in ``data_dir`` outside every
    source (both empty without sources).
    """

    n_inputs: int
    n_kept: int
    n_quarantined: int
    reason_counts: dict[str, int]
    label_counts: dict[int, int]
    manifest_path: Path
    quarantine_path: Path
    source_counts: dict[str, int] = field(default_factory=dict)
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Settings:
    images_dir: Path
    working_min_side: int
    jpeg_quality: int
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class _Task:
    """One input to decode: a file on disk (``file``) or embedded bytes (``data``)."""

    path: str
    label: int
    source: str
    metadata: tuple[tuple[str, str], ...]
    file: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class _Kept:
    path: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    label: int
    source: str
    working_path: str
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class _Quarantined:
    path: str
    reason: str
    detail: str


@dataclass
class _Scan:
    """What walking ``data_dir`` found, before anything is decoded."""

    files: list[tuple[str, Path]] = field(default_factory=list)
    parquets: list[tuple[str, Path]] = field(default_factory=list)
    quarantined: list[_Quarantined] = field(default_factory=list)


def _is_versioning_file(name: str) -> bool:
    """Root files that belong to no data set: READMEs, .gitignore, *.dvc."""
    return name == ".gitignore" or name.upper().startswith("README") or name.lower().endswith(".dvc")


def _is_root_sidecar(name: str) -> bool:
    return name in _DATA_SIDECARS or _is_versioning_file(name)


def _scan(data_dir: Path, root_real: Path) -> _Scan:
    """Walk ``data_dir`` in sorted order, classifying every entry; symlinks are checked, not trusted."""
    scan = _Scan()

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
            scan.quarantined.append(_Quarantined(rel, "unreadable_folder", detail))
            return
        for entry in entries:
            rel_entry = (*rel_parts, entry.name)
            if not rel_parts and _is_root_sidecar(entry.name):
                continue
            try:
                subfolder = _classify(scan, entry, "/".join(rel_entry), root_real, ancestry)
            except OSError as error:  # e.g. a folder that lists its names but cannot be entered
                detail = f"cannot be examined: {error.strerror or error}"
                scan.quarantined.append(_Quarantined("/".join(rel_entry), "unreadable_file", detail))
                continue
            if subfolder is not None:
                visit(Path(entry.path), rel_entry, (*ancestry, subfolder))

    visit(data_dir, (), (root_real,))
    return scan


def _classify(
    scan: _Scan, entry: os.DirEntry[str], rel: str, root_real: Path, ancestry: tuple[Path, ...]
) -> Path | None:
    """Record ``entry`` in ``scan``; return its real path when it is a folder to walk into."""
    path = Path(entry.path)
    if entry.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(root_real):
            detail = "symlink resolves outside data_dir; not followed"
            scan.quarantined.append(_Quarantined(rel, "symlink_outside_data", detail))
            return None
        try:
            path.stat()
        except OSError as error:
            if error.errno == errno.ELOOP:
                detail = "symlink loop (too many levels of symbolic links)"
                scan.quarantined.append(_Quarantined(rel, "symlink_cycle", detail))
            elif error.errno in (errno.ENOENT, errno.ENOTDIR):
                scan.quarantined.append(_Quarantined(rel, "unreadable_file", "dangling symlink"))
            else:
                raise
            return None
        if target.is_dir():
            if target in ancestry:
                detail = "folder symlink points to its own ancestor"
                scan.quarantined.append(_Quarantined(rel, "symlink_cycle", detail))
                return None
            return target
    elif entry.is_dir(follow_symlinks=False):
        return Path(os.path.realpath(path))
    if not path.is_file():
        # FIFOs, sockets and devices: never opened (reading a FIFO blocks until a writer comes)
        scan.quarantined.append(_Quarantined(rel, "unreadable_file", "not a regular file"))
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


def _contradiction(label: int, description: str | None) -> str | None:
    """Why ``description`` contradicts ``label``, or None when they agree.

    Follows the NATIX validator, which skips such rows when sampling: natixnetwork/streetvision-subnet,
    natix/validator/cache/image_cache.py, ``ImageCache.sample``: a row is unusable when
    ``(scene_description and label == 0) or (not scene_description and label == 1)``. NATIX writes a scene
    description only for roadwork scenes, so any non-empty text on a negative, or none on a positive, is a
    labelling conflict. As there, emptiness is Python truthiness: null and "" are empty, whitespace is not.
    """
    if label == 0 and description:
        return (
            "label 0 (no roadwork) but scene_description is non-empty (NATIX describes roadwork scenes only)"
        )
    if label == 1 and not description:
        return "label 1 (roadwork) but scene_description is empty (NATIX describes every roadwork scene)"
    return None


def _parquet_items(
    rel: str, path: Path, metadata_columns: list[str], source: str = "parquet"
) -> Iterator[_Task | _Quarantined]:
    """Rows of one parquet file, row group by row group in batches of :data:`_PARQUET_BATCH_ROWS` (memory
    stays bounded). A row group that cannot be decoded (a corrupt page; the footer is intact, or the file
    would not have opened) quarantines its remaining rows, and the next row group is read. ``rel`` is the
    file's identity (source prefix included), ``source`` the manifest's ``source`` value."""
    with pq.ParquetFile(path) as parquet:
        row = 0
        for group in range(parquet.num_row_groups):
            end = row + parquet.metadata.row_group(group).num_rows
            batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[group])
            while True:
                try:
                    batch = next(batches, None)
                except (OSError, pa.ArrowException) as error:
                    detail = (
                        f"{rel}: row group {group} (rows {row}-{end - 1}) cannot be decoded ({error}); "
                        "the file's other row groups are used"
                    )
                    yield from (
                        _Quarantined(f"{rel}#{r}", "corrupt_row_group", detail) for r in range(row, end)
                    )
                    break
                if batch is None:
                    break
                yield from _batch_rows(rel, batch, row, metadata_columns, source)
                row += batch.num_rows
            row = end


def _batch_rows(
    rel: str, batch: pa.RecordBatch, first_row: int, metadata_columns: list[str], source: str
) -> Iterator[_Task | _Quarantined]:
    image_column = batch.column("image")
    if pa.types.is_struct(image_column.type):
        image_column = image_column.field("bytes")
    images = image_column.to_pylist()
    labels = batch.column("label").to_pylist()
    extra = {name: batch.column(name).to_pylist() for name in metadata_columns}
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        key = f"{rel}#{first_row + i}"
        if label not in (0, 1):
            yield _Quarantined(key, "unknown_label", f"label is {label!r}; expected 0 (none) or 1 (roadwork)")
            continue
        description = extra["scene_description"][i]
        conflict = _contradiction(label, description)
        if conflict is not None:
            yield _Quarantined(key, "description_contradicts_label", conflict)
            continue
        if not data:
            yield _Quarantined(key, "empty_file", "image cell holds no bytes (null or empty)")
            continue
        values = tuple(
            (name, "" if extra[name][i] is None else str(extra[name][i])) for name in metadata_columns
        )
        yield _Task(path=key, label=label, source=source, metadata=values, data=data)


def _file_item(
    rel: str, path: Path, metadata: Mapping[str, Mapping[str, str]], source: Source | None = None
) -> _Task | _Quarantined:
    """The input at ``rel`` (relative to its source's folder, or to data_dir without sources)."""
    key = rel if source is None else f"{source.name}/{rel}"
    top, _, rest = rel.partition("/")
    accepted = ", ".join(f"{name}/" for name in CLASS_FOLDERS)
    # a hard-negative source labels every file 0 (its positives were refused before anything was decoded)
    negatives_only = source is not None and source.role == "hard_negative"
    if not rest and not negatives_only:
        where = "data_dir" if source is None else f"source {source.name!r}'s folder"
        return _Quarantined(
            key, "unknown_label", f"file lies directly in {where}, outside any class folder ({accepted})"
        )
    if top not in CLASS_FOLDERS and not negatives_only:
        return _Quarantined(
            key, "unknown_label", f"folder '{top}/' is not a class folder; accepted: {accepted}"
        )
    if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return _Quarantined(
            key, "unsupported_extension", f"extension not one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    values = tuple(metadata.get(rel, {}).items())
    label = 0 if negatives_only else CLASS_FOLDERS[top]
    name = "imagefolder" if source is None else source.name
    return _Task(path=key, label=label, source=name, metadata=values, file=path)


def _process(task: _Task, settings: _Settings) -> _Kept | _Quarantined:
    """Hash, decode (once) and verify one input; write its working copy. Runs in worker processes."""
    try:
        source: Path | bytes
        if task.data is not None:
            source, size_bytes, sha256 = task.data, len(task.data), hashlib.sha256(task.data).hexdigest()
        elif task.file is not None:
            source, size_bytes, sha256 = task.file, task.file.stat().st_size, sha256_file(task.file)
        else:
            raise ValueError(f"task {task.path!r} has neither a file nor bytes")
        decoded = decode_image(
            source,
            max_pixels=settings.max_pixels,
            min_side=settings.min_side,
            # the smallest DCT scale (1/2, 1/4, 1/8) still >= the working copy's side: a 4032 x 3024 photo
            # decodes at 1008 x 756 and Lanczos shrinks it by < 2x. Decode + resize take half the time they
            # take from 1/2 scale, and the copy stays within 0.4 grey levels of a full decode + resize
            # (BENCHMARKS.md, bench/ingest_photos.py)
            draft_size=settings.working_min_side,
        )
    except ImageRejected as rejected:
        return _Quarantined(task.path, rejected.reason_code, rejected.message)
    except OSError as error:
        return _Quarantined(task.path, "unreadable_file", f"cannot read: {error.strerror or error}")
    working = downscale_short_side(decoded.image, settings.working_min_side)
    name = f"{sha256}.jpg"
    # Pillow writes EXIF/ICC only when passed to save(), so the copy carries neither.
    atomic_write(
        settings.images_dir / name, lambda p: working.save(p, format="JPEG", quality=settings.jpeg_quality)
    )
    return _Kept(
        path=task.path,
        sha256=sha256,
        size_bytes=size_bytes,
        width=decoded.width,
        height=decoded.height,
        label=task.label,
        source=task.source,
        working_path=f"{IMAGES_DIR}/{name}",
        metadata=task.metadata,
    )


def _execute(
    items: Iterator[_Task | _Quarantined], settings: _Settings, workers: int
) -> Iterator[_Kept | _Quarantined]:
    """Process ``items`` in order, in this process or a pool of ``workers`` (results keep input order)."""
    if workers == 1:
        for item in items:
            yield item if isinstance(item, _Quarantined) else _process(item, settings)
        return
    # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork would copy half-locked.
    context = multiprocessing.get_context("spawn")
    window = workers * _IN_FLIGHT_PER_WORKER
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[_Kept | _Quarantined] | _Quarantined] = deque()
        for item in items:
            pending.append(item if isinstance(item, _Quarantined) else pool.submit(_process, item, settings))
            while len(pending) > window:
                head = pending.popleft()
                yield head if isinstance(head, _Quarantined) else head.result()
        while pending:
            head = pending.popleft()
            yield head if isinstance(head, _Quarantined) else head.result()


def _check_int(value: object, name: str, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _write_csv(columns: Sequence[str], rows: Iterable[Sequence[object]], target: Path) -> None:
    """Write a CSV (header ``columns``, then ``rows``; ``\\n`` line ends, minimal quoting) atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    payload = text.getvalue().encode("utf-8")
    atomic_write_bytes(target, payload)


def _remove_stale_images(images_dir: Path, keep: set[str]) -> None:
    """Delete working copies (and temp files of crashed runs) that this run did not produce.

    Only names this module writes are touched, so anything else a user put there stays.
    """
    for entry in images_dir.iterdir():
        if _OUR_IMAGE_FILE.match(entry.name) and entry.name not in keep:
            entry.unlink()


@dataclass(frozen=True)
class _Root:
    """One folder ingest reads (``data_dir`` itself, or a source's folder in it), scanned and checked."""

    source: Source | None
    scan: _Scan
    metadata_columns: list[str]
    metadata: dict[str, dict[str, str]]
    parquet_columns: dict[str, list[str]]
    n_parquet_rows: int


def _read_root(data_dir: Path, source: Source | None) -> _Root:
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
        raise ValueError(f"{what} holds no class folder and no parquet file; {_LAYOUTS_HELP}")

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
    return _Root(source, scan, metadata_columns, metadata, parquet_columns, n_parquet_rows)


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


def _refuse_positives(what: str, scan: _Scan) -> None:
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


def _unread(data_dir: Path, sources: Sequence[Source]) -> tuple[str, ...]:
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


def ingest(
    data_dir: Path,
    out_dir: Path,
    *,
    working_min_side: int = 512,
    jpeg_quality: int = 95,
    max_pixels: int = 100_000_000,
    min_side: int = 16,
    workers: int = 1,
    show_progress: bool = True,
    sources: Sequence[Source] = (),
) -> IngestResult:
    """Decode and verify every input under ``data_dir``; write working copies, manifest and quarantine list.

    See the module docstring for the accepted layouts. Every input is decoded exactly once (JPEGs in draft
    mode: at the smallest DCT scale whose shorter side is still at least ``working_min_side``) and ends in
    exactly one of the two outputs:

    * ``out_dir/images/<sha256>.jpg``: the working copy every validator render starts from, shrunk so its
      shorter side is ``working_min_side`` pixels (never enlarged: a smaller original keeps its size),
      JPEG ``jpeg_quality``, RGB, no EXIF/ICC; named by the SHA-256 of the *original bytes*, so
      byte-identical inputs share one file. Stale copies from earlier runs in that folder are removed.
    * ``out_dir/manifest.csv``: one row per kept input sorted by ``path``, columns :data:`MANIFEST_COLUMNS`
      (``width``/``height`` are the original pixel size after EXIF orientation; ``working_path`` is relative
      to ``out_dir``), then ``metadata.csv`` columns, then parquet metadata columns (``scene_description``
      first); a value an input lacks is empty.
    * ``out_dir/quarantine.csv``: ``path``, ``reason`` (a :data:`QUARANTINE_REASONS` code), ``detail``,
      sorted by ``path``.

    Files are written atomically (temp file, fsync, rename). Output bytes depend only on the inputs and the
    arguments, not on ``workers`` (a spawn-based process pool; results are ordered by path).

    Args:
        data_dir: folder holding the inputs.
        out_dir: output folder (created); must not lie inside ``data_dir``.
        working_min_side: shorter side of the working copies, pixels (>= 1). 512 is the smallest that never
            upsamples a validator crop (20 % of the area: sqrt(0.2) * 512 = 229 >= 224 pixels).
        jpeg_quality: JPEG quality of the working copies, 1..100.
        max_pixels: largest accepted declared width x height; larger inputs are quarantined
            ``too_many_pixels`` without being decoded.
        min_side: smallest accepted shorter side in pixels; smaller inputs are quarantined ``too_small``.
        workers: decoding processes (1 = in this process). Workers are *spawned*, so a script calling
            this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
        show_progress: a progress bar over inputs (where :mod:`roadwork.progress` allows one).
        sources: the :class:`~roadwork.data.sources.Source` folders inside ``data_dir`` to read instead of
            ``data_dir`` itself (see the module docstring); empty (default): ``data_dir`` is the one source.

    Raises:
        ValueError: ``data_dir`` (or a source's folder) is missing, not a folder, cannot be listed, or holds
            neither a class folder nor a parquet file (a hard-negative source: no file at all); a
            hard-negative source holds a positive; a source is invalid (:func:`~roadwork.data.sources.
            check_sources`); ``out_dir`` is inside ``data_dir``; ``metadata.csv`` is unreadable or
            malformed (no ``path`` column, duplicate key, a key naming no file, a column clashing with the
            manifest's); a parquet file cannot be opened, lacks a required column or has a wrong column
            type; or arguments are out of range. Bad rows and files never raise: they are quarantined.
        TypeError: an argument has the wrong type.
    """
    if not isinstance(data_dir, Path) or not isinstance(out_dir, Path):
        raise TypeError(
            "data_dir and out_dir must be pathlib.Path, got "
            f"{type(data_dir).__name__} and {type(out_dir).__name__}"
        )
    _check_int(working_min_side, "working_min_side", 1)
    _check_int(jpeg_quality, "jpeg_quality", 1, 100)
    check_max_pixels(max_pixels)
    _check_int(min_side, "min_side", 1)
    _check_int(workers, "workers", 1)
    if not isinstance(show_progress, bool):
        raise TypeError(f"show_progress must be a bool, got {type(show_progress).__name__}")
    if not data_dir.is_dir():
        raise ValueError(f"data_dir {data_dir} does not exist or is not a folder; {_LAYOUTS_HELP}")
    out_real = out_dir.resolve()
    if out_real.is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"out_dir {out_dir} lies inside data_dir {data_dir}; its outputs would become inputs of the next "
            "run. Choose an out_dir outside data_dir"
        )
    check_sources(sources)
    roots = [_read_root(data_dir, None)] if not sources else [_read_root(data_dir, s) for s in sources]
    n_inputs = sum(len(r.scan.quarantined) + len(r.scan.files) + r.n_parquet_rows for r in roots)

    def items() -> Iterator[_Task | _Quarantined]:
        for root in roots:
            prefix = "" if root.source is None else f"{root.source.name}/"
            name = "parquet" if root.source is None else root.source.name
            yield from (_Quarantined(prefix + q.path, q.reason, q.detail) for q in root.scan.quarantined)
            for rel, path in root.scan.files:
                yield _file_item(rel, path, root.metadata, root.source)
            for rel, path in root.scan.parquets:
                yield from _parquet_items(prefix + rel, path, root.parquet_columns[rel], name)

    images_dir = out_dir / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    settings = _Settings(images_dir, working_min_side, jpeg_quality, max_pixels, min_side)
    kept: list[_Kept] = []
    quarantined: list[_Quarantined] = []
    with progress_bar(total=n_inputs, desc="ingest", unit="img", show=show_progress) as progress:
        for outcome in _execute(items(), settings, workers):
            (quarantined if isinstance(outcome, _Quarantined) else kept).append(outcome)
            progress.update()

    if len(kept) + len(quarantined) != n_inputs:
        raise RuntimeError(
            f"ingest lost track of inputs: found {n_inputs}, accounted for {len(kept)} kept + "
            f"{len(quarantined)} quarantined (parquet row counts may disagree with their footers)"
        )
    paths = Counter(item.path for item in (*kept, *quarantined))
    collisions = sorted(p for p, n in paths.items() if n > 1)
    if collisions:
        raise ValueError(
            f"inputs share a path identity (file vs parquet row?): {collisions[:5]}; rename them"
        )

    extra_columns: list[str] = []
    for root in roots:
        for columns in (root.metadata_columns, *root.parquet_columns.values()):
            extra_columns += [c for c in columns if c not in extra_columns]
    kept.sort(key=lambda item: item.path)
    quarantined.sort(key=lambda item: item.path)
    manifest_rows = []
    for item in kept:
        metadata_values = dict(item.metadata)
        manifest_rows.append(
            [getattr(item, c) for c in MANIFEST_COLUMNS] + [metadata_values.get(c, "") for c in extra_columns]
        )
    quarantine_rows = [[getattr(item, c) for c in QUARANTINE_COLUMNS] for item in quarantined]
    manifest_path = out_dir / "manifest.csv"
    quarantine_path = out_dir / "quarantine.csv"
    _write_csv([*MANIFEST_COLUMNS, *extra_columns], manifest_rows, manifest_path)
    _write_csv(QUARANTINE_COLUMNS, quarantine_rows, quarantine_path)
    # Only after the new manifest is in place: a crash before this leaves extra files, never missing ones.
    _remove_stale_images(images_dir, {Path(item.working_path).name for item in kept})

    reasons = Counter(item.reason for item in quarantined)
    unknown = sorted(set(reasons) - set(QUARANTINE_REASONS))
    if unknown:
        raise RuntimeError(f"quarantine reasons outside QUARANTINE_REASONS: {unknown}")
    labels = Counter(item.label for item in kept)
    by_source = Counter(item.source for item in kept)
    return IngestResult(
        n_inputs=n_inputs,
        n_kept=len(kept),
        n_quarantined=len(quarantined),
        reason_counts={reason: reasons.get(reason, 0) for reason in QUARANTINE_REASONS},
        label_counts={0: labels.get(0, 0), 1: labels.get(1, 0)},
        manifest_path=manifest_path,
        quarantine_path=quarantine_path,
        source_counts={s.name: by_source.get(s.name, 0) for s in sources},
        unread=_unread(data_dir, sources),
    )
