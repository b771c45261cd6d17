"""Image decoding: the one place in roadwork where image files are opened.

:func:`decode_image` (and its thin wrapper :func:`open_image`) turns a file or an in-memory encoded image into
a fully loaded 8-bit RGB ``PIL.Image.Image``, or raises :class:`ImageRejected` with a machine-readable reason
code. Every check that can be done on the *declared* header (pixel count, minimum side) happens before any
pixel is decoded, so a decompression bomb costs a header read, not gigabytes of memory.

Colour handling, by source mode:

* ``RGB``, ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to RGB.
  Embedded ICC profiles are *not* applied (pixels keep the source's colour space, as every other consumer
  of these images does).
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, or a ``transparency`` entry from a
  PNG ``tRNS`` chunk / GIF transparent index): composited on opaque white.
* 16-bit integer greyscale (``I;16*``, and ``I`` whose values lie in 0..65535): scaled to 8 bit as
  ``round(v * 255 / 65535)`` (not clipped at 255, which would turn almost every pixel white).
* ``I`` with values outside 0..65535 and floating-point ``F`` images have no agreed 8-bit mapping and are
  rejected with ``decode_error``.

Multi-frame files (animated GIF/WebP, multi-page TIFF, MPO) are decoded as their first frame.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from roadwork.validation import check_int

# Formats Pillow may open. Restricting them matters for safety, not only tidiness: e.g. EPS would hand the
# file to Ghostscript. Phone JPEGs in multi-picture format open through "JPEG" and report format "MPO".
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

REJECTION_REASONS: tuple[str, ...] = (
    "empty_file",
    "not_an_image",
    "truncated",
    "too_many_pixels",
    "too_small",
    "decode_error",
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_SHA256_CHUNK_BYTES = 1 << 20


class ImageRejected(Exception):
    """An input that cannot become a usable RGB image.

    ``reason_code`` is one of :data:`REJECTION_REASONS`:

    * ``empty_file``: zero bytes.
    * ``not_an_image``: not recognised as any of :data:`ACCEPTED_FORMATS`.
    * ``truncated``: the header parsed but the pixel data ends early.
    * ``too_many_pixels``: declared width x height exceeds ``max_pixels`` (checked before decoding).
    * ``too_small``: declared shorter side is below ``min_side``.
    * ``decode_error``: any other failure while decoding or converting (corrupt data, unsupported mode).

    ``message`` is a human-readable explanation.
    """

    def __init__(self, reason_code: str, message: str) -> None:
        if reason_code not in REJECTION_REASONS:
            raise ValueError(f"reason_code must be one of {REJECTION_REASONS}, got {reason_code!r}")
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and the facts about the original.

    ``width`` and ``height`` are the original dimensions in pixels *after* EXIF orientation is applied (so a
    portrait photo stored landscape with orientation 6 reports width < height). ``image`` may be smaller than
    that when JPEG draft mode was requested; its ``info`` is empty (no EXIF, ICC or DPI carried along).
    ``format`` is Pillow's format name of the source (e.g. ``"JPEG"``, ``"MPO"``).
    """

    image: Image.Image
    width: int
    height: int
    format: str


def pillow_pixel_limit() -> int | None:
    """The pixel count above which Pillow itself refuses to open an image (``2 * Image.MAX_IMAGE_PIXELS``).

    ``None`` when the user disabled Pillow's guard (``Image.MAX_IMAGE_PIXELS = None``).
    """
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def check_max_pixels(max_pixels: int) -> None:
    """Raise TypeError/ValueError unless ``max_pixels`` is a positive int <= :func:`pillow_pixel_limit`."""
    check_int(max_pixels, "max_pixels", 1)
    limit = pillow_pixel_limit()
    if limit is not None and max_pixels > limit:
        raise ValueError(
            f"max_pixels={max_pixels} exceeds Pillow's own hard limit of {limit} pixels "
            "(2 * PIL.Image.MAX_IMAGE_PIXELS), so larger images could never be accepted; lower max_pixels "
            "or raise PIL.Image.MAX_IMAGE_PIXELS first"
        )


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or image.info.get("transparency") is not None


def _integer_to_l(image: Image.Image) -> Image.Image:
    """Map a 16-bit (or 16-bit-valued ``I``) greyscale image to 8 bit by scaling, honouring ``tRNS``."""
    values = np.asarray(image)
    if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageRejected(
            "decode_error",
            f"32-bit integer image with values in [{values.min()}, {values.max()}]: no defined 8-bit mapping",
        )
    wide = values.astype(np.uint32)
    # Integer round-half-up of v * 255 / 65535, i.e. of v / 257.
    grey = Image.fromarray(((wide * 255 + 65535 // 2) // 65535).astype(np.uint8))
    transparent_value = image.info.get("transparency")
    if transparent_value is None:
        return grey
    alpha = Image.fromarray(np.where(values == transparent_value, 0, 255).astype(np.uint8))
    grey.putalpha(alpha)
    return grey


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any supported mode to 8-bit RGB; transparency is composited on white."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        image = _integer_to_l(image)
    elif image.mode == "F":
        raise ImageRejected("decode_error", "floating-point image (mode F): no defined 8-bit mapping")
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _declared_checks(size: tuple[int, int], *, max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"declared size {width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
        )
    if min(width, height) < min_side:
        raise ImageRejected(
            "too_small", f"declared size {width}x{height} has a side below min_side={min_side}"
        )


def declared_size(data: bytes) -> tuple[int, int] | None:
    """The width and height an encoded image's header declares, without decoding a pixel.

    ``None`` when the header is not one of :data:`ACCEPTED_FORMATS` or cannot be parsed (decoding would
    reject it) or declares more than Pillow's own hard limit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                return image.size
        except Exception:
            # every failure here is one decode_image reports with its own reason code
            return None


def _decode_handle(
    handle: BinaryIO, *, max_pixels: int, min_side: int, draft_size: int | None
) -> DecodedImage:
    try:
        image = Image.open(handle, formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as error:
        # Pillow's own guard fired before we could see the size. It only fires above 2 * MAX_IMAGE_PIXELS,
        # which check_max_pixels guarantees is above max_pixels, so the verdict is ours too.
        detail = f"declared size exceeds max_pixels={max_pixels}: {error}"
        raise ImageRejected("too_many_pixels", detail) from None
    except UnidentifiedImageError:
        formats = ", ".join(ACCEPTED_FORMATS)
        raise ImageRejected("not_an_image", f"not recognised as any of {formats}") from None
    except Exception as error:
        raise ImageRejected("decode_error", f"header could not be parsed: {error}") from None
    with image:
        declared_width, declared_height = image.size
        _declared_checks(image.size, max_pixels=max_pixels, min_side=min_side)
        fmt = image.format or "unknown"
        try:
            if draft_size is not None:
                image.draft("RGB", (draft_size, draft_size))
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageRejected("too_many_pixels", f"a frame exceeds Pillow's limit: {error}") from None
        except (OSError, EOFError) as error:
            text = str(error)
            if isinstance(error, EOFError) or "truncated" in text.lower():
                raise ImageRejected("truncated", f"pixel data ends early: {text}") from None
            raise ImageRejected("decode_error", f"pixel data could not be decoded: {text}") from None
        except Exception as error:
            raise ImageRejected("decode_error", f"pixel data could not be decoded: {error}") from None
        loaded_size = image.size
        try:
            # In place: a full-size copy per image costs as much as the JPEG entropy decoding it follows.
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _to_rgb(image)  # always a new image, so closing `image` below leaves it intact
        except ImageRejected:
            raise
        except Exception as error:
            raise ImageRejected("decode_error", f"orientation or colour conversion failed: {error}") from None
        # Draft mode shrinks both sides by the same factor, so a changed size means the axes were swapped.
        swapped = image.size != loaded_size
    # Pixels only: stale EXIF/ICC/DPI entries must not ride along into anything saved from this image.
    rgb.info = {}
    if swapped:
        declared_width, declared_height = declared_height, declared_width
    return DecodedImage(image=rgb, width=declared_width, height=declared_height, format=fmt)


def decode_image(
    source: Path | bytes,
    *,
    max_pixels: int,
    min_side: int = 16,
    draft_size: int | None = None,
) -> DecodedImage:
    """Decode ``source`` (a file path or the encoded bytes) into a fully loaded RGB image.

    Args:
        source: path of an image file, or its bytes (e.g. a parquet cell).
        max_pixels: largest accepted declared ``width * height``; larger images are rejected before their
            pixels are decoded. Must not exceed :func:`pillow_pixel_limit` (Pillow refuses those itself).
        min_side: smallest accepted declared shorter side, in pixels.
        draft_size: JPEG draft mode, in pixels: the decoder downsamples by the largest of 1/2, 1/4, 1/8
            that keeps both sides at least ``draft_size`` (much faster for large photos; an image already
            smaller is decoded at full size). Other formats ignore it. ``None`` decodes at full resolution.

    Returns:
        :class:`DecodedImage`; ``width``/``height`` are the original (post-EXIF-orientation) dimensions,
        whatever the draft scale.

    Raises:
        ImageRejected: the input is not a usable image (see its reason codes).
        TypeError, ValueError: invalid arguments; FileNotFoundError / OSError: ``source`` cannot be read.
        RuntimeError: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is on, which would hide truncated files.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some import or script), which makes Pillow "
            "pad truncated files with grey instead of failing; set it back to False before decoding"
        )
    check_max_pixels(max_pixels)
    check_int(min_side, "min_side", 1)
    if draft_size is not None:
        check_int(draft_size, "draft_size", 1)
    # Pillow's bomb *warning* (between MAX_IMAGE_PIXELS and twice that) is noise here: max_pixels decides.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageRejected("empty_file", "0 bytes")
            return _decode_handle(
                io.BytesIO(bytes(source)), max_pixels=max_pixels, min_side=min_side, draft_size=draft_size
            )
        if not isinstance(source, Path):
            raise TypeError(f"source must be a pathlib.Path or bytes, got {type(source).__name__}")
        with source.open("rb") as handle:
            if source.stat().st_size == 0:
                raise ImageRejected("empty_file", "0 bytes")
            return _decode_handle(handle, max_pixels=max_pixels, min_side=min_side, draft_size=draft_size)


def open_image(
    source: Path | bytes, *, max_pixels: int, min_side: int = 16, draft_size: int | None = None
) -> Image.Image:
    """Decode ``source`` into a fully loaded RGB ``PIL.Image.Image``; :func:`decode_image` without the facts.

    Same arguments, rules and exceptions as :func:`decode_image`.
    """
    return decode_image(source, max_pixels=max_pixels, min_side=min_side, draft_size=draft_size).image


def sha256_file(path: Path, *, chunk_bytes: int = _SHA256_CHUNK_BYTES) -> str:
    """Hex SHA-256 of the file's bytes, read in ``chunk_bytes`` pieces so memory stays bounded."""
    check_int(chunk_bytes, "chunk_bytes", 1)
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def downscale_short_side(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink ``image`` so its shorter side is ``min_side`` pixels, keeping the aspect ratio.

    Never upscales: an image whose shorter side is already at most ``min_side`` is returned as is (the same
    object). The longer side is rounded to the nearest pixel. Resampling is Lanczos with
    ``reducing_gap=1.5``: when shrinking by 3x or more, Pillow first reduces by an integer factor with a box
    filter, then applies Lanczos for the remaining (>= 1.5x) step (2.7x faster than a full Lanczos pass on
    a photo, 0.27 grey levels mean absolute difference from it).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    check_int(min_side, "min_side", 1)
    width, height = image.size
    shorter = min(width, height)
    if shorter <= min_side:
        return image
    scale = min_side / shorter
    if width <= height:
        size = (min_side, max(1, round(height * scale)))
    else:
        size = (max(1, round(width * scale)), min_side)
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.5)
