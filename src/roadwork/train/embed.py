"""Run a frozen backbone once per image, render and view, and keep the features in a persistent cache.

What the backbone sees of an image is fixed by two things:

* a :class:`Render` — how the stored working copy becomes a network-sized picture: ``clean`` is the
  validator's level-0 rendering (centre square crop, 224x224, the validator's JPEG), exactly what a miner
  receives at the mildest level; ``augmented`` copy ``k`` is a :class:`~roadwork.data.preprocess.TrainAugment`
  draw seeded by ``(seed, k, image sha256)``, so copy ``k`` of an image is the same picture in every run
  and in any order; ``flip`` mirrors the rendering horizontally (test-time augmentation);
* a :class:`ViewSpec` — ``global`` (the rendering itself) or ``global+tiles`` (plus a ``grid x grid`` grid
  of overlapping tiles, :func:`~roadwork.data.preprocess.tile_boxes`).

Every view of every image of a batch goes through the backbone in **one** forward pass.

The :class:`FeatureCache` stores one ``.npy`` file per (backbone fingerprint, render, view part, image
sha256), written atomically, so an interrupted run resumes where it stopped and a later run (another
stage, another view setting, another variant of the same backbone) computes nothing twice. The global part
and the tile part are stored separately: dedupe's embedding check and ``embed`` share the global features.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from tqdm.auto import tqdm

from roadwork.atomic import atomic_write, atomic_write_text
from roadwork.data.preprocess import TrainAugment, render_as_validator, tile_boxes, to_tensor_batch
from roadwork.models.backbone import Backbone

__all__ = [
    "PRECISIONS",
    "FeatureCache",
    "Render",
    "ViewSpec",
    "embed_images",
    "forward_views",
    "image_views",
    "numerics_key",
    "render_image",
]

VIEW_MODES = ("global", "global+tiles")


@dataclass(frozen=True)
class ViewSpec:
    """Which views of a rendering are embedded.

    Attributes:
        views: ``"global"`` (1 view) or ``"global+tiles"`` (1 + ``grid**2`` views, global first, tiles in
            row-major order).
        grid: tiles per side (>= 2) for ``global+tiles``.
        overlap: fraction in [0, 1) of a tile shared with its neighbour.
    """

    views: str = "global"
    grid: int = 3
    overlap: float = 0.25

    def __post_init__(self) -> None:
        if self.views not in VIEW_MODES:
            raise ValueError(f"ViewSpec.views must be one of {VIEW_MODES}, got {self.views!r}.")
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise ValueError(f"ViewSpec.grid must be an int >= 2, got {self.grid!r}.")
        if not 0 <= float(self.overlap) < 1:
            raise ValueError(f"ViewSpec.overlap must lie in [0, 1), got {self.overlap!r}.")

    @property
    def parts(self) -> tuple[str, ...]:
        """Cache parts making up the views: ``global`` and, with tiles, ``tiles<grid>o<overlap>``."""
        if self.views == "global":
            return ("global",)
        return ("global", f"tiles{self.grid}o{float(self.overlap):g}")

    @property
    def num_views(self) -> int:
        return 1 if self.views == "global" else 1 + self.grid * self.grid


@dataclass(frozen=True)
class Render:
    """How the working copy of an image becomes what the backbone sees (before views).

    Attributes:
        kind: ``"clean"`` (validator level 0 + its JPEG) or ``"augmented"`` (``augment`` drawn per image).
        copy: index of the augmented copy (0-based); must be 0 for ``clean``.
        flip: mirror the rendering left-right (test-time augmentation).
        augment: the augmentation of ``augmented`` renders; ``None`` for ``clean``.
        seed: seed of the augmented draws.
    """

    kind: str = "clean"
    copy: int = 0
    flip: bool = False
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
        """Directory name in the cache: readable, and changing whenever the pixels would change."""
        flip = "-flip" if self.flip else ""
        if self.augment is None:
            return f"clean{flip}"
        digest = hashlib.sha256(repr(self.augment).encode()).hexdigest()[:10]
        return f"aug-{digest}-s{self.seed}-c{self.copy}{flip}"


def _decoded(jpeg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpeg)) as decoded:
        return decoded.convert("RGB")


def render_image(image: Image.Image, render: Render, sha256: str) -> Image.Image:
    """The picture ``render`` makes of ``image`` (whose original bytes hash to ``sha256``)."""
    if render.augment is None:
        # level 0 draws no random numbers: any generator renders the same picture
        out = _decoded(render_as_validator(image, 0, np.random.default_rng(0)))
    else:
        rng = np.random.default_rng([render.seed, render.copy, int(sha256[:16], 16)])
        out = render.augment(image, rng)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if render.flip else out


def _view_images(image: Image.Image, part: str, spec: ViewSpec) -> list[Image.Image]:
    if part == "global":
        return [image]
    return [image.crop(box) for box in tile_boxes(image.width, image.height, spec.grid, spec.overlap)]


def image_views(image: Image.Image, spec: ViewSpec) -> list[Image.Image]:
    """The ``spec.num_views`` views of one (rendered) image: the image itself, then its tiles."""
    return [view for part in spec.parts for view in _view_images(image, part, spec)]


PRECISIONS = ("32", "bf16")


def numerics_key(fingerprint: str, device_type: str, precision: str) -> str:
    """The feature-cache key of a backbone run on ``device_type`` at ``precision``.

    CPU float32 features keep the backbone fingerprint itself; any other device or precision gives other
    numbers (TF32/cuDNN kernels, bfloat16 rounding), so it gets a key of its own and caches never mix them.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if device_type == "cpu" and precision == "32":
        return fingerprint
    return hashlib.sha256(f"{fingerprint}|{device_type}|{precision}".encode()).hexdigest()


def forward_views(
    backbone: Backbone, view_lists: Sequence[Sequence[Image.Image]], *, precision: str = "32"
) -> list[NDArray[np.float32]]:
    """Features ``[len(views), D]`` for each list of views; every view of every list in one forward pass.

    Runs on the backbone's device (the batch goes through pinned memory to a GPU); ``precision="bf16"``
    runs the forward under bfloat16 autocast. Features come back as float32 on the CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    flat = [view for views in view_lists for view in views]
    device = next(backbone.parameters()).device
    batch = to_tensor_batch(flat, backbone.preprocess)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        features = backbone(batch).float().cpu().numpy()
    bounds = np.cumsum([0, *(len(views) for views in view_lists)])
    return [features[a:b] for a, b in itertools.pairwise(bounds)]


class FeatureCache:
    """Features on disk, one ``float32 [views, D]`` ``.npy`` per (backbone, render, part, image).

    Layout: ``root/<fingerprint[:16]>/<render key>/<part>/<sha[:2]>/<sha>.npy``, plus ``backbone.json``
    recording the full fingerprint. Files are written through a temp file and ``os.replace``, so a killed
    run leaves only whole files and the next run resumes from them.
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        if len(fingerprint) < 16 or any(c not in "0123456789abcdef" for c in fingerprint):
            raise ValueError(f"fingerprint must be a hex digest (>= 16 chars), got {fingerprint!r}.")
        self.root = Path(root) / fingerprint[:16]
        self.fingerprint = fingerprint
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / "backbone.json"
        if marker.is_file():
            recorded = json.loads(marker.read_text()).get("fingerprint")
            if recorded != fingerprint:
                raise ValueError(
                    f"{marker}: cache folder belongs to backbone {recorded}, not {fingerprint}; "
                    "delete the folder (a 64-bit prefix collision) or use another cache_dir."
                )
        else:
            atomic_write_text(marker, json.dumps({"fingerprint": fingerprint}) + "\n")

    def path(self, sha256: str, render: Render, part: str) -> Path:
        return self.root / render.key / part / sha256[:2] / f"{sha256}.npy"

    def has(self, sha256: str, render: Render, part: str) -> bool:
        return self.path(sha256, render, part).is_file()

    def get(self, sha256: str, render: Render, part: str) -> NDArray[np.float32]:
        path = self.path(sha256, render, part)
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable cache entry ({exc}); delete it to recompute.") from None

    def put(self, sha256: str, render: Render, part: str, features: NDArray[np.float32]) -> None:
        array = np.ascontiguousarray(features, dtype=np.float32)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a handle: np.save would append ".npy" to a bare path
                np.save(handle, array, allow_pickle=False)

        # not durable: a cache entry lost in a power cut is only recomputed, and fsyncs per file are slow
        atomic_write(self.path(sha256, render, part), write, durable=False)


@dataclass(frozen=True)
class EmbedStats:
    """How much work :func:`embed_images` did: cache hits and images actually run through the backbone."""

    n_items: int
    n_computed: int
    n_views_computed: int
    seconds: float


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def embed_images(
    backbone: Backbone,
    paths: Sequence[Path],
    sha256: Sequence[str],
    *,
    render: Render,
    spec: ViewSpec,
    cache: FeatureCache,
    batch_size: int = 32,
    workers: int = 2,
    show_progress: bool = True,
    desc: str = "embed",
    precision: str = "32",
) -> tuple[NDArray[np.float32], EmbedStats]:
    """Features ``float32 [N, V, D]`` of the images at ``paths`` (identified by ``sha256``).

    Items whose every part is cached are read back; the others are decoded, rendered and split into views
    (``workers`` threads), and each batch of ``batch_size`` images goes through the backbone in one forward
    pass of ``batch_size * views`` inputs under ``torch.inference_mode`` on the backbone's device, at
    ``precision`` (:func:`forward_views`; pair it with a cache keyed by :func:`numerics_key`). Results are
    cached as they come, so an interrupted call loses at most one batch.

    Raises:
        ValueError: ``paths`` and ``sha256`` differ in length, a digest is malformed, ``batch_size`` < 1.
        FileNotFoundError: an image that must be computed is missing (named).
    """
    if len(paths) != len(sha256):
        raise ValueError(f"paths ({len(paths)}) and sha256 ({len(sha256)}) must have equal lengths.")
    bad = [s for s in sha256 if len(s) != 64 or any(c not in "0123456789abcdef" for c in s)]
    if bad:
        raise ValueError(f"sha256 must hold lowercase hex sha256 digests, got {bad[0]!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    start = time.perf_counter()
    unique = dict(zip(sha256, paths, strict=True))
    missing = {s: [part for part in spec.parts if not cache.has(s, render, part)] for s in unique}
    todo = [s for s, parts in missing.items() if parts]
    views_computed = 0

    def prepare(sha: str) -> list[list[Image.Image]]:
        path = Path(unique[sha])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image not found (re-run ingest).")
        rendered = render_image(_load_rgb(path), render, sha)
        return [_view_images(rendered, part, spec) for part in missing[sha]]

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(
            total=len(todo), desc=f"{desc} [{render.key}]", unit="img", disable=not show_progress or not todo
        ) as bar,
    ):
        for begin in range(0, len(todo), batch_size):
            batch = todo[begin : begin + batch_size]
            prepared = list(pool.map(prepare, batch))
            keys = [(sha, part) for sha in batch for part in missing[sha]]
            features = forward_views(
                backbone, [views for parts in prepared for views in parts], precision=precision
            )
            for (sha, part), part_features in zip(keys, features, strict=True):
                cache.put(sha, render, part, part_features)
                views_computed += len(part_features)
            bar.update(len(batch))

    rows = [np.concatenate([cache.get(s, render, part) for part in spec.parts]) for s in sha256]
    empty = np.zeros((0, spec.num_views, backbone.feature_dim), np.float32)
    out = np.stack(rows).astype(np.float32, copy=False) if rows else empty
    stats = EmbedStats(
        n_items=len(sha256),
        n_computed=len(todo),
        n_views_computed=views_computed,
        seconds=time.perf_counter() - start,
    )
    return out, stats
