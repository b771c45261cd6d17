"""Tests for roadwork.data.dedupe and roadwork.data.pairs.

Oracles: a Python double loop with ``int.bit_count`` for Hamming pairs, scikit-learn's dense
``cosine_similarity`` for cosine pairs, a breadth-first search over an adjacency dict for groups,
``imagehash.phash`` itself for pHash values, and hand-written expectations for the keep/drop rules.
"""

from __future__ import annotations

import io
from collections import deque
from pathlib import Path

import imagehash
import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics.pairwise import cosine_similarity

from roadwork.data.dedupe import DedupeResult, compute_phashes, connected_groups, find_duplicate_groups
from roadwork.data.pairs import cosine_pairs, hamming_pairs

# --------------------------------------------------------------------------------------------- oracles


def _hashes_with_near_copies(n_random: int, seed: int) -> np.ndarray:
    """Random hashes plus exact repeats and copies with 1..12 flipped bits, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, np.iinfo(np.uint64).max, n_random, dtype=np.uint64, endpoint=True)
    copies = []
    for k in range(n_random // 2):
        flipped = int(base[k])
        for bit in rng.choice(64, k % 13, replace=False):
            flipped ^= 1 << int(bit)
        copies.append(flipped)
    hashes = np.concatenate([base, base[:5], np.array(copies, dtype=np.uint64)])
    return hashes[rng.permutation(hashes.size)]


def _distance_table(hashes: np.ndarray) -> dict[tuple[int, int], int]:
    values = [int(h) for h in hashes]
    return {
        (i, j): (values[i] ^ values[j]).bit_count()
        for i in range(len(values))
        for j in range(i + 1, len(values))
    }


def _oracle_pairs(table: dict[tuple[int, int], int], radius: int) -> list[tuple[int, int]]:
    return sorted(pair for pair, distance in table.items() if distance <= radius)


def _as_list(pairs: np.ndarray) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in pairs]


def _assert_pair_format(pairs: np.ndarray) -> None:
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
    assert (pairs[:, 0] < pairs[:, 1]).all()
    codes = pairs[:, 0] * (pairs.max(initial=0) + 1) + pairs[:, 1]
    assert (np.diff(codes) > 0).all(), "pairs must be unique and sorted lexicographically"


def _bfs_groups(n: int, edges: list[tuple[int, int]]) -> list[int]:
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges:
        neighbours[a].add(b)
        neighbours[b].add(a)
    group = [-1] * n
    for start in range(n):  # ascending, so the first item reached is the component's smallest
        if group[start] >= 0:
            continue
        queue = deque([start])
        group[start] = start
        while queue:
            for other in neighbours[queue.popleft()]:
                if group[other] < 0:
                    group[other] = start
                    queue.append(other)
    return group


def _partition(ids: np.ndarray, members: np.ndarray, names: list[str]) -> set[frozenset[str]]:
    """Groups of ``members`` as sets of names, independent of ids and order."""
    out: dict[int, set[str]] = {}
    for item in members.tolist():
        out.setdefault(int(ids[item]), set()).add(names[item])
    return {frozenset(v) for v in out.values()}


# --------------------------------------------------------------------------------------- hamming_pairs


@pytest.fixture(scope="module")
def hashes() -> np.ndarray:
    return _hashes_with_near_copies(160, seed=3)


@pytest.fixture(scope="module")
def table(hashes: np.ndarray) -> dict[tuple[int, int], int]:
    return _distance_table(hashes)


def test_hamming_pairs_equals_brute_force_at_every_radius(hashes: np.ndarray, table: dict) -> None:
    assert hashes.size == 245
    assert any(d == 0 for d in table.values()), "the fixture must contain equal hashes"
    for radius in range(65):
        pairs = hamming_pairs(hashes, radius)
        _assert_pair_format(pairs)
        assert _as_list(pairs) == _oracle_pairs(table, radius), f"radius {radius}"


@pytest.mark.parametrize("n_blocks", [1, 3, 4, 5, 6, 7, 11, 16, 64])
def test_every_search_plan_equals_brute_force(hashes: np.ndarray, table: dict, n_blocks: int) -> None:
    radii = range(13) if n_blocks < 16 else (0, 5, 17, 40, 64)
    for radius in radii:
        pairs = hamming_pairs(hashes, radius, n_blocks=n_blocks)
        assert _as_list(pairs) == _oracle_pairs(table, radius), f"radius {radius}, n_blocks {n_blocks}"


def test_hamming_pairs_on_clustered_hashes_matches_row_scan() -> None:
    # One tight cluster of near copies: many items share block values, so bucket runs are long.
    rng = np.random.default_rng(11)
    centre = rng.integers(0, np.iinfo(np.uint64).max, dtype=np.uint64, endpoint=True)
    noise = rng.integers(0, 1 << 6, 400, dtype=np.uint64) << rng.integers(0, 58, 400).astype(np.uint64)
    hashes = np.concatenate([centre ^ noise, rng.integers(0, 2**63, 600, dtype=np.uint64)])
    rows = []
    for i in range(hashes.size - 1):
        later = np.flatnonzero(np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= 7) + i + 1
        rows.append(np.stack([np.full(later.size, i), later], axis=1))
    expected = np.concatenate(rows)
    assert len(expected) > 10_000
    for n_blocks in (None, 4, 8):
        assert np.array_equal(hamming_pairs(hashes, 7, n_blocks=n_blocks), expected), n_blocks


def test_hamming_pairs_small_inputs() -> None:
    assert hamming_pairs(np.empty(0, dtype=np.uint64), 10).shape == (0, 2)
    assert hamming_pairs(np.array([7], dtype=np.uint64), 64).shape == (0, 2)
    top = np.uint64(1) << np.uint64(63)
    pairs = hamming_pairs(np.array([top, 0, top, 1], dtype=np.uint64), 0)
    assert _as_list(pairs) == [(0, 2)]
    assert _as_list(hamming_pairs(np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64), 63)) == []
    assert _as_list(hamming_pairs(np.array([0, np.iinfo(np.uint64).max], dtype=np.uint64), 64)) == [(0, 1)]


@pytest.mark.parametrize(
    ("hashes", "radius", "kwargs", "error", "match"),
    [
        ([1, 2], 3, {}, TypeError, "hashes must be a numpy.ndarray"),
        (np.array([1, 2], dtype=np.int64), 3, {}, TypeError, "hashes must have dtype uint64"),
        (np.zeros((2, 2), dtype=np.uint64), 3, {}, ValueError, "hashes must be 1-D"),
        (np.zeros(2, dtype=np.uint64), 65, {}, ValueError, r"radius must be in \[0, 64\]"),
        (np.zeros(2, dtype=np.uint64), -1, {}, ValueError, r"radius must be in \[0, 64\]"),
        (np.zeros(2, dtype=np.uint64), True, {}, TypeError, "radius must be an int"),
        (np.zeros(2, dtype=np.uint64), 3.0, {}, TypeError, "radius must be an int"),
        (np.zeros(2, dtype=np.uint64), 3, {"n_blocks": 2}, ValueError, "n_blocks must be 1 .* or 3..64"),
        (np.zeros(2, dtype=np.uint64), 3, {"n_blocks": 65}, ValueError, r"n_blocks must be in \[1, 64\]"),
    ],
)
def test_hamming_pairs_rejects_bad_input(hashes, radius, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        hamming_pairs(hashes, radius, **kwargs)


# ---------------------------------------------------------------------------------------- cosine_pairs


def _features(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(70, 16))
    near = base[:30] * rng.uniform(0.5, 2.0, (30, 1)) + rng.normal(scale=0.15, size=(30, 16))
    return np.concatenate([base, near, -base[:5]])


@pytest.mark.parametrize("block_size", [1, 7, 64, 4096])
def test_cosine_pairs_equals_dense_brute_force(block_size: int) -> None:
    features = _features(0)
    dense = cosine_similarity(features)
    upper = dense[np.triu_indices(len(dense), k=1)]
    for threshold in (-0.5, 0.0, 0.5, 0.9, 0.99):
        # Pairs within rounding of the threshold could go either way; the fixture has none.
        assert not (np.abs(upper - threshold) < 1e-9).any()
        pairs = cosine_pairs(features, threshold, block_size=block_size)
        _assert_pair_format(pairs)
        i, j = np.nonzero(np.triu(dense >= threshold, k=1))
        assert _as_list(pairs) == list(zip(i.tolist(), j.tolist(), strict=True)), f"t={threshold}"
    # -1 reports every pair, also the exactly opposite rows whose computed cosine rounds below -1.
    assert len(cosine_pairs(features, -1.0, block_size=block_size)) == len(upper)


def test_cosine_pairs_scale_invariant_and_integer_input() -> None:
    features = np.array([[1, 0], [3, 0], [0, 2], [1, 1]])
    assert _as_list(cosine_pairs(features, 0.999)) == [(0, 1)]
    assert _as_list(cosine_pairs(features, 0.7)) == [(0, 1), (0, 3), (1, 3), (2, 3)]
    assert cosine_pairs(np.ones((1, 3)), 0.5).shape == (0, 2)


@pytest.mark.parametrize(
    ("features", "threshold", "error", "match"),
    [
        ([[1.0, 0.0]], 0.5, TypeError, "features must be a numpy.ndarray"),
        (np.ones(3), 0.5, ValueError, r"features must have shape \[N, D\]"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), 0.5, ValueError, r"features\[1\] is all zeros"),
        (np.array([[1.0, np.nan]]), 0.5, ValueError, r"features\[0\] holds NaN"),
        (np.array([["a"]]), 0.5, TypeError, "features must be a real"),
        (np.ones((2, 2)), 1.5, ValueError, r"threshold must be a cosine similarity in \[-1, 1\]"),
        (np.ones((2, 2)), "0.5", TypeError, "threshold must be a real number"),
    ],
)
def test_cosine_pairs_rejects_bad_input(features, threshold, error, match) -> None:
    with pytest.raises(error, match=match):
        cosine_pairs(features, threshold)


def test_cosine_pairs_rejects_bad_block_size() -> None:
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        cosine_pairs(np.ones((2, 2)), 0.5, block_size=0)


# ------------------------------------------------------------------------------------ connected_groups


@pytest.mark.parametrize("seed", range(5))
def test_connected_groups_equals_bfs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 80
    lists = [rng.integers(0, n, (int(rng.integers(0, 40)), 2)) for _ in range(3)]
    lists.append(np.empty((0, 2), dtype=np.int32))
    expected = _bfs_groups(n, [(int(a), int(b)) for edges in lists for a, b in edges])
    groups = connected_groups(n, *lists)
    assert groups.dtype == np.int64
    assert groups.tolist() == expected
    # Order and direction of edges do not matter.
    shuffled = np.concatenate(lists)[rng.permutation(sum(len(e) for e in lists))][:, ::-1]
    assert connected_groups(n, shuffled).tolist() == expected


def test_connected_groups_ids_are_smallest_member() -> None:
    assert connected_groups(5, np.array([[4, 2], [2, 3], [1, 1]])).tolist() == [0, 1, 2, 2, 2]
    assert connected_groups(3).tolist() == [0, 1, 2]
    assert connected_groups(0).tolist() == []


@pytest.mark.parametrize(
    ("n", "edges", "error", "match"),
    [
        (3, np.array([[0, 3]]), ValueError, r"edge_lists\[1\] holds index pair \[0, 3\] outside \[0, 3\)"),
        (3, np.array([[-1, 0]]), ValueError, r"edge_lists\[1\] holds index pair"),
        (3, np.array([0, 1]), ValueError, r"edge_lists\[1\] must have shape \[P, 2\]"),
        (3, np.array([[0.0, 1.0]]), TypeError, r"edge_lists\[1\] must hold integer"),
        (3, [[0, 1]], TypeError, r"edge_lists\[1\] must be a numpy.ndarray"),
        (-1, np.empty((0, 2), dtype=np.int64), ValueError, "n must be >= 0"),
    ],
)
def test_connected_groups_rejects_bad_input(n, edges, error, match) -> None:
    with pytest.raises(error, match=match):
        connected_groups(n, np.empty((0, 2), dtype=np.int64), edges)


# ------------------------------------------------------------------------------- find_duplicate_groups


def _sha(name: str) -> str:
    return name.encode().hex().ljust(64, "0")[:64]


def _crafted() -> tuple[list[str], list[int], np.ndarray, list[str]]:
    """Eleven items with every case; names say what each is."""
    far = [0x0F0F_0F0F_0F0F_0F0F, 0x3333_3333_CCCC_CCCC, 0x5555_AAAA_5555_AAAA, 0x00FF_00FF_FF00_FF00]
    a = 0x1234_5678_9ABC_DEF0
    rows = [
        # name, content, label, phash
        ("A", "A", 1, a),
        ("C_conflict", "C", 0, far[0]),
        ("A_copy", "A", 1, a),  # exact duplicate of A, same label
        ("C_conflict_copy", "C", 1, far[0]),  # same bytes as C_conflict, other label
        ("B_near_A", "B", 1, a ^ 0b111),  # 3 bits from A
        ("D_near_B", "D", 0, a ^ 0b111111),  # 3 bits from B, 6 from A: joined only through B
        ("E", "E", 0, far[1]),
        ("F", "F", 1, far[2]),
        ("A_copy2", "A", 1, a),
        ("G", "G", 0, far[3]),
        ("E_near", "E2", 0, far[1] ^ (1 << 63)),
    ]
    names = [r[0] for r in rows]
    return [_sha(r[1]) for r in rows], [r[2] for r in rows], np.array([r[3] for r in rows], np.uint64), names


def test_find_duplicate_groups_crafted_cases() -> None:
    sha, labels, phashes, names = _crafted()
    extra = np.array([[7, 9], [8, 6], [3, 9]])  # F-G; A_copy2-E (via A); conflict copy-G (unused)
    result = find_duplicate_groups(sha, labels, phashes, radius=4, extra_edges=[extra])
    assert isinstance(result, DedupeResult)

    by_name = dict(zip(names, range(len(names)), strict=True))
    assert result.keep.tolist() == [
        n not in {"A_copy", "A_copy2", "C_conflict", "C_conflict_copy"} for n in names
    ]
    assert result.drop_reason == [
        None,
        "label_conflict",
        "exact_duplicate",
        "label_conflict",
        None,
        None,
        None,
        None,
        "exact_duplicate",
        None,
        None,
    ]
    # Chain A~B~D plus the extra edge A_copy2-E (standing for A-E) with E~E_near: one group, id 0 (A).
    group_a = {by_name[n] for n in ("A", "A_copy", "A_copy2", "B_near_A", "D_near_B", "E", "E_near")}
    assert {i for i in range(11) if result.group[i] == 0} == group_a
    assert result.group[by_name["F"]] == result.group[by_name["G"]] == by_name["F"]
    assert result.group[by_name["C_conflict"]] == result.group[by_name["C_conflict_copy"]] == 1

    exact = result.exact_duplicates
    assert exact["index"].tolist() == [0, 2, 8]
    assert exact["keep"].tolist() == [True, False, False]
    assert set(exact["sha256"]) == {_sha("A")} and exact["label"].tolist() == [1, 1, 1]
    conflicts = result.label_conflicts
    assert conflicts["index"].tolist() == [1, 3] and conflicts["label"].tolist() == [0, 1]

    near = result.near_duplicate_pairs
    assert list(near.columns) == ["i", "j", "hamming", "source"]
    assert near.to_dict("records") == [
        {"i": 0, "j": 4, "hamming": 3, "source": "phash"},
        {"i": 4, "j": 5, "hamming": 3, "source": "phash"},
        {"i": 6, "j": 10, "hamming": 1, "source": "phash"},
        {"i": 0, "j": 6, "hamming": int(np.bitwise_count(phashes[0] ^ phashes[6])), "source": "extra_0"},
        {"i": 7, "j": 9, "hamming": int(np.bitwise_count(phashes[7] ^ phashes[9])), "source": "extra_0"},
    ]

    mixed = result.mixed_label_groups
    assert mixed["group"].tolist() == [0, 7]
    assert mixed.loc[0, "members"] == [0, 4, 5, 6, 10]
    assert (mixed.loc[0, "n_label_0"], mixed.loc[0, "n_label_1"], mixed.loc[0, "size"]) == (3, 2, 5)
    assert mixed.loc[1, "members"] == [7, 9]

    assert result.summary == {
        "n_items": 11,
        "n_kept": 7,
        "n_exact_duplicates_dropped": 2,
        "n_label_conflicts_dropped": 2,
        "n_groups": 2,
        "largest_group": 5,
        "n_mixed_label_groups": 2,
        "n_pairs_phash": 3,
        "n_pairs_extra_0": 2,
        "n_extra_edges_unused": 1,
    }


def test_find_duplicate_groups_partition_does_not_depend_on_input_order() -> None:
    rng = np.random.default_rng(5)
    hashes = _hashes_with_near_copies(60, seed=8)
    n = hashes.size
    # Content identity: a few byte-identical sets (same hash, same label), the rest distinct.
    content = [f"item{i}" for i in range(n)]
    for source, copy in ((0, 50), (0, 51), (3, 70), (9, 12)):
        content[copy] = content[source]
        hashes[copy] = hashes[source]
    labels = [int(rng.integers(0, 2)) for _ in range(n)]
    for source, copy in ((0, 50), (0, 51), (3, 70), (9, 12)):
        labels[copy] = labels[source]
    sha = [_sha(c) for c in content]
    embeddings = np.array([[i % 7, 1] for i in range(n)])
    extra = cosine_pairs(embeddings, 0.99999)

    reference = find_duplicate_groups(sha, labels, hashes, radius=6, extra_edges=[extra])
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(n)
        inverse = np.argsort(perm)
        result = find_duplicate_groups(
            [sha[p] for p in perm],
            [labels[p] for p in perm],
            hashes[perm],
            radius=6,
            extra_edges=[inverse[extra]],
        )
        kept_content = sorted(content[p] for p in perm[result.keep])
        assert kept_content == sorted(np.asarray(content)[reference.keep].tolist())
        assert _partition(
            result.group, np.flatnonzero(result.keep), [content[p] for p in perm]
        ) == _partition(reference.group, np.flatnonzero(reference.keep), content)
        assert result.summary == reference.summary
    # Same inputs, same outputs.
    again = find_duplicate_groups(sha, labels, hashes, radius=6, extra_edges=[extra])
    assert np.array_equal(again.group, reference.group)
    pd.testing.assert_frame_equal(again.near_duplicate_pairs, reference.near_duplicate_pairs)


def test_find_duplicate_groups_groups_equal_bfs_over_kept_items() -> None:
    hashes = _hashes_with_near_copies(100, seed=2)
    n = hashes.size
    sha = [_sha(f"x{i}") for i in range(n)]
    labels = [i % 2 for i in range(n)]
    extra = np.array([[0, 1], [2, 3], [1, 5]])
    result = find_duplicate_groups(sha, labels, hashes, radius=8, extra_edges=[extra, extra[:1]])
    table = _distance_table(hashes)
    edges = [*_oracle_pairs(table, 8), (0, 1), (2, 3), (1, 5)]
    assert result.group.tolist() == _bfs_groups(n, edges)
    assert result.keep.all() and result.summary["n_pairs_extra_1"] == 1


def test_find_duplicate_groups_without_near_duplicates() -> None:
    result = find_duplicate_groups(
        [_sha("a"), _sha("b")], np.array([0, 1]), np.array([0, 2**64 - 1], np.uint64), radius=10
    )
    assert result.group.tolist() == [0, 1]
    assert result.near_duplicate_pairs.empty and result.mixed_label_groups.empty
    assert result.exact_duplicates.empty and result.label_conflicts.empty
    assert result.summary["n_groups"] == 2 and result.summary["largest_group"] == 1


def test_find_duplicate_groups_when_everything_conflicts() -> None:
    result = find_duplicate_groups([_sha("a"), _sha("a")], [0, 1], np.zeros(2, np.uint64), radius=3)
    assert not result.keep.any()
    assert result.summary["n_groups"] == 0 and result.summary["largest_group"] == 0


def _valid() -> dict:
    return {
        "sha256": [_sha("a"), _sha("b")],
        "labels": [0, 1],
        "phashes": np.zeros(2, np.uint64),
        "radius": 3,
    }


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"sha256": [_sha("a")]}, ValueError, r"labels must be 1-D with one label per sha256 \(1\)"),
        ({"sha256": _sha("a")}, TypeError, "sha256 must be a sequence"),
        ({"sha256": [_sha("a"), "ABC"]}, ValueError, r"sha256\[1\] = 'ABC' is not a 64-character"),
        ({"sha256": [_sha("a"), "AB" * 32]}, ValueError, r"sha256\[1\] = 'ABAB"),
        ({"sha256": []}, ValueError, "sha256 is empty"),
        ({"labels": [0, 2]}, ValueError, r"labels\[1\] = 2"),
        ({"labels": [0.0, 1.0]}, TypeError, "labels must be integers"),
        ({"labels": [0]}, ValueError, "labels must be 1-D with one label per sha256"),
        ({"phashes": np.zeros(2, np.int64)}, TypeError, "phashes must have dtype uint64"),
        ({"phashes": np.zeros(3, np.uint64)}, ValueError, r"phashes must hold one hash per item \(2\)"),
        ({"radius": 65}, ValueError, r"radius must be in \[0, 64\]"),
        ({"extra_edges": np.array([[0, 1]])}, TypeError, "extra_edges must be a sequence of"),
        ({"extra_edges": [np.array([[0, 2]])]}, ValueError, r"extra_edges\[0\] holds index pair \[0, 2\]"),
        (
            {"sha256": [_sha("a"), _sha("a")], "phashes": np.array([0, 1], np.uint64)},
            ValueError,
            r"phashes\[1\] differs from phashes\[0\] although both items have the same sha256",
        ),
    ],
)
def test_find_duplicate_groups_rejects_bad_input(change, error, match) -> None:
    arguments = {**_valid(), **change}
    with pytest.raises(error, match=match):
        find_duplicate_groups(
            arguments["sha256"],
            arguments["labels"],
            arguments["phashes"],
            radius=arguments["radius"],
            extra_edges=arguments.get("extra_edges", ()),
        )


# ------------------------------------------------------------------------------------- compute_phashes


def _sample(name: str) -> Image.Image:
    with matplotlib.cbook.get_sample_data(name) as handle:
        return Image.open(io.BytesIO(handle.read())).convert("RGB")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("phash")
    photo = _sample("grace_hopper.jpg")
    files = {
        "photo": folder / "photo.png",
        "resized_jpeg": folder / "resized.jpg",
        "cropped": folder / "cropped.webp",
        "unrelated": folder / "unrelated.png",
        "unrelated_logo": folder / "logo.png",
    }
    photo.save(files["photo"])
    photo.resize((photo.width // 3, photo.height // 3), Image.Resampling.BILINEAR).save(
        files["resized_jpeg"], quality=60
    )
    photo.crop((12, 12, photo.width - 12, photo.height - 12)).save(files["cropped"], quality=80)
    _sample("Minduka_Present_Blue_Pack.png").save(files["unrelated"])
    _sample("logo2.png").save(files["unrelated_logo"])
    return files


def test_compute_phashes_matches_imagehash_and_finds_near_copies(image_files: dict[str, Path]) -> None:
    names = list(image_files)
    hashes = compute_phashes([image_files[n] for n in names], show_progress=False)
    assert hashes.dtype == np.uint64 and hashes.shape == (len(names),)
    for name, value in zip(names, hashes.tolist(), strict=True):
        with Image.open(image_files[name]) as image:
            assert value == int(str(imagehash.phash(image.convert("RGB"))), 16), name
    distance = {n: int(np.bitwise_count(hashes[0] ^ h)) for n, h in zip(names, hashes, strict=True)}
    assert distance["resized_jpeg"] <= 10 and distance["cropped"] <= 10
    assert distance["unrelated"] > 10 and distance["unrelated_logo"] > 10
    assert _as_list(hamming_pairs(hashes, 10)) == [(0, 1), (0, 2), (1, 2)]


def test_compute_phashes_small_hash_size_and_str_paths(image_files: dict[str, Path]) -> None:
    hashes = compute_phashes([str(image_files["photo"])], hash_size=4, show_progress=False)
    with Image.open(image_files["photo"]) as image:
        assert int(hashes[0]) == int(str(imagehash.phash(image, hash_size=4)), 16)
    assert int(hashes[0]) < 1 << 16


def test_compute_phashes_rejects_bad_input(image_files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"paths\[1\] = .*broken.jpg cannot be hashed: not_an_image"):
        compute_phashes([image_files["photo"], broken], show_progress=False)
    with pytest.raises(TypeError, match="paths must be a sequence"):
        compute_phashes(image_files["photo"], show_progress=False)
    with pytest.raises(TypeError, match=r"paths\[0\] must be a pathlib.Path"):
        compute_phashes([1], show_progress=False)
    with pytest.raises(ValueError, match=r"hash_size must be in \[2, 8\]"):
        compute_phashes([image_files["photo"]], hash_size=9, show_progress=False)
