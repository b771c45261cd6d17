"""Tests for roadwork.data.images (decoding) and roadwork.data.ingest (the ingest library).

A crafted corpus covers every quarantine reason; expectations are written out by hand per file (the oracle),
and pixel checks compare against numpy / plain Pillow computations of the same quantity.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFile

from roadwork.data.images import (
    ImageRejected,
    decode_image,
    downscale_short_side,
    open_image,
    pillow_pixel_limit,
    sha256_file,
)
from roadwork.data.ingest import MANIFEST_COLUMNS, QUARANTINE_REASONS, IngestResult, ingest

WORKING_MIN_SIDE = 16


# ---------------------------------------------------------------------------------------------- builders


def _noise(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    return _encode(Image.fromarray(_noise(size[1], size[0], seed)), "JPEG", quality=90)


def _png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    return _encode(Image.fromarray(_noise(size[1], size[0], seed)), "PNG")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height RGB but holds no pixel data: a decompression-bomb stand-in."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def _gif_header_only(width: int, height: int) -> bytes:
    screen = struct.pack("<HH", width, height) + b"\x00\x00\x00"
    descriptor = b"," + struct.pack("<HHHH", 0, 0, width, height) + b"\x00"
    return b"GIF89a" + screen + descriptor + b"\x02\x00;"


def _two_colour(width: int, height: int) -> np.ndarray:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape; display after a 90 degree clockwise turn
    return _encode(Image.fromarray(_two_colour(64, 32)), "JPEG", quality=95, exif=exif.tobytes())


def _rgba_png() -> tuple[bytes, np.ndarray]:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3] = _noise(20, 20, 7)
    rgba[..., 3] = np.linspace(0, 255, 20, dtype=np.uint8)[None, :]
    return _encode(Image.fromarray(rgba), "PNG"), rgba


def _sixteen_bit_png() -> tuple[bytes, np.ndarray]:
    values = np.tile(np.array([0, 1000, 32896, 40000, 65535], dtype=np.uint16), (20, 4))
    return _encode(Image.fromarray(values), "PNG"), values


def _cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (24, 24), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red


def _grey_png() -> tuple[bytes, np.ndarray]:
    grey = _noise(20, 30, 11)[..., 0]
    return _encode(Image.fromarray(grey), "PNG"), grey


def _truncated_jpeg() -> bytes:
    whole = _jpeg(5, (128, 96))
    return whole[: len(whole) // 2]


# The corpus: path -> bytes for every regular file, plus the expected outcome of each input.
KEPT_FILES: dict[str, int] = {
    "roadwork/good_a.jpg": 1,
    "roadwork/dup_of_a.jpg": 1,
    "roadwork/sub/nested/good_b.png": 1,
    "roadwork/alpha.png": 1,
    "roadwork/EXIF_ROT.JPG": 1,
    "roadwork/cmyk.jpg": 1,
    "1/numeric_folder.webp": 1,
    "no_roadwork/good_c.jpg": 0,
    "no_roadwork/sixteen.png": 0,
    "no_roadwork/grey.png": 0,
    "0/numeric_folder.bmp": 0,
}
QUARANTINED_FILES: dict[str, str] = {
    "no_roadwork/truncated.jpg": "truncated",
    "no_roadwork/empty.jpg": "empty_file",
    "no_roadwork/text.jpg": "not_an_image",
    "no_roadwork/tiny.png": "too_small",
    "no_roadwork/bomb.png": "too_many_pixels",
    "no_roadwork/gif_bomb.png": "too_many_pixels",  # GIF bytes: decoders sniff content, not names
    "no_roadwork/outside_link.jpg": "symlink_outside_data",
    "roadwork/notes.txt": "unsupported_extension",
    "no_roadwork/animation.gif": "unsupported_extension",
    "misc/whatever.jpg": "unknown_label",
    "stray.jpg": "unknown_label",
}
PARQUET_ROWS: list[tuple[bytes | None, int | None, str | None, str]] = [
    # (image bytes, label, scene_description, expected outcome: "kept" or a reason code)
    (_jpeg(20), 1, "cones and a barrier on the right lane", "kept"),
    (_jpeg(21), 0, None, "kept"),
    (_jpeg(22), 0, "workers digging behind barriers", "description_contradicts_label"),
    (_jpeg(23), 1, "", "description_contradicts_label"),
    (_jpeg(24), 2, "roadwork", "unknown_label"),
    (_jpeg(25), None, "roadwork", "unknown_label"),
    (b"", 1, "roadwork ahead", "empty_file"),
    (b"not an image at all", 1, "roadwork ahead", "not_an_image"),
]
STRUCT_ROWS = 20  # more than one read batch, so row numbering across batches is exercised


def _struct_row(i: int) -> tuple[bytes, int, str]:
    label = i % 2
    return _png(100 + i, (24, 20)), label, f"excavator number {i}" if label else ""


def _write_parquet(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=7)


def _build_corpus(root: Path) -> Path:
    """Write the crafted corpus under root/data (plus a target outside it); return the data folder."""
    data = root / "data"
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(_jpeg(99))
    rgba, _ = _rgba_png()
    sixteen, _ = _sixteen_bit_png()
    grey, _ = _grey_png()
    good_a = _jpeg(1)
    files: dict[str, bytes] = {
        "roadwork/good_a.jpg": good_a,
        "roadwork/dup_of_a.jpg": good_a,
        "roadwork/sub/nested/good_b.png": _png(2),
        "roadwork/alpha.png": rgba,
        "roadwork/EXIF_ROT.JPG": _exif_rotated_jpeg(),
        "roadwork/cmyk.jpg": _cmyk_jpeg(),
        "roadwork/notes.txt": b"field notes",
        "1/numeric_folder.webp": _encode(Image.fromarray(_noise(30, 30, 3)), "WEBP", lossless=True),
        "no_roadwork/good_c.jpg": _jpeg(4),
        "no_roadwork/sixteen.png": sixteen,
        "no_roadwork/grey.png": grey,
        "0/numeric_folder.bmp": _encode(Image.fromarray(_noise(20, 20, 6)), "BMP"),
        "no_roadwork/truncated.jpg": _truncated_jpeg(),
        "no_roadwork/empty.jpg": b"",
        "no_roadwork/text.jpg": b"this is a text file with a .jpg name\n",
        "no_roadwork/tiny.png": _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "no_roadwork/bomb.png": _png_header_only(100_000, 100_000),
        "no_roadwork/gif_bomb.png": _gif_header_only(65_535, 65_535),
        "no_roadwork/animation.gif": _encode(Image.new("RGB", (20, 20)), "GIF"),
        "misc/whatever.jpg": _jpeg(8),
        "stray.jpg": _jpeg(9),
        "README.md": b"# my data\n",
        ".gitignore": b"*.tmp\n",
        "near_duplicates.csv": b"path_a,path_b\n",
        "images.dvc": b"outs: []\n",
    }
    for rel, payload in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(payload)
    (data / "no_roadwork/outside_link.jpg").symlink_to(outside / "secret.jpg")
    (data / "metadata.csv").write_text(
        "path,city,weather\nroadwork/good_a.jpg,Berlin,rain\nno_roadwork/good_c.jpg,Hamburg,\n"
    )
    images, labels, texts, _ = zip(*PARQUET_ROWS, strict=True)
    _write_parquet(
        data / "natix/train-0.parquet",
        pa.table(
            {
                "image": pa.array(images, type=pa.binary()),
                "label": pa.array(labels, type=pa.int64()),
                "scene_description": pa.array(texts, type=pa.string()),
            }
        ),
    )
    rows = [_struct_row(i) for i in range(STRUCT_ROWS)]
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    _write_parquet(
        data / "natix/hf/struct.parquet",
        pa.table(
            {
                "image": pa.array(
                    [{"bytes": b, "path": f"img{i}.png"} for i, (b, _, _) in enumerate(rows)], struct_type
                ),
                "label": pa.array([label for _, label, _ in rows], type=pa.int8()),
                "scene_description": pa.array([text for _, _, text in rows], type=pa.string()),
            }
        ),
    )
    return data


def _expected() -> tuple[dict[str, int], dict[str, str]]:
    """(kept path -> label, quarantined path -> reason), written out independently of the code under test."""
    kept = dict(KEPT_FILES)
    quarantined = dict(QUARANTINED_FILES)
    for i, (_, label, _, outcome) in enumerate(PARQUET_ROWS):
        key = f"natix/train-0.parquet#{i}"
        if outcome == "kept":
            kept[key] = int(label)  # type: ignore[arg-type]
        else:
            quarantined[key] = outcome
    for i in range(STRUCT_ROWS):
        kept[f"natix/hf/struct.parquet#{i}"] = i % 2
    return kept, quarantined


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def ingested(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestResult]:
    out = tmp_path_factory.mktemp("out") / "ingest"
    result = ingest(corpus, out, working_min_side=WORKING_MIN_SIDE, show_progress=False)
    return out, result


# ---------------------------------------------------------------------------------------------- images


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    payload, values = _sixteen_bit_png()
    rgb = np.asarray(open_image(payload, max_pixels=10**6))
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (*values.shape, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_alpha_is_composited_on_white() -> None:
    payload, rgba = _rgba_png()
    rgb = np.asarray(open_image(payload, max_pixels=10**6)).astype(np.float64)
    alpha = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    assert np.abs(rgb - expected).max() <= 1.0


def test_palette_transparency_becomes_white() -> None:
    palette_image = Image.new("P", (20, 20), 0)
    palette_image.putpalette([0, 0, 0, 255, 0, 0])
    palette_image.paste(1, (10, 0, 20, 20))
    rgb = np.asarray(open_image(_encode(palette_image, "GIF", transparency=0), max_pixels=10**6))
    assert (rgb[:, :10] == 255).all()
    assert (rgb[:, 10:] == (255, 0, 0)).all()


def test_cmyk_and_greyscale_convert_to_rgb() -> None:
    red = np.asarray(open_image(_cmyk_jpeg(), max_pixels=10**6)).astype(int)
    assert np.abs(red - (255, 0, 0)).max() <= 2
    payload, grey = _grey_png()
    rgb = np.asarray(open_image(payload, max_pixels=10**6))
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_exif_orientation_swaps_size_and_rotates_pixels() -> None:
    payload = _exif_rotated_jpeg()
    decoded = decode_image(payload, max_pixels=10**6)
    stored = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))  # pixels as stored, unrotated
    assert stored.shape[:2] == (32, 64)
    assert (decoded.width, decoded.height) == (32, 64)
    np.testing.assert_array_equal(np.asarray(decoded.image), np.rot90(stored, k=-1))
    top, bottom = np.asarray(decoded.image)[:24].mean((0, 1)), np.asarray(decoded.image)[40:].mean((0, 1))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red rotated to the top


def test_draft_mode_decodes_reduced_but_reports_original_size() -> None:
    payload = _jpeg(30, (2048, 1536))
    full = decode_image(payload, max_pixels=10**7)
    drafted = decode_image(payload, max_pixels=10**7, draft_size=512)
    assert full.image.size == (2048, 1536)
    # JPEG scales are 1/2, 1/4, 1/8; 1/4 would give 384 < 512 rows, so 1/2 is the largest allowed.
    assert drafted.image.size == (1024, 768)
    assert (drafted.width, drafted.height) == (full.width, full.height) == (2048, 1536)


@pytest.mark.parametrize(
    ("payload", "reason", "max_pixels"),
    [
        (b"", "empty_file", 10**6),
        (b"plain text, not pixels", "not_an_image", 10**6),
        (_truncated_jpeg(), "truncated", 10**6),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), "too_small", 10**6),
        (_encode(Image.new("RGB", (40, 30)), "PNG"), "too_many_pixels", 40 * 30 - 1),
        (_png_header_only(100_000, 100_000), "too_many_pixels", 10**8),  # beyond Pillow's own hard limit
        (_png_header_only(10_000, 10_000), "too_many_pixels", 10**8 - 1),  # between Pillow's warn and error
        (_gif_header_only(65_535, 65_535), "too_many_pixels", 10**8),
        (_encode(Image.new("RGB", (16, 16)), "ICO"), "not_an_image", 10**6),  # a format we do not accept
    ],
)
def test_rejections_have_reason_codes_and_no_pillow_warning(
    payload: bytes, reason: str, max_pixels: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any escaping warning (e.g. DecompressionBombWarning) fails the test
        with pytest.raises(ImageRejected) as caught:
            open_image(payload, max_pixels=max_pixels)
    assert caught.value.reason_code == reason


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # Declared 10000 x 10000 RGB would need 300 MB; a header-only file must be refused on the header alone,
    # which would otherwise fail as "truncated" after allocating.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10_000, 10_000))
    with pytest.raises(ImageRejected, match="max_pixels=1000000") as caught:
        open_image(path, max_pixels=1_000_000)
    assert caught.value.reason_code == "too_many_pixels"


def test_open_image_argument_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = pillow_pixel_limit()
    assert limit is not None
    with pytest.raises(ValueError, match="max_pixels"):
        open_image(_jpeg(1), max_pixels=limit + 1)
    with pytest.raises(TypeError, match="source"):
        open_image(str(tmp_path / "x.jpg"), max_pixels=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_side"):
        open_image(_jpeg(1), max_pixels=10**6, min_side=0)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        open_image(_truncated_jpeg(), max_pixels=10**6)


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    payload = _jpeg(3)
    path = tmp_path / "a.jpg"
    path.write_bytes(payload)
    assert sha256_file(path, chunk_bytes=7) == sha256_file(path) == hashlib.sha256(payload).hexdigest()


def test_downscale_keeps_aspect_never_upscales_and_matches_full_lanczos() -> None:
    y, x = np.mgrid[0:300, 0:400]
    wave = 127 + 100 * np.sin(x / 13.0) * np.cos(y / 17.0)
    image = Image.fromarray(np.repeat(wave[..., None], 3, axis=2).astype(np.uint8))
    small = downscale_short_side(image, 75)
    assert small.size == (100, 75)
    assert downscale_short_side(small, 75) is small and downscale_short_side(small, 500) is small
    assert downscale_short_side(Image.new("RGB", (30, 1000)), 3).size == (3, 100)
    # reducing_gap trades a little exactness for speed: it must stay close to a full Lanczos resize.
    reference = np.asarray(image.resize((100, 75), Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(np.asarray(small, dtype=float) - reference).mean() < 1.0
    with pytest.raises(ValueError, match="min_side"):
        downscale_short_side(image, 0)


# ---------------------------------------------------------------------------------------------- ingest


def test_each_input_lands_where_expected(ingested: tuple[Path, IngestResult]) -> None:
    out, _ = ingested
    kept, quarantined = _expected()
    manifest = _read_csv(out / "manifest.csv")
    quarantine = _read_csv(out / "quarantine.csv")
    assert dict(zip(manifest["path"], manifest["label"].astype(int), strict=True)) == kept
    assert dict(zip(quarantine["path"], quarantine["reason"], strict=True)) == quarantined
    assert list(manifest["path"]) == sorted(manifest["path"])
    assert list(quarantine["path"]) == sorted(quarantine["path"])
    assert (quarantine["detail"].str.len() > 0).all()
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert set(manifest["source"]) == {"imagefolder", "parquet"}


def test_counts_reconcile(ingested: tuple[Path, IngestResult]) -> None:
    _, result = ingested
    kept, quarantined = _expected()
    assert result.n_inputs == len(kept) + len(quarantined) == result.n_kept + result.n_quarantined
    assert result.n_kept == len(kept)
    assert result.label_counts == {0: Counter(kept.values())[0], 1: Counter(kept.values())[1]}
    assert result.reason_counts == {r: Counter(quarantined.values()).get(r, 0) for r in QUARANTINE_REASONS}


def test_manifest_facts_match_originals(ingested: tuple[Path, IngestResult], corpus: Path) -> None:
    out, _ = ingested
    manifest = _read_csv(out / "manifest.csv").set_index("path")
    for rel in KEPT_FILES:
        payload = (corpus / rel).read_bytes()
        row = manifest.loc[rel]
        assert row["sha256"] == hashlib.sha256(payload).hexdigest()
        assert int(row["size_bytes"]) == len(payload)
        assert row["working_path"] == f"images/{row['sha256']}.jpg"
    with Image.open(corpus / "roadwork/cmyk.jpg") as original:
        cmyk = manifest.loc["roadwork/cmyk.jpg"]
        assert (int(cmyk["width"]), int(cmyk["height"])) == original.size
    # Stored 64x32 with orientation 6: reported after rotation.
    rotated = manifest.loc["roadwork/EXIF_ROT.JPG"]
    assert (rotated["width"], rotated["height"]) == ("32", "64")
    row = manifest.loc["natix/train-0.parquet#0"]
    assert row["sha256"] == hashlib.sha256(PARQUET_ROWS[0][0]).hexdigest()  # type: ignore[arg-type]
    assert row["scene_description"] == PARQUET_ROWS[0][2]
    struct_row = manifest.loc[f"natix/hf/struct.parquet#{STRUCT_ROWS - 1}"]
    payload, label, text = _struct_row(STRUCT_ROWS - 1)
    assert (struct_row["sha256"], int(struct_row["label"]), struct_row["scene_description"]) == (
        hashlib.sha256(payload).hexdigest(),
        label,
        text,
    )


def test_metadata_csv_is_joined(ingested: tuple[Path, IngestResult]) -> None:
    out, _ = ingested
    manifest = _read_csv(out / "manifest.csv").set_index("path")
    assert list(manifest.columns[len(MANIFEST_COLUMNS) - 1 :]) == ["city", "weather", "scene_description"]
    assert tuple(manifest.loc["roadwork/good_a.jpg", ["city", "weather"]]) == ("Berlin", "rain")
    assert tuple(manifest.loc["no_roadwork/good_c.jpg", ["city", "weather"]]) == ("Hamburg", "")
    assert tuple(manifest.loc["roadwork/cmyk.jpg", ["city", "weather", "scene_description"]]) == ("", "", "")
    assert manifest.loc["natix/train-0.parquet#0", "city"] == ""


def test_working_copies(ingested: tuple[Path, IngestResult]) -> None:
    out, _ = ingested
    manifest = _read_csv(out / "manifest.csv").set_index("path")
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        {f"{s}.jpg" for s in manifest["sha256"]}
    )
    assert (
        manifest.loc["roadwork/good_a.jpg", "working_path"]
        == manifest.loc["roadwork/dup_of_a.jpg", "working_path"]
    )
    for rel, row in manifest.iterrows():
        with Image.open(out / row["working_path"]) as copy:
            assert copy.format == "JPEG" and copy.mode == "RGB"
            assert len(copy.getexif()) == 0 and "icc_profile" not in copy.info
            width, height = int(row["width"]), int(row["height"])
            # the shorter side shrinks to WORKING_MIN_SIDE, never grows: the rule every render relies on
            assert min(copy.size) == min(WORKING_MIN_SIDE, width, height), rel
            scale = min(1.0, WORKING_MIN_SIDE / min(width, height))
            assert copy.size == (round(width * scale), round(height * scale)), rel
    with Image.open(out / manifest.loc["roadwork/EXIF_ROT.JPG", "working_path"]) as rotated:
        pixels = np.asarray(rotated, dtype=float)
    assert pixels.shape[:2] == (32, 16)
    assert pixels[:12, :, 0].mean() > 200 > pixels[:12, :, 2].mean()  # red on top after rotation
    assert pixels[20:, :, 2].mean() > 200 > pixels[20:, :, 0].mean()


def test_nothing_written_outside_out_dir(corpus: Path, tmp_path: Path) -> None:
    before = _tree_bytes(corpus.parent)
    out = tmp_path / "out"
    ingest(corpus, out, working_min_side=WORKING_MIN_SIDE, show_progress=False)
    assert _tree_bytes(corpus.parent) == before
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.csv", "quarantine.csv"]


def test_deterministic_and_workers_do_not_change_output(
    corpus: Path, ingested: tuple[Path, IngestResult], tmp_path: Path
) -> None:
    first, _ = ingested
    again = tmp_path / "again"
    pooled = tmp_path / "pooled"
    ingest(corpus, again, working_min_side=WORKING_MIN_SIDE, show_progress=False)
    ingest(corpus, pooled, working_min_side=WORKING_MIN_SIDE, workers=2, show_progress=False)
    reference = _tree_bytes(first)
    assert len(reference) > 20
    assert _tree_bytes(again) == reference
    assert _tree_bytes(pooled) == reference


def test_stale_working_copies_are_removed_other_files_kept(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    stale = out / "images" / f"{'0' * 64}.jpg"
    stale.write_bytes(b"old")
    mine = out / "images" / "notes.txt"
    mine.write_text("user file")
    ingest(corpus, out, working_min_side=WORKING_MIN_SIDE, show_progress=False)
    assert not stale.exists() and mine.read_text() == "user file"


def _minimal(root: Path) -> Path:
    data = root / "data"
    (data / "roadwork").mkdir(parents=True)
    (data / "roadwork/a.jpg").write_bytes(_jpeg(1))
    return data


def _parquet_table(**overrides: pa.Array) -> pa.Table:
    columns = {
        "image": pa.array([_jpeg(1)], type=pa.binary()),
        "label": pa.array([1], type=pa.int64()),
        "scene_description": pa.array(["cones"], type=pa.string()),
    }
    columns.update(overrides)
    return pa.table(columns)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            pa.table({"image": pa.array([_jpeg(1)]), "label": pa.array([1])}),
            "lacks column 'scene_description'",
        ),
        (_parquet_table(label=pa.array(["1"])), "column 'label' has type string"),
        (_parquet_table(image=pa.array(["not bytes"])), "column 'image' has type string"),
        (_parquet_table(scene_description=pa.array([3])), "column 'scene_description' has type int64"),
    ],
)
def test_parquet_schema_errors_name_file_and_column(tmp_path: Path, table: pa.Table, message: str) -> None:
    data = tmp_path / "data"
    _write_parquet(data / "part/bad.parquet", table)
    with pytest.raises(ValueError, match=r"part/bad\.parquet") as caught:
        ingest(data, tmp_path / "out", show_progress=False)
    assert message in str(caught.value)


def test_corrupt_parquet_stops(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    (data / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=r"broken\.parquet: cannot be read as parquet"):
        ingest(data, tmp_path / "out", show_progress=False)


def test_layout_errors_name_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        ingest(tmp_path / "missing", tmp_path / "out", show_progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no class folder and no parquet"):
        ingest(empty, tmp_path / "out", show_progress=False)
    (empty / "misc").mkdir()
    (empty / "misc/a.jpg").write_bytes(_jpeg(1))
    with pytest.raises(ValueError, match="roadwork/ or 1/"):
        ingest(empty, tmp_path / "out", show_progress=False)


def test_metadata_errors(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    (data / "metadata.csv").write_text("path,city\nroadwork/a.jpg,X\nroadwork/missing.jpg,Y\n")
    with pytest.raises(ValueError, match=r"metadata\.csv.*roadwork/missing\.jpg"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text("path,city\nroadwork/a.jpg,X\nroadwork/a.jpg,Y\n")
    with pytest.raises(ValueError, match=r"metadata\.csv: duplicate path key.*roadwork/a\.jpg"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text("path,label\nroadwork/a.jpg,0\n")
    with pytest.raises(ValueError, match="clash with manifest columns"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text("file,city\nroadwork/a.jpg,X\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text("path,city,city\nroadwork/a.jpg,X,Y\n")
    with pytest.raises(ValueError, match=r"\['city'\] appear more than once"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text("path,city\nroadwork/a.jpg,Bonn, Germany\n")
    with pytest.raises(ValueError, match=r"metadata\.csv, line 2: 3 fields but the header has 2"):
        ingest(data, tmp_path / "out", show_progress=False)
    (data / "metadata.csv").write_text('path,city\n\nroadwork/a.jpg,"Bonn, Germany"\n')
    ingest(data, tmp_path / "out", show_progress=False)
    assert _read_csv(tmp_path / "out/manifest.csv")["city"].tolist() == ["Bonn, Germany"]


def test_argument_and_out_dir_validation(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    with pytest.raises(ValueError, match="inside data_dir"):
        ingest(data, data / "out", show_progress=False)
    with pytest.raises(ValueError, match="jpeg_quality"):
        ingest(data, tmp_path / "out", jpeg_quality=0, show_progress=False)
    with pytest.raises(TypeError, match="workers"):
        ingest(data, tmp_path / "out", workers=True, show_progress=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data_dir"):
        ingest(str(data), tmp_path / "out", show_progress=False)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_symlinks_inside_followed_cycles_quarantined(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    (data / "roadwork/alias.jpg").symlink_to(data / "roadwork/a.jpg")
    (data / "roadwork/loop").symlink_to(data / "roadwork")
    (data / "roadwork/gone.jpg").symlink_to(data / "roadwork/nothing.jpg")
    result = ingest(data, tmp_path / "out", show_progress=False)
    quarantine = _read_csv(tmp_path / "out/quarantine.csv")
    assert dict(zip(quarantine["path"], quarantine["reason"], strict=True)) == {
        "roadwork/gone.jpg": "unreadable_file",
        "roadwork/loop": "symlink_cycle",
    }
    assert _read_csv(tmp_path / "out/manifest.csv")["path"].tolist() == [
        "roadwork/a.jpg",
        "roadwork/alias.jpg",
    ]
    assert result.n_inputs == 4


# ------------------------------------------------------------------------------------ hostile data (issue 18)

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_IGNORES_MODES = "running as root: chmod cannot make a file unreadable to root"


def _quarantine_reasons(out: Path) -> dict[str, str]:
    quarantine = _read_csv(out / "quarantine.csv")
    return dict(zip(quarantine["path"], quarantine["reason"], strict=True))


def _assert_reconciled(result: IngestResult) -> None:
    assert result.n_inputs == result.n_kept + result.n_quarantined


def test_unreadable_subfolder_is_quarantined_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack raised PermissionError out of ingest; root reads everything, so listing is refused here."""
    data = _minimal(tmp_path)
    locked = data / "roadwork/locked"
    locked.mkdir()
    (locked / "x.jpg").write_bytes(_jpeg(2))
    listing = os.scandir

    def refuse_locked(path: object) -> object:
        if Path(str(path)) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return listing(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refuse_locked)
    result = ingest(data, tmp_path / "out", show_progress=False)
    assert _quarantine_reasons(tmp_path / "out") == {"roadwork/locked": "unreadable_folder"}
    detail = _read_csv(tmp_path / "out/quarantine.csv")["detail"][0]
    assert "Permission denied" in detail
    assert _read_csv(tmp_path / "out/manifest.csv")["path"].tolist() == ["roadwork/a.jpg"]
    assert (result.n_kept, result.n_quarantined, result.reason_counts["unreadable_folder"]) == (1, 1, 1)
    _assert_reconciled(result)


@pytest.mark.skipif(AS_ROOT, reason=ROOT_IGNORES_MODES)
def test_unreadable_subfolder_by_mode_is_quarantined(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    locked = data / "no_roadwork"
    locked.mkdir()
    (locked / "x.jpg").write_bytes(_jpeg(2))
    locked.chmod(0)
    try:
        result = ingest(data, tmp_path / "out", show_progress=False)
    finally:
        locked.chmod(0o755)
    assert _quarantine_reasons(tmp_path / "out") == {"no_roadwork": "unreadable_folder"}
    _assert_reconciled(result)


def test_fifo_and_link_loop_are_quarantined_without_blocking(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    os.mkfifo(data / "roadwork/pipe.jpg")
    (data / "roadwork/l1.jpg").symlink_to("l2.jpg")
    (data / "roadwork/l2.jpg").symlink_to("l1.jpg")
    result = ingest(data, tmp_path / "out", show_progress=False)
    assert _quarantine_reasons(tmp_path / "out") == {
        "roadwork/l1.jpg": "symlink_cycle",
        "roadwork/l2.jpg": "symlink_cycle",
        "roadwork/pipe.jpg": "unreadable_file",
    }
    _assert_reconciled(result)


def _snappy_stream_start(raw: bytes, chunk: pq.ColumnChunkMetaData) -> int:
    """Offset of the snappy stream of a column chunk's only data page.

    The chunk is a page header (thrift) of unknown length H, then the snappy stream, which begins with the
    varint of its uncompressed length; header bytes count in both the chunk's compressed and uncompressed
    totals, so that length is ``total_uncompressed_size - H``. Exactly one H must fit.
    """

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            low, value = value & 0x7F, value >> 7
            out.append(low | (0x80 if value else 0))
            if not value:
                return bytes(out)

    page = chunk.data_page_offset
    fits = [
        page + h + len(varint(chunk.total_uncompressed_size - h))
        for h in range(1, 256)
        if raw[page + h :].startswith(varint(chunk.total_uncompressed_size - h))
    ]
    assert len(fits) == 1, fits
    return fits[0]


def test_corrupt_parquet_page_names_file_and_row_group_and_goes_on(tmp_path: Path) -> None:
    data = _minimal(tmp_path)
    labels = [1, 0, 1, 0, 1, 0, 1, 0, 1]
    table = pa.table(
        {
            "image": pa.array([_jpeg(40 + i) for i in range(9)], type=pa.binary()),
            "label": pa.array(labels, type=pa.int64()),
            "scene_description": pa.array(["cones" if label else None for label in labels], type=pa.string()),
        }
    )
    path = data / "natix/part.parquet"
    path.parent.mkdir()
    pq.write_table(
        table, path, row_group_size=3, compression="snappy", use_dictionary=False, write_statistics=False
    )
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)  # row group 1's image column
    raw = bytearray(path.read_bytes())
    start = _snappy_stream_start(bytes(raw), chunk)
    raw[start : start + 16] = b"\xff" * 16  # copy tags with impossible offsets; the footer is untouched
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError, match="Corrupt snappy"):  # the attack: what a plain read raised
        pq.read_table(path)

    result = ingest(data, tmp_path / "out", show_progress=False)
    quarantine = _read_csv(tmp_path / "out/quarantine.csv")
    assert quarantine["path"].tolist() == [f"natix/part.parquet#{row}" for row in (3, 4, 5)]
    assert set(quarantine["reason"]) == {"corrupt_row_group"}
    assert all(
        "natix/part.parquet: row group 1 (rows 3-5)" in detail and "Corrupt snappy" in detail
        for detail in quarantine["detail"]
    )
    kept = _read_csv(tmp_path / "out/manifest.csv")["path"].tolist()
    assert kept == ["natix/part.parquet#0", "natix/part.parquet#1", "natix/part.parquet#2"] + [
        f"natix/part.parquet#{row}" for row in (6, 7, 8)
    ] + ["roadwork/a.jpg"]
    assert result.n_inputs == 10
    _assert_reconciled(result)


def test_bad_parquet_labels_are_quarantined_and_ingest_goes_on(tmp_path: Path) -> None:
    """The one rule: a row whose label is not 0 or 1 is quarantined unknown_label; the rest is used."""
    data = _minimal(tmp_path)
    labels = [1, 2, -1, None, 0]
    _write_parquet(
        data / "natix/labels.parquet",
        pa.table(
            {
                "image": pa.array([_jpeg(60 + i) for i in range(5)], type=pa.binary()),
                "label": pa.array(labels, type=pa.int64()),
                "scene_description": pa.array(["cones", "cones", "cones", "cones", None], type=pa.string()),
            }
        ),
    )
    (data / "misc").mkdir()
    (data / "misc/b.jpg").write_bytes(_jpeg(3))
    result = ingest(data, tmp_path / "out", show_progress=False)
    assert _quarantine_reasons(tmp_path / "out") == {
        "misc/b.jpg": "unknown_label",
        "natix/labels.parquet#1": "unknown_label",
        "natix/labels.parquet#2": "unknown_label",
        "natix/labels.parquet#3": "unknown_label",
    }
    details = _read_csv(tmp_path / "out/quarantine.csv").set_index("path")["detail"]
    assert "label is -1" in details["natix/labels.parquet#2"]
    assert "label is None" in details["natix/labels.parquet#3"]
    manifest = _read_csv(tmp_path / "out/manifest.csv")
    assert dict(zip(manifest["path"], manifest["label"], strict=True)) == {
        "natix/labels.parquet#0": "1",
        "natix/labels.parquet#4": "0",
        "roadwork/a.jpg": "1",
    }
    _assert_reconciled(result)


def test_large_jpegs_are_draft_decoded_within_a_grey_level_of_a_full_decode(tmp_path: Path) -> None:
    """A 2048 x 1536 photo, stored rotated with EXIF orientation 6: ingest decodes it at 1/4 scale (the
    smallest whose shorter side stays >= 256), yet its working copy is within 1 grey level (mean absolute
    difference) of a full decode + rotation + one Lanczos pass, at exactly the contract's size."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((2048, 1536), Image.Resampling.BICUBIC), dtype=np.int16)
    noisy = np.clip(smooth + rng.integers(-8, 9, smooth.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "data" / "roadwork" / "photo.jpg"
    photo.parent.mkdir(parents=True)
    Image.fromarray(noisy).save(photo, quality=92, exif=exif.tobytes())
    ingest(tmp_path / "data", tmp_path / "out", working_min_side=256, jpeg_quality=100, show_progress=False)
    row = _read_csv(tmp_path / "out" / "manifest.csv").iloc[0]
    assert (int(row["width"]), int(row["height"])) == (1536, 2048)
    with Image.open(photo) as opened:
        reference = (
            ImageOps.exif_transpose(opened).convert("RGB").resize((256, 341), Image.Resampling.LANCZOS)
        )
    encoded = io.BytesIO()
    reference.save(encoded, "JPEG", quality=100)  # as the working copy is saved: compare decodes, not codecs
    with Image.open(tmp_path / "out" / row["working_path"]) as copy, Image.open(encoded) as expected:
        assert copy.size == (256, 341)
        difference = np.abs(np.asarray(copy, dtype=float) - np.asarray(expected, dtype=float)).mean()
    assert difference < 1.0
