"""Validator renders of the stored images: the encoded bytes a miner would receive, and their store.

A :class:`Render` says which picture of a stored image the model sees, as the **encoded bytes** a miner
would receive: ``clean`` is the validator's level-0 JPEG (centre square, 224x224, its JPEG encoding);
``augmented`` copy ``k`` is a :class:`~roadwork.data.preprocess.TrainAugment` draw seeded by ``(seed, k,
the first 64 bits of the image's sha256)``, so copy ``k`` of an image is the same picture in every run and
in any order. The train copies draw ``embed.augment`` (by default the validator's level mix, ending with its
JPEG, or with a lossless PNG when ``jpeg`` is off); :func:`level_render` draws one validator level.
Renders start from the ingest copy, whose shorter side is at least ``ingest.working_min_side`` (512 by
default: a validator crop of 20 % of the area then never needs upsampling) or the original's, whichever is
smaller.

The :class:`RenderStore` keeps each render's bytes (keyed by the render, the image and the copy it was
rendered from); :func:`rendered_inputs` reads or makes them (:func:`roadwork.train.embed.embed_images` sends
them through the one inference path).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from roadwork.atomic import atomic_write
from roadwork.data.preprocess import TrainAugment, render_as_validator

__all__ = [
    "RENDER_VERSION",
    "Render",
    "RenderStore",
    "decode_render",
    "level_render",
    "render_bytes",
    "rendered_inputs",
]

RENDER_VERSION = 2
"""Part of every render's key: raise it whenever the pixels or bytes a render produces change."""


@dataclass(frozen=True)
class Render:
    """How the working copy of an image becomes what the backbone sees (before views).

    Attributes:
        kind: ``"clean"`` (validator level 0 + its JPEG) or ``"augmented"`` (``augment`` drawn per image).
        copy: index of the augmented copy (0-based); must be 0 for ``clean``.
        augment: the augmentation of ``augmented`` renders; ``None`` for ``clean``.
        seed: seed of the augmented draws.
    """

    kind: str = "clean"
    copy: int = 0
    augment: TrainAugment | None = field(default=None, compare=False)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("clean", "augmented"):
            raise ValueError(f"Render.kind must be 'clean' or 'augmented', got {self.kind!r}.")
        if (self.kind == "augmented") != (self.augment is not None):
            raise ValueError("Render.augment must be given for kind 'augmented' and only then.")
        if self.kind == "clean" and self.copy != 0:
            raise ValueError(f"Render.copy must be 0 for a clean render, got {self.copy}.")
        if isinstance(self.copy, bool) or not isinstance(self.copy, int) or self.copy < 0:
            raise ValueError(f"Render.copy must be an int >= 0, got {self.copy!r}.")

    @property
    def key(self) -> str:
        """Directory name in the render store: readable, and changing whenever the bytes would change."""
        if self.augment is None:
            return f"clean-v{RENDER_VERSION}"
        digest = hashlib.sha256(repr(self.augment).encode()).hexdigest()[:10]
        return f"aug-{digest}-s{self.seed}-c{self.copy}-v{RENDER_VERSION}"

    @property
    def level(self) -> int | None:
        """The validator level this render always draws (0 for clean), or None for a mix of levels."""
        if self.augment is None:
            return 0
        certain = [k for k, p in enumerate(self.augment.level_probs) if p == 1.0]
        return certain[0] if certain else None


def level_render(level: int, copy: int, seed: int) -> Render:
    """Copy ``copy`` of the validator's render at ``level`` (0..3): its geometry, distortions and JPEG.

    Level 0 draws nothing random, so it is the clean render whatever ``copy``.
    """
    if level == 0:
        return Render()
    augment = TrainAugment(tuple(float(i == level) for i in range(4)), jpeg=True)
    return Render("augmented", copy=copy, augment=augment, seed=seed)


def render_bytes(image: Image.Image, render: Render, sha256: str) -> bytes:
    """The encoded picture ``render`` makes of ``image`` (whose original bytes hash to ``sha256``)."""
    if render.augment is None:
        # level 0 draws no random numbers: any generator renders the same picture
        return render_as_validator(image, 0, np.random.default_rng(0))
    rng = np.random.default_rng([render.seed, render.copy, int(sha256[:16], 16)])
    return render.augment.encode(image, rng)


def decode_render(data: bytes) -> Image.Image:
    """A rendered input decoded to RGB, as a miner's image pipeline would see it."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class RenderStore:
    """Rendered inputs on disk: ``root/<render key>/<sha[:2]>/<sha>-<copy digest>.jpg``.

    ``copy digest`` is the start of the sha256 of the stored copy the render was made from, so a changed
    ingest copy never returns an old render. Written atomically; losing an entry only costs a re-render.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get(self, path: Path, sha256: str, render: Render) -> bytes:
        """The bytes of ``render`` of the stored copy at ``path`` (image ``sha256``), rendered if missing."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found (re-run ingest).")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        target = self.root / render.key / sha256[:2] / f"{sha256}-{digest}.jpg"
        if target.is_file():
            return target.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            encoded = render_bytes(image.convert("RGB"), render, sha256)
        atomic_write(target, lambda tmp: tmp.write_bytes(encoded), durable=False)
        return encoded


def _check_shas(paths: Sequence[Path], sha256: Sequence[str]) -> None:
    if len(paths) != len(sha256):
        raise ValueError(f"paths ({len(paths)}) and sha256 ({len(sha256)}) must have equal lengths.")
    bad = [s for s in sha256 if len(s) != 64 or any(c not in "0123456789abcdef" for c in s)]
    if bad:
        raise ValueError(f"sha256 must hold lowercase hex sha256 digests, got {bad[0]!r}.")


def rendered_inputs(
    paths: Sequence[Path], sha256: Sequence[str], render: Render, store: RenderStore, workers: int = 2
) -> list[bytes]:
    """The encoded inputs ``render`` makes of the stored copies at ``paths`` (from / into ``store``)."""
    from concurrent.futures import ThreadPoolExecutor

    _check_shas(paths, sha256)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(
            pool.map(lambda pair: store.get(pair[0], pair[1], render), zip(paths, sha256, strict=True))
        )
