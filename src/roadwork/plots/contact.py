"""A contact sheet of thumbnails with captions (pure Pillow), e.g. the worst errors of an evaluation."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from roadwork.atomic import atomic_write
from roadwork.plots.checks import check_path, check_title
from roadwork.validation import check_int


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; overflowing text ends in an ellipsis on the last line."""
    chars = max(4, int(width / max(1.0, draw.textlength("n", font=font))))
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines.extend(textwrap.wrap(paragraph, chars, break_long_words=True) or [""])
    fitted: list[str] = []
    for line in lines:
        while line and draw.textlength(line, font=font) > width:
            line = line[:-1]
        fitted.append(line)
    if len(fitted) > max_lines:
        last = fitted[max_lines - 1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        fitted = [*fitted[: max_lines - 1], last + "…"]
    return fitted


def contact_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    path: str | os.PathLike[str],
    *,
    columns: int = 6,
    thumb: int = 160,
    title: str | None = None,
) -> Path:
    """A grid of ``thumb``-pixel thumbnails (aspect kept, centred) with each caption wrapped beneath.

    Captions longer than three lines end in an ellipsis. With no images (e.g. no false positive to show) a
    small sheet saying so is written, so a declared output always exists. Pure Pillow; deterministic.
    """
    out = check_path(path)
    check_title(title)
    if isinstance(images, (str, bytes, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of PIL.Image.Image; got {type(images).__name__}.")
    if isinstance(captions, (str, bytes)) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a sequence of str; got {type(captions).__name__}.")
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL.Image.Image; got {type(img).__name__}.")
        if img.width < 1 or img.height < 1:
            raise ValueError(f"images[{i}] is empty ({img.width} x {img.height}).")
    for i, cap in enumerate(captions):
        if not isinstance(cap, str):
            raise TypeError(f"captions[{i}] must be a str; got {type(cap).__name__}.")
    if len(captions) != len(images):
        raise ValueError(
            f"images and captions must have the same length; images has {len(images)}, "
            f"captions has {len(captions)}."
        )
    cols = check_int(columns, "columns", 1)
    size = check_int(thumb, "thumb", 32)

    font_size = max(9, min(14, size // 12))
    font = _font(font_size)
    line_h = font_size + 3
    max_lines = 3
    pad = 6
    cell_w, cell_h = size + 2 * pad, size + 2 * pad + max_lines * line_h
    title_font = _font(font_size + 3)
    title_h = (font_size + 3) + 2 * pad if title else 0
    n = len(images)
    grid_cols = min(cols, n) if n else 1
    grid_rows = math.ceil(n / cols) if n else 1
    sheet = Image.new("RGB", (grid_cols * cell_w, title_h + grid_rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        for k, line in enumerate(_wrap(draw, title, title_font, sheet.width - 2 * pad, 1)):
            draw.text((pad, pad + k * line_h), line, fill="black", font=title_font)
    if n == 0:
        draw.rectangle((pad, title_h + pad, pad + size, title_h + pad + size), fill="#eeeeee")
        draw.text((2 * pad, title_h + pad + size // 2 - line_h), "no images", fill="black", font=font)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        x0, y0 = (i % cols) * cell_w, title_h + (i // cols) * cell_h
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        small = ImageOps.contain(rgb, (size, size), method=Image.Resampling.BICUBIC)
        draw.rectangle((x0 + pad, y0 + pad, x0 + pad + size - 1, y0 + pad + size - 1), fill="#eeeeee")
        sheet.paste(small, (x0 + pad + (size - small.width) // 2, y0 + pad + (size - small.height) // 2))
        for k, line in enumerate(_wrap(draw, cap, font, size, max_lines)):
            draw.text((x0 + pad, y0 + size + 2 * pad + k * line_h), line, fill="black", font=font)
    return atomic_write(out, lambda p: sheet.save(p, format="PNG", compress_level=6))
