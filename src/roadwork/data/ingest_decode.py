"""Ingest's second half: every input found becomes a task; each task is hashed, decoded once, checked and
written as a working copy, in this process or in a spawned pool, with results in input order.

What a row or a file is quarantined for, and why, is described in :mod:`roadwork.data.ingest`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from roadwork.atomic import atomic_write
from roadwork.data.images import ImageRejected, decode_image, downscale_short_side, sha256_file
from roadwork.data.ingest_scan import CLASS_FOLDERS, IMAGE_EXTENSIONS, Quarantined
from roadwork.data.sources import Source

IMAGES_DIR = "images"
_PARQUET_BATCH_ROWS = 16  # ~16 full-size photos in memory per batch
_IN_FLIGHT_PER_WORKER = 4  # bounds memory held by queued parquet bytes


@dataclass(frozen=True)
class Settings:
    """How every task is decoded and where its working copy goes (the arguments of ``ingest``)."""

    images_dir: Path
    working_min_side: int
    jpeg_quality: int
    max_pixels: int
    min_side: int


@dataclass(frozen=True)
class Task:
    """One input to decode: a file on disk (``file``) or embedded bytes (``data``)."""

    path: str
    label: int
    source: str
    metadata: tuple[tuple[str, str], ...]
    file: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Kept:
    """A decoded input: one row of the manifest (``working_path`` relative to ingest's ``out_dir``)."""

    path: str
    sha256: str
    size_bytes: int
    width: int
    height: int
    label: int
    source: str
    working_path: str
    metadata: tuple[tuple[str, str], ...]


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


def parquet_items(
    rel: str, path: Path, metadata_columns: list[str], source: str = "parquet"
) -> Iterator[Task | Quarantined]:
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
                        Quarantined(f"{rel}#{r}", "corrupt_row_group", detail) for r in range(row, end)
                    )
                    break
                if batch is None:
                    break
                yield from _batch_rows(rel, batch, row, metadata_columns, source)
                row += batch.num_rows
            row = end


def _batch_rows(
    rel: str, batch: pa.RecordBatch, first_row: int, metadata_columns: list[str], source: str
) -> Iterator[Task | Quarantined]:
    image_column = batch.column("image")
    if pa.types.is_struct(image_column.type):
        image_column = image_column.field("bytes")
    images = image_column.to_pylist()
    labels = batch.column("label").to_pylist()
    extra = {name: batch.column(name).to_pylist() for name in metadata_columns}
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        key = f"{rel}#{first_row + i}"
        if label not in (0, 1):
            yield Quarantined(key, "unknown_label", f"label is {label!r}; expected 0 (none) or 1 (roadwork)")
            continue
        description = extra["scene_description"][i]
        conflict = _contradiction(label, description)
        if conflict is not None:
            yield Quarantined(key, "description_contradicts_label", conflict)
            continue
        if not data:
            yield Quarantined(key, "empty_file", "image cell holds no bytes (null or empty)")
            continue
        values = tuple(
            (name, "" if extra[name][i] is None else str(extra[name][i])) for name in metadata_columns
        )
        yield Task(path=key, label=label, source=source, metadata=values, data=data)


def file_item(
    rel: str, path: Path, metadata: Mapping[str, Mapping[str, str]], source: Source | None = None
) -> Task | Quarantined:
    """The input at ``rel`` (relative to its source's folder, or to data_dir without sources)."""
    key = rel if source is None else f"{source.name}/{rel}"
    top, _, rest = rel.partition("/")
    accepted = ", ".join(f"{name}/" for name in CLASS_FOLDERS)
    # a hard-negative source labels every file 0 (its positives were refused before anything was decoded)
    negatives_only = source is not None and source.role == "hard_negative"
    if not rest and not negatives_only:
        where = "data_dir" if source is None else f"source {source.name!r}'s folder"
        return Quarantined(
            key, "unknown_label", f"file lies directly in {where}, outside any class folder ({accepted})"
        )
    if top not in CLASS_FOLDERS and not negatives_only:
        return Quarantined(
            key, "unknown_label", f"folder '{top}/' is not a class folder; accepted: {accepted}"
        )
    if Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
        return Quarantined(
            key, "unsupported_extension", f"extension not one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    values = tuple(metadata.get(rel, {}).items())
    label = 0 if negatives_only else CLASS_FOLDERS[top]
    name = "imagefolder" if source is None else source.name
    return Task(path=key, label=label, source=name, metadata=values, file=path)


def _process(task: Task, settings: Settings) -> Kept | Quarantined:
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
        return Quarantined(task.path, rejected.reason_code, rejected.message)
    except OSError as error:
        return Quarantined(task.path, "unreadable_file", f"cannot read: {error.strerror or error}")
    working = downscale_short_side(decoded.image, settings.working_min_side)
    name = f"{sha256}.jpg"
    # Pillow writes EXIF/ICC only when passed to save(), so the copy carries neither.
    atomic_write(
        settings.images_dir / name, lambda p: working.save(p, format="JPEG", quality=settings.jpeg_quality)
    )
    return Kept(
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


def execute(
    items: Iterator[Task | Quarantined], settings: Settings, workers: int
) -> Iterator[Kept | Quarantined]:
    """Process ``items`` in order, in this process or a pool of ``workers`` (results keep input order)."""
    if workers == 1:
        for item in items:
            yield item if isinstance(item, Quarantined) else _process(item, settings)
        return
    # spawn, not fork: the parent may hold threads (torch, tqdm's monitor) that fork would copy half-locked.
    context = multiprocessing.get_context("spawn")
    window = workers * _IN_FLIGHT_PER_WORKER
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[Future[Kept | Quarantined] | Quarantined] = deque()
        for item in items:
            pending.append(item if isinstance(item, Quarantined) else pool.submit(_process, item, settings))
            while len(pending) > window:
                head = pending.popleft()
                yield head if isinstance(head, Quarantined) else head.result()
        while pending:
            head = pending.popleft()
            yield head if isinstance(head, Quarantined) else head.result()
