"""The one preprocessing definition (training, evaluation, prediction, export) and the validator's views.

Three parts:

* :func:`to_tensor_batch`: PIL images -> normalised backbone input, exactly what the Hugging Face image
  processor saved with the model produces (``BitImageProcessor`` for ``resize_mode="shortest_edge"``,
  ``DINOv3ViTImageProcessor`` for ``"square"``, ``ViTImageProcessor`` for ``"squash"``), so what is evaluated
  is what ships.
* :func:`tile_boxes`: the ``grid x grid`` overlapping tiles that :func:`roadwork.models.inference.image_views`
  cuts beside the global view.
* :func:`validator_augment` / :func:`render_as_validator` / :class:`TrainAugment`: the NATIX StreetVision
  validator's augmentation levels L0-L3, re-implemented from ``natix/utils/image_transforms.py`` (functions
  ``apply_augmentation_by_level``, ``get_base_transforms``, ``get_random_augmentations*``) and
  ``natix/protocol.py`` (``prepare_image_synapse``) of github.com/natixnetwork/streetvision-subnet, with every
  random draw taken from a caller-supplied ``numpy.random.Generator`` instead of global RNGs. The
  distortions of levels 2 and 3 are in :mod:`roadwork.data.distortions`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode

from roadwork.data.distortions import distort
from roadwork.models.backbone import PreprocessConfig

__all__ = [
    "LEVEL_DISTORTIONS",
    "VALIDATOR_IMAGE_SIZE",
    "TrainAugment",
    "ValidatorParams",
    "apply_validator_params",
    "render_as_validator",
    "sample_validator_params",
    "tile_boxes",
    "to_tensor_batch",
    "validator_augment",
]

_INTERPOLATION = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _check_rgb_images(images: Sequence[Image.Image], name: str = "images") -> None:
    if isinstance(images, Image.Image) or not isinstance(images, Sequence):
        raise TypeError(f"{name} must be a sequence of PIL images (wrap a single image in a list).")
    for k, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"{name}[{k}] must be a PIL.Image.Image, got {type(image).__name__}.")
        if image.mode != "RGB":
            raise ValueError(
                f"{name}[{k}] has mode {image.mode!r}; expected 'RGB'. Decode images with "
                "roadwork.data.images.decode_image, which converts every mode to RGB."
            )
        if min(image.size) < 1:
            raise ValueError(f"{name}[{k}] is empty (size {image.size}).")


def _to_uint8_chw(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _shortest_edge_size(height: int, width: int, target: int) -> list[int]:
    # transformers.image_transforms.get_resize_output_image_size with default_to_square=False
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = target, int(target * long / short)
    return [new_long, new_short] if width <= height else [new_short, new_long]


def _center_crop(image: Tensor, size: int) -> Tensor:
    # same offsets as transformers' TorchvisionBackend.center_crop (int((H - h) / 2))
    height, width = image.shape[-2:]
    top, left = int((height - size) / 2.0), int((width - size) / 2.0)
    return image[..., top : top + size, left : left + size]


def to_tensor_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> Tensor:
    """Normalised backbone input for a batch of RGB images.

    ``resize_mode="shortest_edge"``: the uint8 image's shorter side is resized to ``cfg.resize_size``
    (longer side ``int(resize_size * long / short)``, antialiased ``cfg.interpolation``), a centred
    ``image_size`` square is cropped (top/left offset ``int((side - image_size) / 2)``), then
    ``(x / 255 - mean) / std``. ``resize_mode="square"``: pixels are scaled to [0, 1], resized in float
    straight to ``image_size x image_size``, then normalised. ``resize_mode="squash"``: the uint8 image is
    resized straight to ``image_size x image_size`` (aspect ratio not kept), then normalised. These are the
    operations (and their order) of transformers' ``BitImageProcessor``, ``DINOv3ViTImageProcessor`` and
    ``ViTImageProcessor``; outputs agree to float32 rounding (< 1e-5).

    Args:
        images: RGB ``PIL.Image.Image`` objects of any sizes. An empty sequence gives an empty batch.
        cfg: the backbone's preprocessing.

    Returns:
        float32 tensor ``[B, 3, S, S]`` with ``S = cfg.image_size``.
    """
    if not isinstance(cfg, PreprocessConfig):
        raise TypeError(f"cfg must be a PreprocessConfig, got {type(cfg).__name__}.")
    _check_rgb_images(images)
    size = cfg.image_size
    if len(images) == 0:
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    interpolation = _INTERPOLATION[cfg.interpolation]
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for image in images:
        pixels = _to_uint8_chw(image)
        if cfg.resize_mode == "square":
            scaled = pixels.float() * (1.0 / 255.0)
            out.append(TF2.resize(scaled, [size, size], interpolation=interpolation, antialias=True))
        elif cfg.resize_mode == "squash":
            out.append(TF2.resize(pixels, [size, size], interpolation=interpolation, antialias=True))
        else:
            new_size = _shortest_edge_size(pixels.shape[1], pixels.shape[2], cfg.resize_size)
            # v2 resizes uint8 natively, as transformers does; v1 (TF) goes via float and rounds differently
            resized = TF2.resize(pixels, new_size, interpolation=interpolation, antialias=True)
            out.append(_center_crop(resized, size))
    batch = torch.stack(out)
    if cfg.resize_mode == "square":
        return (batch - mean) / std
    # BitImageProcessor fuses the 1/255 rescale into the statistics: (x - 255 mean) / (255 std)
    return (batch.float() - mean * 255.0) / (std * 255.0)


def tile_boxes(
    width: int, height: int, grid: int = 3, overlap: float = 0.25
) -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(left, top, right, bottom)`` (right/bottom exclusive) of a ``grid x grid`` tiling.

    Geometry, per axis of length ``L``: tiles have length ``t = L / (grid - (grid - 1) * overlap)`` and start
    every ``s = t * (1 - overlap)`` pixels, so neighbouring tiles share ``overlap * t`` pixels, the first tile
    starts at 0 and the last ends at ``L``. Edges are rounded to whole pixels (``round(k * s)`` and
    ``round(k * s + t)``). Tiles keep the image's aspect ratio;
    order is row-major (top row first, left to right).

    Raises:
        ValueError: ``grid < 1``, ``overlap`` outside ``[0, 1)``, or an image too small to give every tile at
            least one pixel.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1, got {grid!r}.")
    if not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}.")

    def edges(length: int, axis: str) -> list[tuple[int, int]]:
        tile = length / (grid - (grid - 1) * float(overlap))
        if tile < 1.0:
            raise ValueError(f"image {axis} {length}px is too small for grid={grid}, overlap={overlap}.")
        step = tile * (1.0 - float(overlap))
        spans = [(round(k * step), round(k * step + tile)) for k in range(grid)]
        spans[-1] = (spans[-1][0], length)
        return spans

    cols, rows = edges(width, "width"), edges(height, "height")
    return [(left, top, right, bottom) for top, bottom in rows for left, right in cols]


# ----------------------------------------------------------------------------------------------------
# Validator augmentations (streetvision-subnet natix/utils/image_transforms.py)
# ----------------------------------------------------------------------------------------------------

VALIDATOR_IMAGE_SIZE = 224
"""Side of the square image the validator sends (``TARGET_IMAGE_SIZE`` in natix/validator/config.py)."""

LEVEL_DISTORTIONS: dict[int, tuple[tuple[str, int], ...]] = {
    0: (),
    1: (),
    2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
    3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2)),
}
"""Per augmentation level: the distortions (:data:`roadwork.data.distortions.DISTORTION_PARAMS`) applied in
order, each with its maximum level; the level actually used is drawn uniformly from ``0..max``
(``random.randint(0, max)``; 0 means not applied)."""

_ROTATION_DEGREES = 20.0
_RRC_SCALE = (0.2, 1.0)


@dataclass(frozen=True)
class ValidatorParams:
    """Every random choice of one validator augmentation, so that applying it is deterministic.

    Attributes:
        level: augmentation level 0..3.
        angle: rotation in degrees, counter-clockwise (levels 1-3; 0.0 at level 0).
        crop: ``(top, left, height, width)`` of the square RandomResizedCrop box on the rotated image
            (levels 1-3).
        hflip, vflip: whether the horizontal / vertical flip is applied.
        distortions: ``(name, level)`` pairs applied in order, level >= 1 only.
        noise_seed: seed of the Gaussian noise of ``GNC`` (``None`` when GNC is not applied).
    """

    level: int
    angle: float = 0.0
    crop: tuple[int, int, int, int] | None = None
    hflip: bool = False
    vflip: bool = False
    distortions: tuple[tuple[str, int], ...] = ()
    noise_seed: int | None = None


def _check_level(level: int) -> None:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) <= 3:
        raise ValueError(f"level must be an int in 0..3, got {level!r}.")


def _check_rng(rng: np.random.Generator) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}."
        )


def _check_prob(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
    return float(value)


def _rrc_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    # torchvision RandomResizedCrop.get_params, scale (0.2, 1), ratio (1, 1): 10 tries, then central crop
    area = height * width
    for _ in range(10):
        side = round(math.sqrt(area * rng.uniform(*_RRC_SCALE)))
        if 0 < side <= width and 0 < side <= height:
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            return top, left, side, side
    if width < height:
        h, w = width, width
    elif width > height:
        h, w = height, height
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_validator_params(
    width: int, height: int, level: int, rng: np.random.Generator, *, flip_p: float = 0.0
) -> ValidatorParams:
    """Draw the random choices of validator level ``level`` for a ``width x height`` source image.

    Levels 1-3: angle ~ U(-20, 20); a square crop whose area is U(0.2, 1) of the image (torchvision's
    RandomResizedCrop sampling); flips with probability ``flip_p`` each; then level 2 draws CS, CC, JPEG
    levels
    from {0, 1} and level 3 draws CS, CC, JPEG, GNC, GB levels from {0, 1, 2}, each uniformly.

    ``flip_p`` defaults to 0 because that is what the subnet sends: its ``RandomHorizontalFlipWithParams`` and
    ``RandomVerticalFlipWithParams`` set ``self.params = {}`` in ``__init__``, so ``forward`` always takes the
    "reuse stored params" branch and ``params.get("do_flip", False)`` is False: the declared p=0.5 flips never
    happen. Pass ``flip_p=0.5`` to model the declared behaviour.
    """
    _check_level(level)
    _check_rng(rng)
    flip_p = _check_prob(flip_p, "flip_p")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int (pixels), got {value!r}.")
    level = int(level)
    if level == 0:
        return ValidatorParams(level=0)
    angle = float(rng.uniform(-_ROTATION_DEGREES, _ROTATION_DEGREES))
    crop = _rrc_box(height, width, rng)
    hflip = bool(rng.random() < flip_p)
    vflip = bool(rng.random() < flip_p)
    drawn = tuple((name, int(rng.integers(0, max_level + 1))) for name, max_level in LEVEL_DISTORTIONS[level])
    distortions = tuple((name, lvl) for name, lvl in drawn if lvl > 0)
    noise_seed = int(rng.integers(0, 2**63 - 1)) if any(name == "GNC" for name, _ in distortions) else None
    return ValidatorParams(level, angle, crop, hflip, vflip, distortions, noise_seed)


def _apply_distortion(tensor: Tensor, name: str, level: int, noise_seed: int | None) -> Tensor:
    # ApplyDeeperForensicsDistortion.__call__: float CHW -> (x * 255) truncated to uint8 HWC, distort, / 255
    img = distort((tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8), name, level, noise_seed)
    return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def _rotated_window(tensor: Tensor, angle: float, crop: tuple[int, int, int, int]) -> Tensor:
    """``TF.rotate(tensor, angle)[..., top:top + h, left:left + w]`` without rotating the rest of the image.

    The same computation as torchvision's tensor ``rotate`` (inverse affine matrix, the output pixel grid
    ``linspace(-n/2 + 1/2, n/2 - 1/2)`` per axis, one ``bmm`` with the rescaled matrix, nearest-neighbour
    ``grid_sample`` with zero padding), restricted to the crop's rows and columns of that grid: every output
    pixel depends only on its own grid point, so the window is the same (tested pixel for pixel). A crop of
    20 % of the area then costs a fifth of a full rotation.
    """
    from torch.nn.functional import grid_sample
    from torchvision.transforms.functional import _get_inverse_affine_matrix

    top, left, height, width = crop
    full_h, full_w = tensor.shape[-2:]
    matrix = _get_inverse_affine_matrix([0.0, 0.0], -angle, [0.0, 0.0], 1.0, [0.0, 0.0])
    theta = torch.tensor(matrix, dtype=tensor.dtype).reshape(1, 2, 3)
    xs = torch.linspace(-full_w * 0.5 + 0.5, full_w * 0.5 + 0.5 - 1, steps=full_w)[left : left + width]
    ys = torch.linspace(-full_h * 0.5 + 0.5, full_h * 0.5 + 0.5 - 1, steps=full_h)[top : top + height]
    base = torch.empty(1, height, width, 3, dtype=tensor.dtype)
    base[..., 0].copy_(xs)
    base[..., 1].copy_(ys.unsqueeze(-1))
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2) / torch.tensor([0.5 * full_w, 0.5 * full_h], dtype=tensor.dtype)
    grid = base.view(1, height * width, 3).bmm(rescaled).view(1, height, width, 2)
    return grid_sample(tensor.unsqueeze(0), grid, mode="nearest", padding_mode="zeros", align_corners=False)[
        0
    ]


def apply_validator_params(image: Image.Image, params: ValidatorParams) -> Image.Image:
    """Apply drawn validator choices to ``image``; returns the 224x224 RGB image handed to the JPEG encoder.

    L0 (``get_base_transforms``): ``convert("RGB")``, centre square crop of side ``min(W, H)``, PIL bilinear
    resize to 224. L1-L3 (``get_random_augmentations*``): ``convert("RGB")``, to float tensor, rotation by
    ``angle`` with nearest-neighbour sampling and black fill (the subnet sets BILINEAR on the transform but
    calls ``F.rotate(img, angle)`` without it), antialiased bilinear resized crop to 224, flips, then the
    distortions in order. The float result becomes a PIL image as ``transforms.ToPILImage`` does
    (``x * 255`` truncated to uint8), as in ``prepare_synapse``.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}.")
    if not isinstance(params, ValidatorParams):
        raise TypeError(f"params must be a ValidatorParams, got {type(params).__name__}.")
    rgb = image.convert("RGB")
    size = VALIDATOR_IMAGE_SIZE
    if params.level == 0:
        side = min(rgb.size)
        square = TF.center_crop(rgb, [side, side])
        return TF.resize(square, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if params.crop is None:
        raise ValueError(f"params.crop is required for level {params.level}; use sample_validator_params.")
    window = _rotated_window(TF.to_tensor(rgb), params.angle, params.crop)
    tensor = TF.resize(window, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    if params.hflip:
        tensor = TF.hflip(tensor)
    if params.vflip:
        tensor = TF.vflip(tensor)
    for name, level in params.distortions:
        tensor = _apply_distortion(tensor, name, level, params.noise_seed)
    return TF.to_pil_image(tensor)


def validator_augment(
    image: Image.Image, level: int, rng: np.random.Generator, *, flip_p: float = 0.0
) -> Image.Image:
    """One validator augmentation of ``image`` at ``level`` (0..3): a 224x224 RGB PIL image.

    Deterministic given ``rng``'s state. ``flip_p``: see :func:`sample_validator_params` (the subnet's flips
    are
    inert, so the default 0 reproduces what it sends).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}.")
    params = sample_validator_params(image.width, image.height, level, rng, flip_p=flip_p)
    return apply_validator_params(image, params)


def _jpeg_bytes(image: Image.Image) -> bytes:
    # prepare_image_synapse: image.save(BytesIO, format="JPEG") with Pillow's defaults (quality 75, 4:2:0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def render_as_validator(image: Image.Image, level: int, rng: np.random.Generator) -> bytes:
    """The JPEG bytes (224x224) the validator would send for ``image`` at ``level`` (before base64)."""
    return _jpeg_bytes(validator_augment(image, level, rng))


class TrainAugment:
    """Training-time augmentation: a validator level drawn per call, optional extras, the validator's JPEG.

    Per call: level ~ ``level_probs``; :func:`validator_augment` at that level (flips with ``flip_p``); colour
    jitter (brightness, contrast, saturation factors each ~ U(1 - s, 1 + s) with ``s = color_jitter``, in that
    order); with probability ``erase_p`` one rectangle (2-33 % of the area, aspect ratio 0.3-3.3 log-uniform)
    filled with uniform noise; finally, when ``jpeg`` is true, a Pillow JPEG round-trip at the validator's
    default quality, as a miner decodes what it receives.

    Args:
        level_probs: probabilities of levels 0..3 (4 non-negative numbers summing to 1).
        color_jitter: jitter strength ``s`` in [0, 1); 0 disables it.
        erase_p: probability of random erasing in [0, 1].
        flip_p: probability of each flip (see :func:`sample_validator_params`).
        jpeg: whether to end with the JPEG round-trip.
    """

    def __init__(
        self,
        level_probs: Sequence[float] = (0.25, 0.25, 0.25, 0.25),
        *,
        color_jitter: float = 0.0,
        erase_p: float = 0.0,
        flip_p: float = 0.0,
        jpeg: bool = True,
    ) -> None:
        probs = np.asarray(level_probs, dtype=np.float64)
        if probs.shape != (4,) or not np.all(np.isfinite(probs)) or np.any(probs < 0):
            raise ValueError(
                f"level_probs must be 4 non-negative numbers (levels 0..3), got {level_probs!r}."
            )
        if not math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9):
            raise ValueError(f"level_probs must sum to 1, got {level_probs!r} (sum {probs.sum()}).")
        if (
            isinstance(color_jitter, bool)
            or not isinstance(color_jitter, (int, float))
            or not 0 <= color_jitter < 1
        ):
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter!r}.")
        if not isinstance(jpeg, bool):
            raise TypeError(f"jpeg must be a bool, got {type(jpeg).__name__}.")
        self.level_probs = tuple(float(p) for p in probs)
        self.color_jitter = float(color_jitter)
        self.erase_p = _check_prob(erase_p, "erase_p")
        self.flip_p = _check_prob(flip_p, "flip_p")
        self.jpeg = jpeg

    def __repr__(self) -> str:
        return (
            f"TrainAugment(level_probs={self.level_probs}, color_jitter={self.color_jitter}, "
            f"erase_p={self.erase_p}, flip_p={self.flip_p}, jpeg={self.jpeg})"
        )

    def _augment(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        _check_rng(rng)
        level = int(rng.choice(4, p=self.level_probs))
        out = validator_augment(image, level, rng, flip_p=self.flip_p)
        if self.color_jitter > 0:
            s = self.color_jitter
            out = TF.adjust_brightness(out, float(rng.uniform(1 - s, 1 + s)))
            out = TF.adjust_contrast(out, float(rng.uniform(1 - s, 1 + s)))
            out = TF.adjust_saturation(out, float(rng.uniform(1 - s, 1 + s)))
        if self.erase_p > 0 and rng.random() < self.erase_p:
            out = self._erase(out, rng)
        return out

    def encode(self, image: Image.Image, rng: np.random.Generator) -> bytes:
        """Augment one image and encode it: the validator's JPEG when ``jpeg``, else lossless PNG.

        These are the bytes a miner would receive; deterministic given ``rng``'s state.
        """
        out = self._augment(image, rng)
        if self.jpeg:
            return _jpeg_bytes(out)
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
        return buffer.getvalue()

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Augment one image; deterministic given ``rng``'s state. Returns a 224x224 RGB image."""
        if not self.jpeg:
            return self._augment(image, rng)
        with Image.open(io.BytesIO(self.encode(image, rng))) as decoded:
            return decoded.convert("RGB")

    @staticmethod
    def _erase(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = np.array(image, dtype=np.uint8)
        height, width = pixels.shape[:2]
        area = height * width
        # torchvision RandomErasing defaults: scale (0.02, 0.33), ratio (0.3, 3.3); up to 10 tries
        for _ in range(10):
            target = area * rng.uniform(0.02, 0.33)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(3.3)))
            h, w = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < h < height and 0 < w < width:
                top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                pixels[top : top + h, left : left + w] = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                return Image.fromarray(pixels)
        return image
