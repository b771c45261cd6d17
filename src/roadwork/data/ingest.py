"""Ingest: decode every input once, verify it, quarantine bad ones, write the manifest and working copies.

Input layouts (both may be present in one ``data_dir``; their inputs are simply pooled):

* **ImageFolder**: top-level class folders ``roadwork/`` or ``1/`` (label 1) and ``no_roadwork/`` or ``0/``
  (label 0), nested subfolders allowed. Files with extensions in
  :data:`~roadwork.data.ingest_scan.IMAGE_EXTENSIONS` (any case) are images; other files there are
  quarantined ``unsupported_extension``. Files in any other top-level folder, and image files lying
  directly in ``data_dir``, are quarantined ``unknown_label``. An optional
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

Code: :mod:`roadwork.data.ingest_scan` finds the inputs and checks the layout, :mod:`roadwork.data.
ingest_decode` decodes them and writes the working copies; this module runs the two and writes the lists.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from roadwork.atomic import atomic_write_csv
from roadwork.data.images import REJECTION_REASONS, check_max_pixels
from roadwork.data.ingest_decode import IMAGES_DIR, Kept, Settings, Task, execute, file_item, parquet_items
from roadwork.data.ingest_scan import LAYOUTS_HELP, MANIFEST_COLUMNS, Quarantined, Root, read_root, unread
from roadwork.data.sources import Source, check_sources
from roadwork.progress import progress_bar
from roadwork.validation import check_int

__all__ = ["MANIFEST_COLUMNS", "QUARANTINE_COLUMNS", "QUARANTINE_REASONS", "IngestResult", "ingest"]

QUARANTINE_COLUMNS: tuple[str, ...] = ("path", "reason", "detail")
QUARANTINE_REASONS: tuple[str, ...] = (
    *REJECTION_REASONS, "unknown_label", "unsupported_extension", "description_contradicts_label",
    "symlink_outside_data", "symlink_cycle", "unreadable_file", "unreadable_folder",
    "corrupt_row_group"
)  # fmt: skip
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


def _remove_stale_images(images_dir: Path, keep: set[str]) -> None:
    """Delete working copies (and temp files of crashed runs) that this run did not produce.

    Only names ingest writes are touched, so anything else a user put there stays.
    """
    for entry in images_dir.iterdir():
        if _OUR_IMAGE_FILE.match(entry.name) and entry.name not in keep:
            entry.unlink()


def _checked_settings(
    data_dir: Path,
    out_dir: Path,
    working_min_side: int,
    jpeg_quality: int,
    max_pixels: int,
    min_side: int,
    workers: int,
    show_progress: bool,
) -> Settings:
    """The arguments of :func:`ingest` checked, in the order it checks them; nothing is read or written."""
    if not isinstance(data_dir, Path) or not isinstance(out_dir, Path):
        raise TypeError(
            "data_dir and out_dir must be pathlib.Path, got "
            f"{type(data_dir).__name__} and {type(out_dir).__name__}"
        )
    check_int(working_min_side, "working_min_side", 1)
    check_int(jpeg_quality, "jpeg_quality", 1, 100)
    check_max_pixels(max_pixels)
    check_int(min_side, "min_side", 1)
    check_int(workers, "workers", 1)
    if not isinstance(show_progress, bool):
        raise TypeError(f"show_progress must be a bool, got {type(show_progress).__name__}")
    if not data_dir.is_dir():
        raise ValueError(f"data_dir {data_dir} does not exist or is not a folder; {LAYOUTS_HELP}")
    out_real = out_dir.resolve()
    if out_real.is_relative_to(data_dir.resolve()):
        raise ValueError(
            f"out_dir {out_dir} lies inside data_dir {data_dir}; its outputs would become inputs of the next "
            "run. Choose an out_dir outside data_dir"
        )
    return Settings(out_dir / IMAGES_DIR, working_min_side, jpeg_quality, max_pixels, min_side)


def _inputs(roots: Sequence[Root]) -> Iterator[Task | Quarantined]:
    """Every input of ``roots`` in order: what the scan quarantined, then files, then parquet rows."""
    for root in roots:
        prefix = "" if root.source is None else f"{root.source.name}/"
        name = "parquet" if root.source is None else root.source.name
        yield from (Quarantined(prefix + q.path, q.reason, q.detail) for q in root.scan.quarantined)
        for rel, path in root.scan.files:
            yield file_item(rel, path, root.metadata, root.source)
        for rel, path in root.scan.parquets:
            yield from parquet_items(prefix + rel, path, root.parquet_columns[rel], name)


def _decode_all(
    roots: Sequence[Root], settings: Settings, workers: int, show_progress: bool
) -> tuple[list[Kept], list[Quarantined]]:
    """Decode every input of ``roots`` into ``settings.images_dir`` (created); check that each input is
    accounted for once, under a path of its own."""
    settings.images_dir.mkdir(parents=True, exist_ok=True)
    n_inputs = sum(root.n_inputs for root in roots)
    kept: list[Kept] = []
    quarantined: list[Quarantined] = []
    with progress_bar(total=n_inputs, desc="ingest", unit="img", show=show_progress) as progress:
        for outcome in execute(_inputs(roots), settings, workers):
            (quarantined if isinstance(outcome, Quarantined) else kept).append(outcome)
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
    return kept, quarantined


def _write_lists(
    out_dir: Path, roots: Sequence[Root], kept: Sequence[Kept], quarantined: Sequence[Quarantined]
) -> tuple[Path, Path]:
    """Write ``manifest.csv`` and ``quarantine.csv`` (rows sorted by path); return their paths."""
    extra_columns: list[str] = []
    for root in roots:
        for columns in (root.metadata_columns, *root.parquet_columns.values()):
            extra_columns += [c for c in columns if c not in extra_columns]
    manifest_rows = []
    for item in sorted(kept, key=lambda item: item.path):
        metadata_values = dict(item.metadata)
        manifest_rows.append(
            [getattr(item, c) for c in MANIFEST_COLUMNS] + [metadata_values.get(c, "") for c in extra_columns]
        )
    quarantine_rows = [
        [getattr(item, c) for c in QUARANTINE_COLUMNS]
        for item in sorted(quarantined, key=lambda item: item.path)
    ]
    manifest_path = out_dir / "manifest.csv"
    quarantine_path = out_dir / "quarantine.csv"
    atomic_write_csv(manifest_path, manifest_rows, columns=[*MANIFEST_COLUMNS, *extra_columns])
    atomic_write_csv(quarantine_path, quarantine_rows, columns=QUARANTINE_COLUMNS)
    return manifest_path, quarantine_path


def _counts(
    kept: Sequence[Kept], quarantined: Sequence[Quarantined], sources: Sequence[Source]
) -> tuple[dict[str, int], dict[int, int], dict[str, int]]:
    """Quarantine reasons (every code, zeros included), kept inputs per label and per source name."""
    reasons = Counter(item.reason for item in quarantined)
    unknown = sorted(set(reasons) - set(QUARANTINE_REASONS))
    if unknown:
        raise RuntimeError(f"quarantine reasons outside QUARANTINE_REASONS: {unknown}")
    labels = Counter(item.label for item in kept)
    by_source = Counter(item.source for item in kept)
    return (
        {reason: reasons.get(reason, 0) for reason in QUARANTINE_REASONS},
        {0: labels.get(0, 0), 1: labels.get(1, 0)},
        {s.name: by_source.get(s.name, 0) for s in sources},
    )


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
    settings = _checked_settings(
        data_dir, out_dir, working_min_side, jpeg_quality, max_pixels, min_side, workers, show_progress
    )
    check_sources(sources)
    roots = [read_root(data_dir, None)] if not sources else [read_root(data_dir, s) for s in sources]
    kept, quarantined = _decode_all(roots, settings, workers, show_progress)
    manifest_path, quarantine_path = _write_lists(out_dir, roots, kept, quarantined)
    # Only after the new manifest is in place: a crash before this leaves extra files, never missing ones.
    _remove_stale_images(settings.images_dir, {Path(item.working_path).name for item in kept})
    reason_counts, label_counts, source_counts = _counts(kept, quarantined, sources)
    return IngestResult(
        n_inputs=len(kept) + len(quarantined),
        n_kept=len(kept),
        n_quarantined=len(quarantined),
        reason_counts=reason_counts,
        label_counts=label_counts,
        manifest_path=manifest_path,
        quarantine_path=quarantine_path,
        source_counts=source_counts,
        unread=unread(data_dir, sources),
    )
