"""ExPLoRA's adapter layout: which backbone weights train fully, which get LoRA/DoRA, which stay frozen.

On a copy of a frozen :class:`~roadwork.models.backbone.Backbone` (arXiv 2406.10973, section 4):

* the last ``N = unfreeze_last_blocks`` blocks (:func:`~roadwork.models.lora.backbone_blocks`) are unfrozen
  entirely; for timm EfficientNets with ``N >= 1`` so is the 1x1 ``conv_head`` that follows the last block
  (with ``N = 0`` it carries an adapter instead, as :func:`~roadwork.models.lora.lora_target_modules` says);
* every normalisation layer of the network (LayerNorm, BatchNorm, GroupNorm, RMSNorm) trains its affine
  weights;
* LoRA or DoRA adapters (:func:`~roadwork.models.lora.apply_lora`) go on the layers named by
  :func:`~roadwork.models.lora.lora_target_modules` with ``exclude_last_blocks=N``: ``q_proj``/``v_proj``
  for ViTs, the pointwise convolutions for EfficientNets;
* everything else (patch/stem embeddings, position embeddings, class/mask tokens, the remaining weights of the
  adapted blocks) stays frozen and bit-identical.

Modes are explicit: the backbone network stays in eval mode (no stochastic depth; batch-norm layers use and
keep their running statistics, so only their affine weights adapt), and only the adapter layers follow the
requested mode (their input dropout is active in training). :func:`~roadwork.models.lora.set_adapter_mode`
does that.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from roadwork.adapt.config import AdaptConfig
from roadwork.models.backbone import Backbone
from roadwork.models.lora import (
    adapted_copy,
    backbone_blocks,
    lora_layers,
    lora_target_modules,
    set_adapter_mode,
)

__all__ = [
    "PEFT_PREFIX",
    "AdapterLayout",
    "base_parameter_name",
    "build_student",
    "is_norm_layer",
    "plan_layout",
]

# peft's wrapper prefixes every name of the wrapped network with this
PEFT_PREFIX = "base_model.model."
_TIMM_HEAD_CONV = "conv_head"
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
_NORM_NAME_SUFFIXES = ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm", "BatchNorm2d")


def is_norm_layer(module: nn.Module) -> bool:
    """A normalisation layer: torch's LayerNorm/GroupNorm/BatchNorm*/RMSNorm or a class named like one."""
    return isinstance(module, _NORM_TYPES) or type(module).__name__.endswith(_NORM_NAME_SUFFIXES)


def base_parameter_name(name: str) -> str:
    """The plain network's name of a parameter of the adapted network (``None``-safe for adapters).

    Strips peft's ``base_model.model.`` prefix and the ``.base_layer`` of wrapped layers, so
    ``base_model.model.encoder.layer.0.attention.q_proj.base_layer.weight`` maps to
    ``encoder.layer.0.attention.q_proj.weight``. Adapter parameters keep their ``lora_*`` parts.
    """
    return name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")


@dataclass(frozen=True)
class AdapterLayout:
    """Where ExPLoRA trains what, as module names inside ``Backbone.model`` (the plain network).

    Attributes:
        lora_targets: layers that carry LoRA/DoRA adapters.
        unfrozen_blocks: blocks trained entirely (the last ``unfreeze_last_blocks``).
        unfrozen_modules: other modules trained entirely (EfficientNet's ``conv_head`` when ``N >= 1``).
        norm_layers: every normalisation layer (affine weights trained).
        unfrozen_parameters: the plain network's parameters that train fully (sorted).
    """

    lora_targets: tuple[str, ...]
    unfrozen_blocks: tuple[str, ...]
    unfrozen_modules: tuple[str, ...]
    norm_layers: tuple[str, ...]
    unfrozen_parameters: tuple[str, ...]


def plan_layout(backbone: Backbone, cfg: AdaptConfig) -> AdapterLayout:
    """The layout for ``backbone`` (plain, without adapters) under ``cfg``; see the module docstring.

    Raises ValueError when ``cfg.unfreeze_last_blocks`` is not smaller than the backbone's number of blocks.
    """
    if not isinstance(cfg, AdaptConfig):
        raise TypeError(f"cfg must be an AdaptConfig, got {type(cfg).__name__}.")
    blocks = backbone_blocks(backbone)  # also rejects a backbone that already carries adapters
    n = cfg.unfreeze_last_blocks
    if n >= len(blocks):
        raise ValueError(
            f"AdaptConfig.unfreeze_last_blocks is {n}; the {backbone.family} backbone has {len(blocks)} "
            f"blocks and at least one must keep adapters, so it must be < {len(blocks)}."
        )
    targets = lora_target_modules(backbone, exclude_last_blocks=n)
    unfrozen_blocks = tuple(blocks[len(blocks) - n :]) if n else ()
    model = backbone.model
    modules = dict(model.named_modules())
    unfrozen_modules: tuple[str, ...] = ()
    if backbone.family == "timm" and n >= 1 and _TIMM_HEAD_CONV in modules:
        unfrozen_modules = (_TIMM_HEAD_CONV,)
    norms = tuple(name for name, module in modules.items() if name and is_norm_layer(module))
    prefixes = tuple(f"{m}." for m in (*unfrozen_blocks, *unfrozen_modules, *norms))
    unfrozen = tuple(sorted(name for name, _ in model.named_parameters() if name.startswith(prefixes)))
    return AdapterLayout(
        lora_targets=tuple(targets),
        unfrozen_blocks=unfrozen_blocks,
        unfrozen_modules=unfrozen_modules,
        norm_layers=norms,
        unfrozen_parameters=unfrozen,
    )


def build_student(backbone: Backbone, cfg: AdaptConfig) -> tuple[Backbone, AdapterLayout]:
    """A copy of ``backbone`` whose ``model`` is a peft model laid out as :func:`plan_layout` says.

    ``backbone`` itself is not modified. The adapters' ``lora_A`` is drawn from torch's global RNG (seed it
    for reproducibility); ``lora_B`` starts at zero, so the student initially computes exactly what
    ``backbone`` does. Exactly the adapters and :attr:`AdapterLayout.unfrozen_parameters` require gradients.
    The copy is in eval mode with its adapters in training mode.
    """
    layout = plan_layout(backbone, cfg)
    student = adapted_copy(backbone, cfg, layout.lora_targets)
    unfrozen = set(layout.unfrozen_parameters)
    found = set()
    for name, param in student.model.named_parameters():
        base = base_parameter_name(name)
        if base in unfrozen:
            param.requires_grad_(True)
            found.add(base)
    if found != unfrozen:
        raise RuntimeError(f"parameters {sorted(unfrozen - found)[:5]} were not found in the adapted model.")
    if not lora_layers(student.model):
        raise RuntimeError("apply_lora left no adapter layers in the student.")
    student.eval()
    set_adapter_mode(student.model, True)
    return student, layout
