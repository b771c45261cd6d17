"""Exact and near-duplicate groups: the items that must share a split.

Three kinds of edge join items into groups:

* **exact**: the same sha256 of the original bytes;
* **phash**: perceptual hashes (imagehash pHash, 64 bits stored as ``uint64``) within Hamming radius ``r``;
* **extra**: any further pair lists a caller supplies, e.g. :func:`~roadwork.data.pairs.cosine_pairs` over
  backbone embeddings.

Building blocks, each usable on its own:

* :func:`compute_phashes` turns image files into ``uint64`` pHashes.
* :func:`~roadwork.data.pairs.hamming_pairs` finds every pair within a Hamming radius with multi-index
  hashing (exactly the pairs an all-pairs scan finds, far faster for small radii).
* :func:`~roadwork.data.pairs.cosine_pairs` finds every pair of rows whose cosine similarity reaches a
  threshold (blocked matmul).
* :func:`connected_groups` turns edge lists into canonical group ids (union-find by connected components).
* :func:`find_duplicate_groups` applies the keep/drop rules and returns groups plus reports.

Pair lists everywhere share one format: an ``int64`` array of shape ``[P, 2]`` whose rows ``(i, j)`` have
``i < j``, are unique and sorted lexicographically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from roadwork.data.images import ImageRejected, open_image, pillow_pixel_limit
from roadwork.data.pairs import HASH_BITS, check_hashes, hamming_pairs, sorted_unique_pairs
from roadwork.progress import progress_bar
from roadwork.validation import check_int

PHASH_SOURCE = "phash"
_SHA256_HEX = re.compile("[0-9a-f]{64}")


def _check_pairs(edges: object, n: int, name: str) -> np.ndarray:
    """An integer ``[P, 2]`` array with every index in ``[0, n)``, as int64."""
    if not isinstance(edges, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape [P, 2], got {type(edges).__name__}")
    if edges.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer item indices, got dtype {edges.dtype}")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"{name} must have shape [P, 2] (one row per pair), got {edges.shape}")
    if edges.size and (edges.min() < 0 or edges.max() >= n):
        bad = edges[(edges < 0).any(axis=1) | (edges >= n).any(axis=1)][0]
        raise ValueError(
            f"{name} holds index pair {bad.tolist()} outside [0, {n}); indices must refer to the {n} items"
        )
    return edges.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------------------------- pHash


def compute_phashes(paths: Sequence[Path], *, hash_size: int = 8, show_progress: bool = True) -> np.ndarray:
    """The imagehash pHash of each image file, as ``uint64``.

    Each file is decoded by :func:`roadwork.data.images.open_image` (EXIF orientation applied, transparency
    composited on white, RGB), then ``imagehash.phash(image, hash_size)``: greyscale, resized to
    ``4 * hash_size`` squared, 2-D DCT, and one bit per low-frequency coefficient (``1`` when above their
    median). The ``hash_size ** 2`` bits are read row-major, first bit most significant, i.e. the integer
    equals ``int(str(imagehash.phash(image, hash_size)), 16)``; for ``hash_size < 8`` the high bits are 0.

    Args:
        paths: image files (``pathlib.Path`` or ``str``), e.g. ingest's working copies. Only Pillow's own
            decompression-bomb limit applies (ingest has already applied the pipeline's pixel limit).
        hash_size: side of the DCT block kept, 2..8 (64 bits fit a ``uint64``).
        show_progress: a progress bar over the files (where :mod:`roadwork.progress` allows one).

    Returns:
        ``uint64`` array of shape ``[len(paths)]``, aligned with ``paths``.

    Raises:
        TypeError: ``paths`` is not a sequence of paths, or ``hash_size`` is not an int.
        ValueError: ``hash_size`` out of range, or a file is not a decodable image (the message names it).
        FileNotFoundError / OSError: a file cannot be read.
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Sequence):
        raise TypeError(f"paths must be a sequence of file paths, got {type(paths).__name__}")
    for index, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"paths[{index}] must be a pathlib.Path or str, got {type(path).__name__}")
    hash_size = check_int(hash_size, "hash_size", 2, 8)
    limit = pillow_pixel_limit()
    max_pixels = limit if limit is not None else np.iinfo(np.int64).max
    bits = hash_size * hash_size
    weights = np.left_shift(np.uint64(1), np.arange(bits - 1, -1, -1, dtype=np.uint64))
    out = np.empty(len(paths), dtype=np.uint64)
    for index, path in enumerate(progress_bar(paths, desc="phash", unit="img", show=show_progress)):
        try:
            image = open_image(Path(path), max_pixels=max_pixels, min_side=1)
        except ImageRejected as error:
            raise ValueError(f"paths[{index}] = {path} cannot be hashed: {error}") from error
        bits_set = imagehash.phash(image, hash_size=hash_size).hash.ravel()
        out[index] = np.bitwise_or.reduce(weights[bits_set], initial=np.uint64(0))
    return out


# ---------------------------------------------------------------------------------------------- groups


def connected_groups(n: int, *edge_lists: np.ndarray) -> np.ndarray:
    """Group id of each of ``n`` items, where items joined by any edge (transitively) share a group.

    The id of a group is the smallest item index in it, so ids do not depend on the order of edges or of
    edge lists, and an item without edges is its own group (id = its index). Self-loops ``(i, i)`` are
    allowed and change nothing.

    Args:
        n: number of items, >= 0.
        *edge_lists: integer arrays ``[P, 2]`` of item index pairs in ``[0, n)``, in any order and direction;
            empty arrays of shape ``[0, 2]`` are fine.

    Returns:
        ``int64`` array ``[n]``.

    Raises:
        TypeError / ValueError: ``n`` is not a non-negative int, or an edge list has a wrong type, shape or
        an index outside ``[0, n)`` (the message names ``edge_lists[k]``).
    """
    n = check_int(n, "n", 0)
    checked = [_check_pairs(edges, n, f"edge_lists[{k}]") for k, edges in enumerate(edge_lists)]
    edges = np.concatenate([np.empty((0, 2), dtype=np.int64), *checked])
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # np.unique's first-occurrence index of each component label is the component's smallest member.
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    return first[inverse].astype(np.int64)


# ---------------------------------------------------------------------------------------- dedupe rules


@dataclass(frozen=True)
class DedupeResult:
    """Outcome of :func:`find_duplicate_groups`; per-item arrays are aligned with its inputs.

    Attributes:
        group: ``int64 [N]`` group id, the smallest item index in the group (always a kept item for groups
            with kept members). A dropped exact duplicate carries the group of the copy that was kept; the
            copies of a label conflict form a group of their own (the smallest copy's index).
        keep: ``bool [N]``, whether the item goes on to the split.
        drop_reason: per item ``None`` (kept), ``"exact_duplicate"`` or ``"label_conflict"``.
        exact_duplicates: one row per item of every byte-identical set (same sha256, two or more items, one
            label): ``sha256, index, label, keep``, sets ordered by their first item.
        label_conflicts: one row per item of every byte-identical set whose labels differ:
            ``sha256, index, label`` (all are dropped).
        near_duplicate_pairs: the edges between kept items: ``i, j`` (``i < j``, item indices), ``hamming``
            (pHash distance, also for extra edges) and ``source`` (``"phash"`` or ``"extra_<k>"`` for
            ``extra_edges[k]``); a pair found by several sources has one row per source.
        mixed_label_groups: groups whose kept members carry both labels: ``group, size, n_label_0,
            n_label_1, members`` (list of kept item indices). They are reported, not excluded.
        summary: counts: ``n_items``, ``n_kept``, ``n_exact_duplicates_dropped``,
            ``n_label_conflicts_dropped``, ``n_groups`` and ``largest_group`` (over kept items; 0 when none
            is kept), ``n_mixed_label_groups``, ``n_pairs_phash``, ``n_pairs_extra_<k>`` and
            ``n_extra_edges_unused`` (extra edges joining copies of the same bytes, or touching a
            label-conflict item).
    """

    group: np.ndarray
    keep: np.ndarray
    drop_reason: list[str | None]
    exact_duplicates: pd.DataFrame
    label_conflicts: pd.DataFrame
    near_duplicate_pairs: pd.DataFrame
    mixed_label_groups: pd.DataFrame
    summary: dict[str, int]


def _check_sha256(sha256: object) -> list[str]:
    if isinstance(sha256, (str, bytes)) or not isinstance(sha256, (Sequence, np.ndarray, pd.Series)):
        raise TypeError(f"sha256 must be a sequence of hex digests, got {type(sha256).__name__}")
    digests = list(sha256)
    for index, digest in enumerate(digests):
        if not (isinstance(digest, str) and _SHA256_HEX.fullmatch(digest)):
            raise ValueError(
                f"sha256[{index}] = {digest!r} is not a 64-character lowercase hex digest "
                "(hashlib.sha256(data).hexdigest())"
            )
    return digests


def _check_labels(labels: object, n: int) -> np.ndarray:
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a sequence of 0/1 integers, got a string")
    values = np.asarray(labels)
    if values.ndim != 1 or values.size != n:
        raise ValueError(f"labels must be 1-D with one label per sha256 ({n}), got shape {values.shape}")
    if values.size and values.dtype.kind not in "iub":
        raise TypeError(f"labels must be integers 0 or 1, got dtype {values.dtype}")
    invalid = ~np.isin(values, (0, 1))
    if invalid.any():
        index = int(np.flatnonzero(invalid)[0])
        raise ValueError(f"labels must be 0 (no roadwork) or 1 (roadwork); labels[{index}] = {values[index]}")
    return values.astype(np.int64)


def _checked_inputs(
    sha256: object, labels: object, phashes: object, radius: object, extra_edges: object
) -> tuple[list[str], np.ndarray, np.ndarray, int, list[np.ndarray]]:
    """The arguments of :func:`find_duplicate_groups` checked: digests, labels, pHashes, radius, edges."""
    digests = _check_sha256(sha256)
    n = len(digests)
    if n == 0:
        raise ValueError("sha256 is empty: there are no items to deduplicate")
    label = _check_labels(labels, n)
    hashes = check_hashes(phashes, "phashes")
    if hashes.size != n:
        raise ValueError(f"phashes must hold one hash per item ({n}), got {hashes.size}")
    checked_radius = check_int(radius, "radius", 0, HASH_BITS)
    if isinstance(extra_edges, np.ndarray) or not isinstance(extra_edges, Sequence):
        raise TypeError(
            "extra_edges must be a sequence of [P, 2] arrays (wrap a single array in a tuple), "
            f"got {type(extra_edges).__name__}"
        )
    extras = [_check_pairs(edges, n, f"extra_edges[{k}]") for k, edges in enumerate(extra_edges)]
    return digests, label, hashes, checked_radius, extras


@dataclass(frozen=True)
class _ByteCopies:
    """Byte-identical sets (equal sha256) and the keep/drop decisions of rules 1 and 2.

    Per item: ``codes`` (its set), ``representative`` (the set's first item), ``conflict`` (its set's labels
    differ) and ``duplicate`` (a later copy of a set with one label); per set: ``copies`` (its size).
    """

    codes: np.ndarray
    representative: np.ndarray
    copies: np.ndarray
    conflict: np.ndarray
    duplicate: np.ndarray

    @property
    def keep(self) -> np.ndarray:
        return ~self.conflict & ~self.duplicate

    @property
    def same_bytes_edges(self) -> np.ndarray:
        """Edges from each set's first item to its later copies (a dropped copy joins its kept one)."""
        index = np.arange(len(self.codes))
        return np.stack([self.representative, index], axis=1)[self.representative != index]

    def drop_reasons(self) -> list[str | None]:
        reasons: list[str | None] = [None] * len(self.codes)
        for item in np.flatnonzero(self.duplicate).tolist():
            reasons[item] = "exact_duplicate"
        for item in np.flatnonzero(self.conflict).tolist():
            reasons[item] = "label_conflict"
        return reasons


def _byte_copies(digests: list[str], label: np.ndarray, phashes: np.ndarray) -> _ByteCopies:
    """Rules 1 and 2 over the byte-identical sets; byte-identical items must have equal pHashes."""
    codes, _ = pd.factorize(pd.Series(digests, dtype=object))
    _, first_of_code = np.unique(codes, return_index=True)
    representative = first_of_code[codes]  # the first occurrence of each item's bytes
    mismatch = np.flatnonzero(phashes != phashes[representative])
    if mismatch.size:
        item = int(mismatch[0])
        raise ValueError(
            f"phashes[{item}] differs from phashes[{int(representative[item])}] although both items have "
            "the same sha256; pHashes must be computed from the same bytes as the digests"
        )
    copies = np.bincount(codes)
    # Labels are 0/1, so a set's labels agree exactly when their sum is 0 or the set's size.
    conflict_code = np.bincount(codes, weights=label) % copies != 0
    conflict = conflict_code[codes]
    duplicate = ~conflict & (representative != np.arange(len(digests)))
    return _ByteCopies(codes, representative, copies, conflict, duplicate)


def _extra_pairs(copies: _ByteCopies, extras: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Each extra edge list with endpoints mapped to their kept copy, less the edges that join nothing
    (between copies of the same bytes, or touching a label conflict), and how many edges were left out."""
    keep = copies.keep
    n = len(copies.codes)
    extra_pairs = []
    n_unused = 0
    for edges in extras:
        mapped = copies.representative[edges]
        useful = (mapped[:, 0] != mapped[:, 1]) & keep[mapped].all(axis=1)
        n_unused += int((~useful).sum())
        extra_pairs.append(sorted_unique_pairs(mapped[useful], n))
    return extra_pairs, n_unused


def _pair_table(sources: list[tuple[str, np.ndarray]], phashes: np.ndarray) -> pd.DataFrame:
    """``near_duplicate_pairs``: one row per pair and source, with the pair's pHash distance."""
    all_pairs = np.concatenate([p for _, p in sources])
    return pd.DataFrame(
        {
            "i": all_pairs[:, 0],
            "j": all_pairs[:, 1],
            "hamming": np.bitwise_count(phashes[all_pairs[:, 0]] ^ phashes[all_pairs[:, 1]]).astype(np.int64),
            "source": np.repeat([name for name, _ in sources], [len(p) for _, p in sources]),
        }
    )


def _copy_tables(
    digests: list[str], label: np.ndarray, copies: _ByteCopies
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``exact_duplicates`` and ``label_conflicts``: the items of every set of two or more copies."""
    index = np.arange(len(digests))
    in_set = copies.copies[copies.codes] > 1
    set_order = np.lexsort((index, copies.representative))
    exact_rows = set_order[(in_set & ~copies.conflict)[set_order]]
    exact = pd.DataFrame(
        {
            "sha256": np.asarray(digests, dtype=object)[exact_rows],
            "index": exact_rows,
            "label": label[exact_rows],
            "keep": copies.keep[exact_rows],
        }
    )
    conflict_rows = set_order[copies.conflict[set_order]]
    conflicts = pd.DataFrame(
        {
            "sha256": np.asarray(digests, dtype=object)[conflict_rows],
            "index": conflict_rows,
            "label": label[conflict_rows],
        }
    )
    return exact, conflicts


def _mixed_label_groups(
    group: np.ndarray, kept: np.ndarray, label: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """``mixed_label_groups`` (groups whose kept members carry both labels) and each group's kept size."""
    group_ids, size = np.unique(group[kept], return_counts=True)
    n_label_1 = np.bincount(np.searchsorted(group_ids, group[kept]), weights=label[kept]).astype(np.int64)
    is_mixed = (n_label_1 > 0) & (n_label_1 < size)
    in_mixed = np.isin(group[kept], group_ids[is_mixed])
    member_lists = pd.Series(kept[in_mixed]).groupby(group[kept][in_mixed], sort=True).agg(list)
    mixed = pd.DataFrame(
        {
            "group": group_ids[is_mixed],
            "size": size[is_mixed],
            "n_label_0": (size - n_label_1)[is_mixed],
            "n_label_1": n_label_1[is_mixed],
            "members": member_lists.tolist(),
        }
    )
    return mixed, size


def find_duplicate_groups(
    sha256: Sequence[str],
    labels: Sequence[int],
    phashes: np.ndarray,
    *,
    radius: int,
    extra_edges: Sequence[np.ndarray] = (),
) -> DedupeResult:
    """Decide which items to keep and group the kept ones so that no group may cross splits.

    Rules, in order:

    1. Byte-identical items (equal ``sha256``) with one label: the first occurrence (smallest index) is
       kept, the others are dropped as ``"exact_duplicate"``.
    2. Byte-identical items whose labels differ: *all* copies are dropped as ``"label_conflict"``; no label
       can be trusted.
    3. Kept items are joined when their pHashes are within ``radius``
       (:func:`~roadwork.data.pairs.hamming_pairs`) or by any pair in ``extra_edges``; groups are the
       connected components (:func:`connected_groups`).

    Extra edges may name any item: an endpoint that is a dropped exact duplicate stands for its kept copy;
    an edge between copies of the same bytes, or touching a label-conflict item, joins nothing and is
    counted in ``summary["n_extra_edges_unused"]``. Near-duplicate groups whose kept members carry both
    labels are *not* excluded (near copies may legitimately differ, e.g. a crop that cuts the roadwork
    sign out); they are listed in ``mixed_label_groups`` for review.

    The grouping of items does not depend on input order: permuting the inputs permutes the partition
    (only which copy of a byte-identical set is kept, and hence the ids, follow the order).

    Args:
        sha256: lowercase hex sha256 of each item's original bytes, ``[N]``, ``N >= 1``.
        labels: 0 (no roadwork) or 1 (roadwork) per item.
        phashes: ``uint64 [N]`` pHashes (:func:`compute_phashes`); byte-identical items must have equal ones.
        radius: pHash Hamming radius, 0..64, inclusive.
        extra_edges: further ``[P, 2]`` integer arrays of item index pairs (e.g.
            :func:`~roadwork.data.pairs.cosine_pairs`).

    Returns:
        :class:`DedupeResult`.

    Raises:
        TypeError / ValueError: naming the argument: wrong types, lengths that differ, a malformed digest,
        a label other than 0/1, a radius outside 0..64, an edge index outside ``[0, N)``, or different
        pHashes for byte-identical items.
    """
    digests, label, phashes, radius, extras = _checked_inputs(sha256, labels, phashes, radius, extra_edges)
    n = len(digests)
    copies = _byte_copies(digests, label, phashes)
    kept = np.flatnonzero(copies.keep)
    # kept is increasing, so mapping the subset's pairs back keeps them sorted with i < j.
    sources = [(PHASH_SOURCE, kept[hamming_pairs(phashes[kept], radius)])]
    extra_pairs, n_unused = _extra_pairs(copies, extras)
    sources += [(f"extra_{k}", pairs) for k, pairs in enumerate(extra_pairs)]
    group = connected_groups(n, copies.same_bytes_edges, *(pairs for _, pairs in sources))
    exact, conflicts = _copy_tables(digests, label, copies)
    mixed, group_sizes = _mixed_label_groups(group, kept, label)
    summary = {
        "n_items": n,
        "n_kept": len(kept),
        "n_exact_duplicates_dropped": int(copies.duplicate.sum()),
        "n_label_conflicts_dropped": int(copies.conflict.sum()),
        "n_groups": len(group_sizes),
        "largest_group": int(group_sizes.max(initial=0)),
        "n_mixed_label_groups": len(mixed),
        **{f"n_pairs_{name}": len(p) for name, p in sources},
        "n_extra_edges_unused": n_unused,
    }
    return DedupeResult(
        group=group,
        keep=copies.keep,
        drop_reason=copies.drop_reasons(),
        exact_duplicates=exact,
        label_conflicts=conflicts,
        near_duplicate_pairs=_pair_table(sources, phashes),
        mixed_label_groups=mixed,
        summary=summary,
    )
