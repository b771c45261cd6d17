"""Exact and near-duplicate groups: the items that must share a split.

Three kinds of edge join items into groups:

* **exact**: the same sha256 of the original bytes;
* **phash**: perceptual hashes (imagehash pHash, 64 bits stored as ``uint64``) within Hamming radius ``r``;
* **extra**: any further pair lists a caller supplies, e.g. :func:`cosine_pairs` over backbone embeddings.

Building blocks, each usable on its own:

* :func:`compute_phashes` turns image files into ``uint64`` pHashes.
* :func:`hamming_pairs` finds every pair within a Hamming radius with multi-index hashing (exactly the pairs
  an all-pairs scan finds, far faster for small radii).
* :func:`cosine_pairs` finds every pair of rows whose cosine similarity reaches a threshold (blocked matmul).
* :func:`connected_groups` turns edge lists into canonical group ids (union-find by connected components).
* :func:`find_duplicate_groups` applies the keep/drop rules and returns groups plus reports.

Pair lists everywhere share one format: an ``int64`` array of shape ``[P, 2]`` whose rows ``(i, j)`` have
``i < j``, are unique and sorted lexicographically.
"""

from __future__ import annotations

import math
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
from roadwork.progress import progress_bar

HASH_BITS = 64
PHASH_SOURCE = "phash"
_SHA256_HEX = re.compile("[0-9a-f]{64}")

# Elements per vectorised step of multi-index hashing (query items x neighbour masks): steps whose
# temporaries stay in CPU cache run fastest; 2**14 measured best of 2**12..2**17.
_CHUNK_ELEMENTS = 1 << 14
# Elements per step of the all-pairs scan (rows x columns, at least one row): 8 MiB of XORs; step sizes
# 2**14..2**22 measured within 20% of each other.
_SCAN_CHUNK_ELEMENTS = 1 << 20
# Relative costs in the search-plan model, fitted to timings on the development machine (numpy 2.4, one core,
# N = 2 000..100 000, radius 10..16): a bucket probe (item x neighbour mask) and a candidate check cost about
# the same, a probe into a table larger than 2**16 entries (out of cache) about three times that, and one
# pair of the all-pairs scan about 0.4 of it. Only the ratios matter; a wrong choice costs speed, not results.
_COST_PROBE = 1.0
_COST_PROBE_LARGE_TABLE = 3.0
_CACHED_TABLE_BITS = 16
_COST_CANDIDATE = 1.0
_COST_SCAN_PAIR = 0.4


# ------------------------------------------------------------------------------------------ validation


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def _check_hashes(hashes: object, name: str) -> np.ndarray:
    if not isinstance(hashes, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of dtype uint64, got {type(hashes).__name__}")
    if hashes.dtype != np.uint64:
        raise TypeError(
            f"{name} must have dtype uint64 (64-bit hashes), got {hashes.dtype}; convert with "
            f"{name}.astype(np.uint64) only if the values already are unsigned 64-bit hashes"
        )
    if hashes.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one hash per item), got shape {hashes.shape}")
    return hashes


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


def _sorted_unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """``pairs`` (any direction, repeats allowed) as the module's pair format: ``i < j``, unique, sorted."""
    low, high = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    codes = np.unique(low.astype(np.int64) * n + high)
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


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
    hash_size = _check_int(hash_size, "hash_size", 2, 8)
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


# -------------------------------------------------------------------------------------- Hamming search


@dataclass(frozen=True)
class _Block:
    shift: int
    bits: int

    @property
    def mask(self) -> np.uint64:
        return np.uint64(((1 << self.bits) - 1) << self.shift)

    def values(self, hashes: np.ndarray) -> np.ndarray:
        return ((hashes >> np.uint64(self.shift)) & np.uint64((1 << self.bits) - 1)).astype(np.int64)


def _blocks(n_blocks: int) -> list[_Block]:
    """``n_blocks`` contiguous bit ranges covering the 64 bits, widths differing by at most one."""
    widths = [HASH_BITS // n_blocks + (k < HASH_BITS % n_blocks) for k in range(n_blocks)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [_Block(int(s), int(w)) for s, w in zip(shifts, widths, strict=True)]


def _sub_radii(radius: int, n_blocks: int) -> list[int]:
    """Per-block search radius of multi-index hashing (pigeonhole).

    With ``radius = n_blocks * s + a`` (``0 <= a < n_blocks``), a pair within ``radius`` is within ``s`` on
    one of the first ``a + 1`` blocks or within ``s - 1`` on one of the others: otherwise its distance would
    be at least ``(a + 1)(s + 1) + (n_blocks - a - 1) s = radius + 1``. A radius of -1 means the block is
    never searched.
    """
    s, a = divmod(radius, n_blocks)
    return [s if k <= a else s - 1 for k in range(n_blocks)]


def _n_masks(bits: int, sub_radius: int) -> int:
    return sum(math.comb(bits, k) for k in range(min(sub_radius, bits) + 1))


def _plan_cost(n: int, radius: int, n_blocks: int) -> float:
    """Model cost of a search: ``n_blocks == 1`` is the all-pairs scan, else multi-index hashing.

    Multi-index hashing probes every item against every neighbour mask of every block and then checks the
    candidates, whose expected number assumes uniformly random hashes (clustered real hashes give more).
    """
    if n_blocks == 1:
        return _COST_SCAN_PAIR * n * (n - 1) / 2
    cost = 0.0
    for block, sub_radius in zip(_blocks(n_blocks), _sub_radii(radius, n_blocks), strict=True):
        masks = _n_masks(block.bits, sub_radius)
        probe = _COST_PROBE if block.bits <= _CACHED_TABLE_BITS else _COST_PROBE_LARGE_TABLE
        cost += probe * n * masks + _COST_CANDIDATE * n * n / 2 * masks / 2.0**block.bits
    return cost


def _choose_n_blocks(n: int, radius: int) -> int:
    # More than radius + 1 blocks only shrinks the blocks (more candidates) at sub-radius 0.
    options = [1, *range(3, min(HASH_BITS, max(3, radius + 1)) + 1)]
    return min(options, key=lambda m: (_plan_cost(n, radius, m), m))


def _scan_pairs(hashes: np.ndarray, radius: int) -> np.ndarray:
    """All pairs within ``radius`` by comparing each row with every later item, rows in chunks."""
    n = hashes.size
    rows = max(1, _SCAN_CHUNK_ELEMENTS // max(n, 1))
    found = [np.empty((0, 2), dtype=np.int64)]
    for start in range(0, n - 1, rows):
        stop = min(start + rows, n - 1)
        height = stop - start
        # Row r is item start + r, column c is item start + 1 + c: only c >= r lies above the diagonal.
        within = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start + 1 :]) <= radius
        within[:, : height - 1] &= np.arange(height - 1)[None, :] >= np.arange(height)[:, None]
        i, j = np.nonzero(within)
        found.append(np.stack([i + start, j + start + 1], axis=1))
    return np.concatenate(found).astype(np.int64)


def _verified(
    ordered: np.ndarray,
    radius: int,
    earlier: Sequence[tuple[_Block, int]],
    query: np.ndarray,
    hits: np.ndarray,
    first_target: np.ndarray,
) -> np.ndarray:
    """Positions ``(q, t)`` of candidates within ``radius`` that no earlier block already reports.

    Candidate ``k`` pairs position ``query[k]`` with positions ``first_target[k] + 0 .. hits[k] - 1`` of
    ``ordered`` (the hashes sorted by the current block).
    """
    offset = np.cumsum(hits) - hits
    target = np.arange(int(hits.sum())) + np.repeat(first_target - offset, hits)
    xor = np.repeat(ordered[query], hits) ^ ordered[target]
    # Nearly all candidates fail the full check, so the earlier-block test runs on the survivors only.
    kept = np.flatnonzero(np.bitwise_count(xor) <= radius)
    for block, sub_radius in earlier:
        kept = kept[np.bitwise_count(xor[kept] & block.mask) > sub_radius]
    probe = np.searchsorted(offset, kept, side="right") - 1
    return np.stack([query[probe], target[kept]], axis=1)


def _multi_index_pairs(hashes: np.ndarray, radius: int, n_blocks: int) -> np.ndarray:
    """All pairs within ``radius`` by multi-index hashing with ``n_blocks`` blocks.

    Per block, items are sorted by their block value (buckets of equal values become runs) and each item
    probes the runs of the values within the block's sub-radius (:func:`_sub_radii`) of its own. Of two
    runs whose values differ by a mask, only the one with a 0 at the mask's highest bit probes the other
    (and in its own run an item looks only at later items), so each unordered pair is generated once per
    block. Candidates are checked on all 64 bits, and a pair is kept only in the first block within whose
    sub-radius it lies, so no pair is reported twice.
    """
    n = hashes.size
    blocks = _blocks(n_blocks)
    sub_radii = _sub_radii(radius, n_blocks)
    found = [np.empty((0, 2), dtype=np.int64)]
    for index, (block, sub_radius) in enumerate(zip(blocks, sub_radii, strict=True)):
        if sub_radius < 0:
            continue
        earlier = list(zip(blocks[:index], sub_radii[:index], strict=True))
        values = block.values(hashes)
        order = np.argsort(values, kind="stable")
        values = values[order]
        ordered = hashes[order]
        counts = np.bincount(values, minlength=1 << block.bits)
        run_end = np.cumsum(counts)
        run_start = run_end - counts
        own_hits = run_end[values] - np.arange(n) - 1
        # nonzero on a bool array is several times faster than on integers.
        probes = np.flatnonzero(own_hits > 0)
        positions = [_verified(ordered, radius, earlier, probes, own_hits[probes], probes + 1)]
        nonzero_masks = np.arange(1, 1 << block.bits)
        masks = nonzero_masks[np.bitwise_count(nonzero_masks) <= sub_radius]
        top_bit = np.log2(masks).astype(np.int64)  # exact: masks < 2**22
        for bit in range(block.bits):
            bit_masks = masks[top_bit == bit]
            if bit_masks.size == 0:
                continue
            querying = np.flatnonzero((values >> bit) & 1 == 0)
            per_chunk = min(max(querying.size, 1), _CHUNK_ELEMENTS)
            per_step = max(1, _CHUNK_ELEMENTS // per_chunk)
            for chunk in range(0, querying.size, per_chunk):
                query = querying[chunk : chunk + per_chunk]
                query_values = values[query]
                for first in range(0, bit_masks.size, per_step):
                    step = bit_masks[first : first + per_step]
                    keys = (query_values[:, None] ^ step[None, :]).ravel()
                    hits = counts[keys]
                    probes = np.flatnonzero(hits > 0)
                    positions.append(
                        _verified(
                            ordered,
                            radius,
                            earlier,
                            query[probes // step.size],
                            hits[probes],
                            run_start[keys[probes]],
                        )
                    )
        found.append(order[np.concatenate(positions)])
    return _sorted_unique_pairs(np.concatenate(found), n)


def hamming_pairs(hashes: np.ndarray, radius: int, *, n_blocks: int | None = None) -> np.ndarray:
    """Every pair of hashes within Hamming distance ``radius`` (inclusive), including equal hashes.

    The result is exact: the same pair set as comparing all ``N (N - 1) / 2`` pairs. For small radii it is
    found by multi-index hashing (see ``n_blocks``): at ``N = 100 000, radius = 10`` about 1 s against 7-9 s
    for a NumPy row-by-row scan (bench/dedupe_search.py, 2 shared CPU cores). For large radii relative to
    ``N`` the scan itself is the cheapest plan and is used.

    Args:
        hashes: ``uint64`` array ``[N]`` of 64-bit hashes.
        radius: largest Hamming distance reported, 0..64 (64 reports every pair).
        n_blocks: search plan. ``None`` (default) picks the plan a cost model predicts is fastest for
            ``N`` and ``radius``; ``1`` forces the chunked all-pairs scan; ``3..64`` forces multi-index
            hashing over that many contiguous bit blocks, probing ``sum_{k <= radius // n_blocks}
            C(bits, k)`` neighbour values per block (2 is not possible: 32-bit buckets would need 2**32
            table entries; with 3 blocks the bucket tables take about 70 MiB). The plan changes only the
            speed, never the result.

    Returns:
        ``int64`` array ``[P, 2]`` of index pairs ``(i, j)``, ``i < j``, unique, sorted lexicographically.

    Raises:
        TypeError: ``hashes`` is not a ``uint64`` ndarray, or ``radius`` / ``n_blocks`` is not an int.
        ValueError: ``hashes`` is not 1-D, or ``radius`` / ``n_blocks`` is out of range.
    """
    hashes = _check_hashes(hashes, "hashes")
    radius = _check_int(radius, "radius", 0, HASH_BITS)
    if n_blocks is None:
        n_blocks = _choose_n_blocks(hashes.size, radius)
    else:
        n_blocks = _check_int(n_blocks, "n_blocks", 1, HASH_BITS)
        if n_blocks == 2:
            raise ValueError("n_blocks must be 1 (all-pairs scan) or 3..64 (multi-index hashing), got 2")
    if n_blocks == 1:
        return _scan_pairs(hashes, radius)
    return _multi_index_pairs(hashes, radius, n_blocks)


# --------------------------------------------------------------------------------------- cosine search


def cosine_pairs(features: np.ndarray, threshold: float, *, block_size: int = 4096) -> np.ndarray:
    """Every pair of rows whose cosine similarity is at least ``threshold``.

    Rows are L2-normalised in float64 and compared tile by tile (``block_size`` x ``block_size`` tiles of
    the upper triangle of the similarity matrix), so memory stays at about ``8 * block_size ** 2`` bytes
    plus the normalised copy of ``features`` whatever ``N`` is. Computed similarities are clipped to
    [-1, 1]; pairs whose similarity lies within float64 rounding (~1e-15) of ``threshold`` may depend on the
    tiling (and parallel rows may compute as 1 - 1e-16, so ``threshold=1`` is not a reliable test for
    parallel rows); nothing else does.

    Args:
        features: real array ``[N, D]``, one feature vector per item; all finite, no all-zero row (its
            direction, hence its cosine, is undefined).
        threshold: smallest cosine similarity reported, in [-1, 1] (``-1`` reports every pair).
        block_size: tile side in rows, >= 1; changes speed and memory only.

    Returns:
        ``int64`` array ``[P, 2]`` of index pairs ``(i, j)``, ``i < j``, unique, sorted lexicographically.

    Raises:
        TypeError: ``features`` is not a real ndarray, or ``threshold`` / ``block_size`` has a wrong type.
        ValueError: wrong shape, non-finite values, an all-zero row, or an argument out of range.
    """
    if not isinstance(features, np.ndarray):
        raise TypeError(f"features must be a numpy.ndarray of shape [N, D], got {type(features).__name__}")
    if features.dtype.kind not in "iuf":
        raise TypeError(f"features must be a real (integer or float) array, got dtype {features.dtype}")
    if features.ndim != 2 or features.shape[1] == 0:
        raise ValueError(f"features must have shape [N, D] with D >= 1, got {features.shape}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    block_size = _check_int(block_size, "block_size", 1)
    unit = features.astype(np.float64)
    if not np.isfinite(unit).all():
        row = int(np.flatnonzero(~np.isfinite(unit).all(axis=1))[0])
        raise ValueError(f"features[{row}] holds NaN or inf; every feature must be finite")
    norms = np.linalg.norm(unit, axis=1)
    if (norms == 0).any():
        row = int(np.flatnonzero(norms == 0)[0])
        raise ValueError(f"features[{row}] is all zeros, its cosine similarity is undefined; fix or drop it")
    unit /= norms[:, None]

    n = unit.shape[0]
    found = []
    for row_start in range(0, n, block_size):
        row_stop = min(row_start + block_size, n)
        for col_start in range(row_start, n, block_size):
            col_stop = min(col_start + block_size, n)
            similarity = unit[row_start:row_stop] @ unit[col_start:col_stop].T
            # Rounding can leave [-1, 1] (-1 - 2e-16 for opposite rows), yet threshold -1 must mean all pairs.
            np.clip(similarity, -1.0, 1.0, out=similarity)
            i, j = np.nonzero(similarity >= threshold)
            i, j = i + row_start, j + col_start
            later = i < j
            found.append(np.stack([i[later], j[later]], axis=1))
    return _sorted_unique_pairs(np.concatenate([np.empty((0, 2), dtype=np.int64), *found]), n)


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
    n = _check_int(n, "n", 0)
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
    3. Kept items are joined when their pHashes are within ``radius`` (:func:`hamming_pairs`) or by any
       pair in ``extra_edges``; groups are the connected components (:func:`connected_groups`).

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
        extra_edges: further ``[P, 2]`` integer arrays of item index pairs (e.g. :func:`cosine_pairs`).

    Returns:
        :class:`DedupeResult`.

    Raises:
        TypeError / ValueError: naming the argument: wrong types, lengths that differ, a malformed digest,
        a label other than 0/1, a radius outside 0..64, an edge index outside ``[0, N)``, or different
        pHashes for byte-identical items.
    """
    digests = _check_sha256(sha256)
    n = len(digests)
    if n == 0:
        raise ValueError("sha256 is empty: there are no items to deduplicate")
    label = _check_labels(labels, n)
    phashes = _check_hashes(phashes, "phashes")
    if phashes.size != n:
        raise ValueError(f"phashes must hold one hash per item ({n}), got {phashes.size}")
    radius = _check_int(radius, "radius", 0, HASH_BITS)
    if isinstance(extra_edges, np.ndarray) or not isinstance(extra_edges, Sequence):
        raise TypeError(
            "extra_edges must be a sequence of [P, 2] arrays (wrap a single array in a tuple), "
            f"got {type(extra_edges).__name__}"
        )
    extras = [_check_pairs(edges, n, f"extra_edges[{k}]") for k, edges in enumerate(extra_edges)]

    index = np.arange(n)
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
    duplicate = ~conflict & (representative != index)
    keep = ~conflict & ~duplicate
    drop_reason: list[str | None] = [None] * n
    for item in np.flatnonzero(duplicate).tolist():
        drop_reason[item] = "exact_duplicate"
    for item in np.flatnonzero(conflict).tolist():
        drop_reason[item] = "label_conflict"

    kept = np.flatnonzero(keep)
    # kept is increasing, so mapping the subset's pairs back keeps them sorted with i < j.
    phash_pairs = kept[hamming_pairs(phashes[kept], radius)]
    extra_pairs = []
    n_unused = 0
    for edges in extras:
        mapped = representative[edges]
        useful = (mapped[:, 0] != mapped[:, 1]) & keep[mapped].all(axis=1)
        n_unused += int((~useful).sum())
        extra_pairs.append(_sorted_unique_pairs(mapped[useful], n))
    same_bytes = np.stack([representative, index], axis=1)[representative != index]
    group = connected_groups(n, same_bytes, phash_pairs, *extra_pairs)

    sources = [(PHASH_SOURCE, phash_pairs)] + [(f"extra_{k}", p) for k, p in enumerate(extra_pairs)]
    all_pairs = np.concatenate([p for _, p in sources])
    near = pd.DataFrame(
        {
            "i": all_pairs[:, 0],
            "j": all_pairs[:, 1],
            "hamming": np.bitwise_count(phashes[all_pairs[:, 0]] ^ phashes[all_pairs[:, 1]]).astype(np.int64),
            "source": np.repeat([name for name, _ in sources], [len(p) for _, p in sources]),
        }
    )

    in_set = copies[codes] > 1
    set_order = np.lexsort((index, representative))
    exact_rows = set_order[(in_set & ~conflict)[set_order]]
    exact = pd.DataFrame(
        {
            "sha256": np.asarray(digests, dtype=object)[exact_rows],
            "index": exact_rows,
            "label": label[exact_rows],
            "keep": keep[exact_rows],
        }
    )
    conflict_rows = set_order[conflict[set_order]]
    conflicts = pd.DataFrame(
        {
            "sha256": np.asarray(digests, dtype=object)[conflict_rows],
            "index": conflict_rows,
            "label": label[conflict_rows],
        }
    )

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

    summary = {
        "n_items": n,
        "n_kept": len(kept),
        "n_exact_duplicates_dropped": int(duplicate.sum()),
        "n_label_conflicts_dropped": int(conflict.sum()),
        "n_groups": len(group_ids),
        "largest_group": int(size.max(initial=0)),
        "n_mixed_label_groups": len(mixed),
        **{f"n_pairs_{name}": len(p) for name, p in sources},
        "n_extra_edges_unused": n_unused,
    }
    return DedupeResult(
        group=group,
        keep=keep,
        drop_reason=drop_reason,
        exact_duplicates=exact,
        label_conflicts=conflicts,
        near_duplicate_pairs=near,
        mixed_label_groups=mixed,
        summary=summary,
    )
