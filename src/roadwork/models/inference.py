"""The one inference path: encoded image bytes (or a decoded image) -> features -> margin.

Every prediction the project makes goes through :func:`embed_inputs` and :func:`infer_margins`: the training
features and val logits, ``evaluate`` (clean and every validator render), ``promote``, bundle's export
check, the pyfunc and ``roadwork predict``. The steps, in order:

1. **decode**: :func:`roadwork.data.images.decode_image` (EXIF orientation applied, any mode to RGB);
2. **fixed geometry**: :func:`fixed_geometry`, the validator's level-0 geometry (centre square crop,
   bilinear resize to 224x224). On what the validator sends (always a 224x224 image) it is the identity, so
   a miner's input reaches the backbone untouched;
3. optionally the **mirror image** (test-time flip);
4. **views**: :class:`ViewSpec` (the picture, or the picture plus ``grid x grid`` tiles);
5. **backbone** (its own fixed preprocessing, :func:`roadwork.data.preprocess.to_tensor_batch`), every view
   of a batch in one forward pass;
6. **head** on the views' features, logits averaged over the flip (:func:`infer_margins`); the caller applies
   the policy (:meth:`roadwork.policy.Policy.apply`).

The :class:`FeatureCache` is keyed by the sha256 of the **encoded input bytes**, the backbone's numerics
(:func:`numerics_key`), :data:`GEOMETRY_KEY`, the flip and the view part, so it can only return what
:func:`embed_inputs` would compute for those bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from roadwork.atomic import atomic_write_bytes, atomic_write_text
from roadwork.data.preprocess import (
    VALIDATOR_IMAGE_SIZE,
    ValidatorParams,
    apply_validator_params,
    tile_boxes,
    to_tensor_batch,
)
from roadwork.models.backbone import Backbone
from roadwork.progress import progress_bar
from roadwork.vocab import FEATURE_PRECISIONS, VIEW_MODES, autocasts_bf16

__all__ = [
    "GEOMETRY_KEY",
    "EmbedStats",
    "FeatureCache",
    "ViewSpec",
    "embed_inputs",
    "fixed_geometry",
    "forward_views",
    "image_views",
    "infer_margins",
    "input_key",
    "numerics_key",
]

GEOMETRY_KEY = f"l0sq{VALIDATOR_IMAGE_SIZE}"
"""Names :func:`fixed_geometry` in the feature cache; change it whenever that function's output changes."""


def fixed_geometry(image: Image.Image) -> Image.Image:
    """The validator's level-0 geometry: centre square crop of side ``min(W, H)``, bilinear resize to 224.

    The identity (a copy) on a 224x224 image, which is what the validator always sends.
    """
    if image.size == (VALIDATOR_IMAGE_SIZE, VALIDATOR_IMAGE_SIZE):
        return image
    return apply_validator_params(image, ValidatorParams(level=0))


def input_key(data: bytes) -> str:
    """The feature-cache key of an encoded input: the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


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
        return sum(self.part_views(part) for part in self.parts)

    def part_views(self, part: str) -> int:
        """How many views the cache part ``part`` holds: 1 for ``global``, ``grid x grid`` tiles."""
        return 1 if part == "global" else self.grid * self.grid


def _view_images(image: Image.Image, part: str, spec: ViewSpec) -> list[Image.Image]:
    if part == "global":
        return [image]
    return [image.crop(box) for box in tile_boxes(image.width, image.height, spec.grid, spec.overlap)]


def image_views(image: Image.Image, spec: ViewSpec) -> list[Image.Image]:
    """The ``spec.num_views`` views of one (rendered) image: the image itself, then its tiles."""
    return [view for part in spec.parts for view in _view_images(image, part, spec)]


def numerics_key(fingerprint: str, device_type: str, precision: str) -> str:
    """The feature-cache key of a backbone run on ``device_type`` at ``precision``.

    CPU float32 features keep the backbone fingerprint itself; any other device or precision gives other
    numbers (TF32/cuDNN kernels, bfloat16 rounding), so it gets a key of its own and caches never mix them.
    """
    if precision not in FEATURE_PRECISIONS:
        raise ValueError(f"precision must be one of {FEATURE_PRECISIONS}, got {precision!r}.")
    if device_type == "cpu" and precision == "32":
        return fingerprint
    return hashlib.sha256(f"{fingerprint}|{device_type}|{precision}".encode()).hexdigest()


def forward_views(
    backbone: Backbone,
    view_lists: Sequence[Sequence[Image.Image]],
    *,
    precision: str = "32",
    pad_lone_view: bool = True,
) -> list[NDArray[np.float32]]:
    """Features ``[len(views), D]`` for each list of views; every view of every list in one forward pass.

    Runs on the backbone's device (the batch goes through pinned memory to a GPU); ``precision="bf16"``
    runs the forward under bfloat16 autocast. Features come back as float32 on the CPU.

    With ``pad_lone_view`` a lone view is run as a batch of two copies: on the CPU, oneDNN computes a batch
    of one along another path whose features differ in the last bits (up to 9.5e-7 for EfficientNet-Lite0),
    so an image's features would depend on how many others shared its forward pass. ``False`` keeps the
    cheaper batch of one (serving one image: the copy adds ~9 ms to a ~32 ms request on 2 CPU cores).
    """
    if precision not in FEATURE_PRECISIONS:
        raise ValueError(f"precision must be one of {FEATURE_PRECISIONS}, got {precision!r}.")
    flat = [view for views in view_lists for view in views]
    device = next(backbone.parameters()).device
    batch = to_tensor_batch(flat * 2 if pad_lone_view and len(flat) == 1 else flat, backbone.preprocess)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocasts_bf16(precision)),
    ):
        features = backbone(batch).float().cpu().numpy()
    bounds = np.cumsum([0, *(len(views) for views in view_lists)])
    return [features[a:b] for a, b in itertools.pairwise(bounds)]


class CacheEntryRejected(ValueError):
    """A feature-cache entry failed verification; the message names the file and what is wrong."""


class FeatureCache:
    """Features on disk, one ``float32 [views, D]`` ``.npy`` per (backbone numerics, input bytes, flip, part).

    Layout: ``root/<numerics key[:16]>/<GEOMETRY_KEY>[-flip]/<part>/<key[:2]>/<key>.npy`` with ``key`` the
    sha256 of the encoded input (:func:`input_key`), plus ``backbone.json`` recording the full numerics key.
    Files are written through a temp file and ``os.replace``, so a killed run leaves only whole files and the
    next run resumes from them.

    Every entry is verified when read: beside ``<key>.npy`` sits ``<key>.npy.b2``, the BLAKE2b digest of the
    ``.npy`` file's bytes, written first; an entry whose bytes do not match it, that has no digest, that is
    not a float32 ``[views, D]`` array or that holds a NaN or an infinity is rejected
    (:class:`CacheEntryRejected`) and recomputed, never returned. A digest guards against corruption and
    careless edits, not against someone who can rewrite both files.
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        if len(fingerprint) < 16 or any(c not in "0123456789abcdef" for c in fingerprint):
            raise ValueError(f"fingerprint must be a hex digest (>= 16 chars), got {fingerprint!r}.")
        self.root = Path(root) / fingerprint[:16]
        self.fingerprint = fingerprint
        # entries the backbone computed through this object (put), and entries copied in (seed)
        self.n_computed = 0
        self.n_seeded = 0
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

    def path(self, key: str, part: str, *, flip: bool = False) -> Path:
        folder = f"{GEOMETRY_KEY}-flip" if flip else GEOMETRY_KEY
        return self.root / folder / part / key[:2] / f"{key}.npy"

    @staticmethod
    def digest_path(path: Path) -> Path:
        """Where the digest of the entry at ``path`` is kept."""
        return path.with_name(path.name + ".b2")

    def has(self, key: str, part: str, *, flip: bool = False) -> bool:
        """Whether an entry exists (unverified: :meth:`get` verifies)."""
        return self.path(key, part, flip=flip).is_file()

    def get(
        self, key: str, part: str, *, flip: bool = False, shape: tuple[int, int] | None = None
    ) -> NDArray[np.float32] | None:
        """The verified entry (of ``shape`` ``(views, D)`` when given), or None when there is none.

        Raises:
            CacheEntryRejected: the entry exists but fails verification (the message names the file).
        """
        path = self.path(key, part, flip=flip)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheEntryRejected(f"{path}: unreadable ({exc})") from None
        try:
            recorded = self.digest_path(path).read_text().strip()
        except OSError:
            raise CacheEntryRejected(f"{path}: no checksum beside it") from None
        if _entry_digest(data) != recorded:
            raise CacheEntryRejected(f"{path}: checksum mismatch (the file changed after it was written)")
        stream = io.BytesIO(data)
        try:
            array = np.load(stream, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CacheEntryRejected(f"{path}: not a readable .npy ({exc})") from None
        wanted = "[views, D]" if shape is None else str(list(shape))
        if array.dtype != np.float32 or array.ndim != 2 or (shape is not None and array.shape != shape):
            raise CacheEntryRejected(f"{path}: holds {array.dtype} {list(array.shape)}, not float32 {wanted}")
        if not np.isfinite(array).all():
            raise CacheEntryRejected(f"{path}: holds NaN or infinite values")
        return array

    def put(self, key: str, part: str, features: NDArray[np.float32], *, flip: bool = False) -> None:
        """Store ``features`` the backbone just computed, with their digest (counted in :attr:`n_computed`).

        Raises:
            ValueError: ``features`` hold a NaN or an infinity (a broken backbone or precision, never cached).
        """
        self._write(key, part, features, flip)
        self.n_computed += 1

    def seed(self, key: str, part: str, features: NDArray[np.float32], *, flip: bool = False) -> bool:
        """Store ``features`` computed earlier for this numerics key (e.g. by ``embed``) unless an entry is
        already there; True when written (counted in :attr:`n_seeded`). Same checks as :meth:`put`."""
        if self.has(key, part, flip=flip):
            return False
        self._write(key, part, features, flip)
        self.n_seeded += 1
        return True

    def _write(self, key: str, part: str, features: NDArray[np.float32], flip: bool) -> None:
        array = np.ascontiguousarray(features, dtype=np.float32)
        path = self.path(key, part, flip=flip)
        if not np.isfinite(array).all():
            raise ValueError(
                f"the backbone gave NaN or infinite features for input {key[:16]} ({part}); not caching "
                f"{path}. Check embed.precision and the backbone's weights."
            )
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        # digest first: a run killed between the two writes leaves a digest without an entry, which reads
        # as missing; the other order would leave an entry that fails verification
        # not durable: a cache entry lost in a power cut is only recomputed, and fsyncs per file are slow
        atomic_write_text(self.digest_path(path), _entry_digest(data) + "\n", durable=False)
        atomic_write_bytes(path, data, durable=False)


def _entry_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _cached_features(
    cache: FeatureCache | None, keys: Sequence[str | None], shapes: dict[str, tuple[int, int]], flip: bool
) -> tuple[dict[tuple[str, str], NDArray[np.float32]], dict[int, list[str]]]:
    """(verified cache entries by (key, part), the parts each input still needs computed).

    ``shapes``: each part's ``(views, D)``.

    An input given as a decoded image (key None) needs every part; a repeated key is computed once. Entries
    that fail verification are recomputed, with one warning naming the files.
    """
    found: dict[tuple[str, str], NDArray[np.float32]] = {}
    missing: dict[int, list[str]] = {}
    seen: set[str] = set()
    rejected: list[str] = []
    for i, key in enumerate(keys):
        if key is None or cache is None:
            missing[i] = list(shapes)
            continue
        if key in seen:
            continue
        seen.add(key)
        for part, shape in shapes.items():
            try:
                entry = cache.get(key, part, flip=flip, shape=shape)
            except CacheEntryRejected as exc:
                rejected.append(str(exc))
                entry = None
            if entry is None:
                missing.setdefault(i, []).append(part)
            else:
                found[(key, part)] = entry
    if rejected:
        shown = "; ".join(rejected[:10]) + (f"; and {len(rejected) - 10} more" if len(rejected) > 10 else "")
        warnings.warn(
            f"feature cache: {len(rejected)} entr{'y' if len(rejected) == 1 else 'ies'} failed verification "
            f"and will be recomputed: {shown}",
            stacklevel=3,
        )
    return found, missing


@dataclass(frozen=True)
class EmbedStats:
    """How much work :func:`embed_inputs` did: cache hits and inputs actually run through the backbone."""

    n_items: int
    n_computed: int
    n_views_computed: int
    seconds: float
    # each input's feature-cache key (:func:`input_key`); None for decoded images or without a cache
    input_keys: tuple[str | None, ...] = ()


def _prepare(source: bytes | Image.Image, flip: bool) -> Image.Image:
    from roadwork.data.images import decode_image, pillow_pixel_limit

    if isinstance(source, Image.Image):
        image = source
    else:
        # the limits a caller enforces (predict, the served model) come before this path; here only Pillow's
        image = decode_image(source, max_pixels=pillow_pixel_limit() or 2**31 - 1, min_side=1).image
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = fixed_geometry(image)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def _check_inputs(inputs: Sequence[Any], batch_size: int) -> None:
    if isinstance(inputs, (bytes, Image.Image)) or not isinstance(inputs, Sequence):
        raise TypeError("inputs must be a sequence of encoded images (bytes) or PIL images.")
    for k, item in enumerate(inputs):
        if not isinstance(item, (bytes, bytearray, Image.Image)):
            raise TypeError(f"inputs[{k}] must be bytes or a PIL.Image.Image, got {type(item).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")


def embed_inputs(
    backbone: Backbone,
    inputs: Sequence[bytes | Image.Image],
    *,
    spec: ViewSpec,
    flip: bool = False,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    workers: int = 2,
    precision: str = "32",
    desc: str = "embed",
    show_progress: bool = True,
) -> tuple[NDArray[np.float32], EmbedStats]:
    """Features ``float32 [N, V, D]`` of encoded inputs (or decoded images): steps 1-5 of the module doc.

    With a ``cache``, inputs given as bytes are looked up by :func:`input_key` and only the missing ones
    are computed (and stored as they come, so an interrupted call loses at most one batch); decoded images
    are never cached (nothing identifies their source bytes). ``workers`` threads decode and cut views while
    the backbone runs one forward pass of ``batch_size * views`` inputs per batch at ``precision``.
    With a cache or more than one input, every input gets the same bits however the batches fall
    (:func:`forward_views`' ``pad_lone_view``); one uncached input of one view (serving) may differ from
    them by ~1e-6.

    Raises:
        TypeError / ValueError: malformed ``inputs`` or ``batch_size``.
        roadwork.data.images.ImageRejected: an input is not a decodable image.
    """
    _check_inputs(inputs, batch_size)
    start = time.perf_counter()
    keys = [
        input_key(bytes(x)) if cache is not None and not isinstance(x, Image.Image) else None for x in inputs
    ]
    shapes = {part: (spec.part_views(part), backbone.feature_dim) for part in spec.parts}
    cached, missing = _cached_features(cache, keys, shapes, flip)
    todo = list(missing)
    computed: dict[tuple[str | int, str], NDArray[np.float32]] = dict(cached)
    views_computed = 0
    # what is cached or embedded in bulk must not depend on batching; one uncached image (serving) may
    exact = cache is not None or len(inputs) > 1

    def prepare(i: int) -> list[list[Image.Image]]:
        image = _prepare(inputs[i], flip)
        return [_view_images(image, part, spec) for part in missing[i]]

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        progress_bar(total=len(todo), desc=desc, unit="img", show=show_progress and bool(todo)) as bar,
    ):
        for begin in range(0, len(todo), batch_size):
            batch = todo[begin : begin + batch_size]
            prepared = list(pool.map(prepare, batch))
            slots = [(i, part) for i in batch for part in missing[i]]
            features = forward_views(
                backbone,
                [views for parts in prepared for views in parts],
                precision=precision,
                pad_lone_view=exact,
            )
            for (i, part), part_features in zip(slots, features, strict=True):
                if keys[i] is not None:
                    cache.put(keys[i], part, part_features, flip=flip)
                computed[(keys[i] or i, part)] = part_features
                views_computed += len(part_features)
            bar.update(len(batch))

    out = np.empty((len(inputs), spec.num_views, backbone.feature_dim), np.float32)
    for i in range(len(inputs)):
        # a repeated input was computed (or read) once, under its key
        out[i] = np.concatenate([computed[(keys[i] or i, p)] for p in spec.parts])
    stats = EmbedStats(len(inputs), len(todo), views_computed, time.perf_counter() - start, tuple(keys))
    return out, stats


def infer_margins(
    backbone: Backbone,
    head: Any,
    inputs: Sequence[bytes | Image.Image],
    *,
    spec: ViewSpec,
    tta_flip: bool = False,
    cache: FeatureCache | None = None,
    batch_size: int = 32,
    precision: str = "32",
    desc: str = "infer",
    show_progress: bool = False,
) -> NDArray[np.float64]:
    """Margins ``z1 - z0`` of the model on ``inputs``: :func:`embed_inputs` then the head, logits averaged
    over the plain and mirrored picture when ``tta_flip``. The policy is the caller's last step."""
    from roadwork.models.head import predict_logits

    logits = []
    for flip in (False, True) if tta_flip else (False,):
        features, _ = embed_inputs(
            backbone,
            inputs,
            spec=spec,
            flip=flip,
            cache=cache,
            batch_size=batch_size,
            precision=precision,
            desc=f"{desc}{' (flip)' if flip else ''}",
            show_progress=show_progress,
        )
        logits.append(predict_logits(head, features))
    mean = sum(logits) / len(logits)
    return (mean[:, 1] - mean[:, 0]).astype(np.float64)
