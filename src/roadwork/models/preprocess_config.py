"""How an image becomes a backbone input: :class:`PreprocessConfig`, and the Hugging Face image processor
that agrees with it, both ways (the one an export ships, the one a model folder brings)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = ("bicubic", "bilinear")
_RESIZE_MODES = ("shortest_edge", "square", "squash")
_PIL_RESAMPLE_TO_NAME = {2: "bilinear", 3: "bicubic"}
_NAME_TO_PIL_RESAMPLE = {name: code for code, name in _PIL_RESAMPLE_TO_NAME.items()}


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything needed to turn a PIL image into a backbone input; JSON-able via :meth:`to_dict`.

    Attributes:
        image_size: side S in pixels of the square network input ``[3, S, S]``.
        resize_size: target of the resize step, in pixels. With ``resize_mode="shortest_edge"`` the shorter
            image side is resized to ``resize_size`` (aspect ratio kept) and a centred ``S x S`` crop is
            taken,
            so ``resize_size >= image_size``. With ``resize_mode="square"`` the image is resized straight to
            ``S x S`` (aspect ratio not kept) and ``resize_size`` must equal ``image_size``.
        mean: per-channel RGB mean subtracted after scaling pixels to [0, 1].
        std: per-channel RGB standard deviation (> 0) divided out after subtracting ``mean``.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased) resize filter.
        resize_mode: ``"shortest_edge"`` (Hugging Face ``BitImageProcessor``: resize in uint8, centre crop),
            ``"square"`` (``DINOv3ViTImageProcessor``: scale to [0, 1] first, resize in float, no crop) or
            ``"squash"`` (``ViTImageProcessor``: resize in uint8 straight to S x S, no crop; the one a
            miner's transformers 4.45 loads with ``use_fast=True``; on a 224 x 224 validator image at S = 224
            only the normalisation is left).
    """

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str = "shortest_edge"

    def __post_init__(self) -> None:
        for name in ("image_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PreprocessConfig.{name} must be a positive int (pixels), got {value!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or len(value) != 3:
                raise ValueError(f"PreprocessConfig.{name} must hold 3 floats (R, G, B), got {value!r}.")
            as_floats = tuple(float(v) for v in value)
            if not all(math.isfinite(v) for v in as_floats):
                raise ValueError(f"PreprocessConfig.{name} must be finite, got {value!r}.")
            # frozen dataclass: normalise lists from JSON into the declared tuple type
            object.__setattr__(self, name, as_floats)
        if any(v <= 0 for v in self.std):
            raise ValueError(f"PreprocessConfig.std must be > 0 in every channel, got {self.std!r}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"PreprocessConfig.interpolation must be one of {_INTERPOLATIONS}, "
                f"got {self.interpolation!r}."
            )
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"PreprocessConfig.resize_mode must be one of {_RESIZE_MODES}, got {self.resize_mode!r}."
            )
        if self.resize_mode == "shortest_edge" and self.resize_size < self.image_size:
            raise ValueError(
                f"PreprocessConfig.resize_size ({self.resize_size}) must be >= "
                f"image_size ({self.image_size}) "
                "with resize_mode='shortest_edge': the centre crop cannot be larger than the resized image."
            )
        if self.resize_mode in ("square", "squash") and self.resize_size != self.image_size:
            raise ValueError(
                f"PreprocessConfig.resize_size ({self.resize_size}) must equal "
                f"image_size ({self.image_size}) "
                f"with resize_mode={self.resize_mode!r} (no crop follows the resize)."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists); inverse of :meth:`from_dict`."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Build from :meth:`to_dict` output. Unknown keys are an error; ``resize_mode`` may be absent."""
        if not isinstance(d, dict):
            raise TypeError(f"PreprocessConfig.from_dict expects a dict, got {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"PreprocessConfig.from_dict: unknown keys {unknown}; allowed keys are {sorted(known)}."
            )
        missing = sorted(known - {"resize_mode"} - set(d))
        if missing:
            raise ValueError(f"PreprocessConfig.from_dict: missing keys {missing}.")
        return cls(**d)


def image_processor_for(cfg: PreprocessConfig) -> Any:
    """The Hugging Face image processor that reproduces ``cfg`` (what ships with an exported model)."""
    resample = _NAME_TO_PIL_RESAMPLE[cfg.interpolation]
    if cfg.resize_mode in ("squash", "square"):
        import transformers

        name = "ViTImageProcessor" if cfg.resize_mode == "squash" else "DINOv3ViTImageProcessor"
        return getattr(transformers, name)(
            size={"height": cfg.image_size, "width": cfg.image_size},
            resample=resample,
            image_mean=list(cfg.mean),
            image_std=list(cfg.std),
        )
    from transformers import BitImageProcessor

    return BitImageProcessor(
        size={"shortest_edge": cfg.resize_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        do_center_crop=True,
        resample=resample,
        image_mean=list(cfg.mean),
        image_std=list(cfg.std),
        do_convert_rgb=True,
    )


def _square_side(value: Any, key: str, path: Path) -> int:
    if not isinstance(value, dict) or set(value) != {"height", "width"} or value["height"] != value["width"]:
        raise ValueError(f"{path}: '{key}' must be a square {{'height': S, 'width': S}}, got {value!r}.")
    return int(value["height"])


def preprocess_from_processor_file(path: Path) -> PreprocessConfig:
    """Parse a Hugging Face ``preprocessor_config.json``; anything not representable is an error."""
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object.")
    for key, default in (("do_resize", True), ("do_rescale", True), ("do_normalize", True)):
        if d.get(key, default) is not True:
            raise ValueError(
                f"{path}: '{key}' must be true; roadwork always resizes, rescales and normalises."
            )
    rescale = float(d.get("rescale_factor", 1 / 255))
    if not math.isclose(rescale, 1 / 255, rel_tol=1e-9):
        raise ValueError(f"{path}: 'rescale_factor' must be 1/255, got {rescale}.")
    resample = d.get("resample", 3)
    if resample not in _PIL_RESAMPLE_TO_NAME:
        raise ValueError(f"{path}: 'resample' must be 2 (bilinear) or 3 (bicubic), got {resample!r}.")
    mean, std = d.get("image_mean", IMAGENET_MEAN), d.get("image_std", IMAGENET_STD)
    size = d.get("size")
    if not isinstance(size, dict):
        raise ValueError(
            f"{path}: 'size' must be a dict with 'shortest_edge' or 'height'/'width', got {size!r}."
        )
    center_crop = bool(d.get("do_center_crop", False))
    if set(size) == {"shortest_edge"}:
        if not center_crop:
            raise ValueError(
                f"{path}: a 'shortest_edge' resize needs 'do_center_crop': true to give a square input."
            )
        image_size = _square_side(d.get("crop_size"), "crop_size", path)
        resize_size, mode = int(size["shortest_edge"]), "shortest_edge"
    else:
        side = _square_side(size, "size", path)
        if center_crop:
            raise ValueError(
                f"{path}: a square 'size' followed by a centre crop is not supported; use "
                "{'shortest_edge': N} with a 'crop_size', or a square 'size' without crop."
            )
        squash = str(d.get("image_processor_type", "")).startswith("ViTImageProcessor")
        image_size, resize_size, mode = side, side, "squash" if squash else "square"
    return PreprocessConfig(
        image_size=image_size,
        resize_size=resize_size,
        mean=tuple(mean),
        std=tuple(std),
        interpolation=_PIL_RESAMPLE_TO_NAME[resample],
        resize_mode=mode,
    )
