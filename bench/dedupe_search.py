"""Benchmark: roadwork.data.pairs.hamming_pairs (multi-index hashing) vs a plain NumPy all-pairs scan.

Data (seeded): N random 64-bit hashes of which ``--planted`` are near copies of other hashes in the set, each
with 0..10 bits flipped (uniformly; 0 flips makes an exact duplicate), shuffled. Both methods search all
pairs within ``--radius`` in the same run; the script prints both wall times, the speed-up and both pair
counts, and fails (AssertionError) unless the two pair sets are identical.

The reference scan is the naive method: for each i, XOR hashes[i] with hashes[i+1:], popcount, np.nonzero.

Usage: python bench/dedupe_search.py [--n 100000] [--radius 10] [--seed 0] [--planted 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from roadwork.data.pairs import hamming_pairs

MAX_FLIPS = 10


def make_hashes(n: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` shuffled hashes with ``planted`` near copies, and the planted pairs ``[planted, 2]`` (i < j)."""
    rng = np.random.default_rng(seed)
    originals = rng.integers(0, np.iinfo(np.uint64).max, n - planted, dtype=np.uint64, endpoint=True)
    source = rng.choice(n - planted, planted, replace=False)
    flips = rng.integers(0, MAX_FLIPS + 1, planted)
    # Row k flips the bits at the first flips[k] positions of a random permutation of the 64 bit positions.
    positions = np.argsort(rng.random((planted, 64)), axis=1).astype(np.uint64)
    chosen = np.arange(64)[None, :] < flips[:, None]
    masks = np.bitwise_or.reduce(np.where(chosen, np.uint64(1) << positions, np.uint64(0)), axis=1)
    hashes = np.concatenate([originals, originals[source] ^ masks])
    place = rng.permutation(n)  # place[k] is where hash k ends up
    shuffled = np.empty_like(hashes)
    shuffled[place] = hashes
    pairs = np.stack([place[source], place[n - planted + np.arange(planted)]], axis=1)
    return shuffled, np.sort(pairs, axis=1)


def naive_pairs(hashes: np.ndarray, radius: int) -> np.ndarray:
    """All pairs within ``radius``: one row at a time against every later hash."""
    found = [np.empty((0, 2), dtype=np.int64)]
    for i in range(hashes.size - 1):
        later = np.nonzero(np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= radius)[0]
        if later.size:
            found.append(np.stack([np.full(later.size, i), later + i + 1], axis=1))
    return np.concatenate(found).astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="number of hashes (default 100000)")
    parser.add_argument("--radius", type=int, default=10, help="Hamming radius, 0..64 (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    parser.add_argument("--planted", type=int, default=1_000, help="near copies planted (default 1000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of hamming_pairs (best kept)")
    args = parser.parse_args(argv)
    if args.n < 2 or not 0 <= args.radius <= 64 or not 0 <= args.planted <= args.n // 2 or args.repeats < 1:
        parser.error("need --n >= 2, 0 <= --radius <= 64, 0 <= --planted <= n/2, --repeats >= 1")

    hashes, planted = make_hashes(args.n, args.planted, args.seed)
    print(
        f"N={args.n} hashes ({args.planted} planted near copies, 0-{MAX_FLIPS} bits flipped), "
        f"radius {args.radius}, seed {args.seed}"
    )

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = hamming_pairs(hashes, args.radius)
        times.append(time.perf_counter() - start)
    ours_s = min(times)
    print(f"hamming_pairs : {ours_s:9.3f} s (best of {args.repeats})  {len(ours)} pairs")

    start = time.perf_counter()
    reference = naive_pairs(hashes, args.radius)
    naive_s = time.perf_counter() - start
    print(f"naive scan    : {naive_s:9.3f} s  {len(reference)} pairs")
    print(f"speed-up      : {naive_s / ours_s:9.1f}x")

    assert np.array_equal(ours, reference), "pair sets differ between hamming_pairs and the naive scan"
    distance = np.bitwise_count(hashes[planted[:, 0]] ^ hashes[planted[:, 1]])
    expected = planted[distance <= args.radius]
    found = np.isin(expected[:, 0] * args.n + expected[:, 1], ours[:, 0] * args.n + ours[:, 1]).sum()
    print(f"pair sets identical; planted pairs within radius found: {found}/{len(expected)}")


if __name__ == "__main__":
    main()
