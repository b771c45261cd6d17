"""Near-duplicate pair search: every pair of 64-bit hashes within a Hamming radius (:func:`hamming_pairs`)
and every pair of feature rows whose cosine similarity reaches a threshold (:func:`cosine_pairs`).

Pair lists share one format, here and in :mod:`roadwork.data.dedupe`: an ``int64`` array of shape
``[P, 2]`` whose rows ``(i, j)`` have ``i < j``, are unique and sorted lexicographically
(:func:`sorted_unique_pairs`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from roadwork.validation import check_int

HASH_BITS = 64

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


def check_hashes(hashes: object, name: str) -> np.ndarray:
    """``hashes`` checked to be a 1-D ``uint64`` array (one 64-bit hash per item)."""
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


def sorted_unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    """``pairs`` (any direction, repeats allowed) as the pair format: ``i < j``, unique, sorted."""
    low, high = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    codes = np.unique(low.astype(np.int64) * n + high)
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


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
    return sorted_unique_pairs(np.concatenate(found), n)


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
    hashes = check_hashes(hashes, "hashes")
    radius = check_int(radius, "radius", 0, HASH_BITS)
    if n_blocks is None:
        n_blocks = _choose_n_blocks(hashes.size, radius)
    else:
        n_blocks = check_int(n_blocks, "n_blocks", 1, HASH_BITS)
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
    block_size = check_int(block_size, "block_size", 1)
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
    return sorted_unique_pairs(np.concatenate([np.empty((0, 2), dtype=np.int64), *found]), n)
