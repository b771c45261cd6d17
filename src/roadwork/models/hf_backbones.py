"""Hugging Face ViT backbones (DINOv2, DINOv2 with registers, DINOv3) from a folder or the hub, and the
seeded ``"tiny"`` DINOv2 of the tests and the offline demo."""

from __future__ import annotations

from pathlib import Path

import torch

from roadwork.models.frozen_backbone import Backbone
from roadwork.models.preprocess_config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    preprocess_from_processor_file,
)

TINY_ID = "tiny"
_MODEL_TYPE_TO_FAMILY = {
    "dinov2": "dinov2",
    "dinov2_with_registers": "dinov2_with_registers",
    "dinov3_vit": "dinov3",
}


def _default_preprocess(family: str) -> PreprocessConfig:
    if family == "dinov3":
        # DINOv3ViTImageProcessor defaults: 224 x 224 bilinear, ImageNet statistics, no crop
        return PreprocessConfig(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", resize_mode="square")
    return PreprocessConfig(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def freeze_hf(model: torch.nn.Module, backbone_id: str, preprocess: PreprocessConfig) -> Backbone:
    """A loaded Hugging Face ViT (``model_type`` one of the supported families) as a frozen Backbone."""
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


def build_tiny(seed: int, attn_implementation: str) -> Backbone:
    """The ``"tiny"`` backbone: a small Dinov2Model whose weights depend on ``seed`` alone."""
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
    return freeze_hf(model.eval(), TINY_ID, preprocess)


def load_hf(source: str, attn_implementation: str, processor_file: Path | None) -> Backbone:
    """A DINOv2 / DINOv3 model from a folder or hub id; preprocessing from ``processor_file`` when it
    exists, else the family's default."""
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
        preprocess = preprocess_from_processor_file(processor_file)
    else:
        preprocess = _default_preprocess(family)
    return freeze_hf(model.eval(), source, preprocess)


def hub_preprocessor_file(backbone_id: str) -> Path | None:
    """Fetch (or find in the local cache) a hub model's config, then its optional preprocessor config."""
    from transformers.utils import cached_file

    # config.json first: it must exist, so an unreachable hub or a wrong id raises here (OSError)
    cached_file(backbone_id, "config.json")
    found = cached_file(backbone_id, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    return Path(found) if found else None
