"""LoRA / DoRA adapters on backbone networks (peft): which layers carry them, wrapping and merging.

Shared by supervised finetuning (:mod:`roadwork.train.finetune`) and ExPLoRA domain adaptation. Targets
are full module names inside ``Backbone.model`` (not suffixes), found from the network's structure:

* ViTs (``dinov2``, ``dinov2_with_registers``, ``dinov3``): the attention query and value projections,
  the ``nn.Linear`` layers ``q_proj`` and ``v_proj`` of every transformer block (transformers 5.x names,
  e.g. ``encoder.layer.3.attention.q_proj`` for DINOv2, ``model.layer.3.attention.v_proj`` for DINOv3).
* ``timm`` EfficientNets (``efficientnet_lite0``): every pointwise convolution, i.e. each 1x1, ungrouped
  ``nn.Conv2d`` inside a block (``blocks.<stage>.<i>.conv_pw`` / ``.conv_pwl``), plus the final 1x1
  ``conv_head`` that follows the last block. Depthwise and stem convolutions are left alone.

Blocks (:func:`backbone_blocks`) are the transformer layers of a ViT and the flattened ``blocks.<s>.<i>``
of an EfficientNet, in forward order. ``exclude_last_blocks=N`` leaves the last ``N`` of them without
adapters (ExPLoRA unfreezes those fully); for EfficientNets ``conv_head`` is then left out too, since it
sits after the last block.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Sequence
from typing import Protocol

from torch import nn

from roadwork.models.backbone import Backbone

__all__ = [
    "VIT_LORA_TARGETS",
    "LoraSettings",
    "adapted_copy",
    "apply_lora",
    "backbone_blocks",
    "lora_layers",
    "lora_target_modules",
    "merge_lora",
    "set_adapter_mode",
]

VIT_LORA_TARGETS = ("q_proj", "v_proj")
_VIT_FAMILIES = ("dinov2", "dinov2_with_registers", "dinov3")
_TIMM_HEAD_CONV = "conv_head"


def _check_backbone(backbone: Backbone) -> None:
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if lora_layers(backbone.model):
        raise ValueError(
            "backbone.model already carries LoRA layers; pass the plain backbone (merge adapters first)."
        )


def backbone_blocks(backbone: Backbone) -> list[str]:
    """Names (inside ``backbone.model``) of the backbone's blocks, in forward order.

    ViTs: the entries of the ``ModuleList`` of ``config.num_hidden_layers`` transformer layers (e.g.
    ``encoder.layer.0`` ... for DINOv2). timm EfficientNets: ``blocks.<stage>.<index>`` over all stages.
    Raises ValueError when the structure is not found (an unsupported architecture).
    """
    _check_backbone(backbone)
    model = backbone.model
    if backbone.family in _VIT_FAMILIES:
        depth = int(model.config.num_hidden_layers)
        lists = [
            name
            for name, module in model.named_modules()
            if isinstance(module, nn.ModuleList) and name.split(".")[-1] == "layer" and len(module) == depth
        ]
        if len(lists) != 1:
            raise ValueError(
                f"backbone ({backbone.family}) has {len(lists)} ModuleLists named 'layer' with "
                f"{depth} entries; expected exactly one list of transformer blocks."
            )
        return [f"{lists[0]}.{i}" for i in range(depth)]
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential) or not all(isinstance(s, nn.Sequential) for s in stages):
        raise ValueError(
            f"backbone ({backbone.family}, {type(model).__name__}) has no 'blocks' Sequential of stages; "
            "only timm EfficientNet-style models are supported."
        )
    return [f"blocks.{s}.{i}" for s, stage in enumerate(stages) for i in range(len(stage))]


def _is_pointwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def lora_target_modules(backbone: Backbone, *, exclude_last_blocks: int = 0) -> list[str]:
    """Full names (inside ``backbone.model``) of the layers that get adapters; see the module docstring.

    Args:
        backbone: a plain (not yet adapted) :class:`Backbone`.
        exclude_last_blocks: leave the last ``N`` blocks (>= 0, fewer than the number of blocks) without
            adapters.

    Returns:
        Names block by block in forward order (``q_proj`` before ``v_proj`` within a ViT block), e.g.
        ``["encoder.layer.0.attention.q_proj", "encoder.layer.0.attention.v_proj", ...]``.
    """
    blocks = backbone_blocks(backbone)
    if (
        isinstance(exclude_last_blocks, bool)
        or not isinstance(exclude_last_blocks, int)
        or not 0 <= exclude_last_blocks < len(blocks)
    ):
        raise ValueError(
            f"exclude_last_blocks must be an int in [0, {len(blocks)}) (the backbone has {len(blocks)} "
            f"blocks and at least one must keep adapters), got {exclude_last_blocks!r}."
        )
    kept = blocks[: len(blocks) - exclude_last_blocks]
    modules = dict(backbone.model.named_modules())
    targets: list[str] = []
    for block in kept:
        prefix = block + "."
        found = []
        for name, module in modules.items():
            if not name.startswith(prefix):
                continue
            if backbone.family in _VIT_FAMILIES:
                if name.split(".")[-1] in VIT_LORA_TARGETS and isinstance(module, nn.Linear):
                    found.append(name)
            elif _is_pointwise(module):
                found.append(name)
        if backbone.family in _VIT_FAMILIES:
            # q before v whatever order the model registers them in (DINOv3 registers k, v, q)
            found.sort(key=lambda n: VIT_LORA_TARGETS.index(n.split(".")[-1]))
        targets.extend(found)
    if backbone.family not in _VIT_FAMILIES and exclude_last_blocks == 0:
        head_conv = modules.get(_TIMM_HEAD_CONV)
        if head_conv is not None and _is_pointwise(head_conv):
            targets.append(_TIMM_HEAD_CONV)
    if backbone.family in _VIT_FAMILIES and len(targets) != len(VIT_LORA_TARGETS) * len(kept):
        raise ValueError(
            f"found {len(targets)} q_proj/v_proj Linear layers in {len(kept)} blocks of the "
            f"{backbone.family} backbone; expected {len(VIT_LORA_TARGETS)} per block."
        )
    if not targets:
        raise ValueError(f"no LoRA target layers found in the {backbone.family} backbone.")
    return targets


def lora_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that carry LoRA/DoRA adapters (peft ``LoraLayer``s)."""
    from peft.tuners.lora import LoraLayer

    return [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    use_dora: bool,
    targets: Sequence[str],
) -> nn.Module:
    """Wrap ``model`` with LoRA (or DoRA) adapters on exactly the modules named in ``targets``.

    peft injects the adapter layers **into ``model`` in place** (pass a copy to keep the original) and sets
    ``requires_grad=False`` on every parameter but the adapters'. ``lora_B`` starts at zero, so the wrapped
    model computes exactly what ``model`` did; ``lora_A`` is drawn from torch's global RNG, so seed it (or
    fork it) for reproducible initialisation. The adapter update is ``(alpha / rank) * B @ A``; DoRA adds a
    trainable magnitude vector per output unit. ``dropout`` acts on the adapter input only, and only while
    the adapter layer's ``lora_dropout`` module is in training mode.

    Args:
        model: the network to adapt, e.g. ``Backbone.model``.
        rank: adapter rank ``r`` (>= 1).
        alpha: scaling numerator (finite, > 0).
        dropout: adapter input dropout probability in [0, 1).
        use_dora: DoRA (weight-decomposed LoRA) instead of plain LoRA.
        targets: full module names (from :func:`lora_target_modules`); each must be an ``nn.Linear`` or
            ``nn.Conv2d`` of ``model``.

    Returns:
        The ``peft.PeftModel`` wrapping ``model``; call it as ``model`` is called.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if isinstance(model, PeftModel) or lora_layers(model):
        raise ValueError("model already carries LoRA layers; apply_lora expects a plain model.")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}.")
    if not isinstance(use_dora, bool):
        raise ValueError(f"use_dora must be a bool, got {use_dora!r}.")
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets:
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}.")
    modules = dict(model.named_modules())
    for target in targets:
        if not isinstance(target, str) or target not in modules or target == "":
            raise ValueError(f"targets: {target!r} is not the name of a submodule of {type(model).__name__}.")
        if not isinstance(modules[target], (nn.Linear, nn.Conv2d)):
            raise ValueError(
                f"targets: {target!r} is a {type(modules[target]).__name__}; LoRA targets must be "
                "nn.Linear or nn.Conv2d layers."
            )
    if len(set(targets)) != len(targets):
        raise ValueError(
            f"targets has repeated names: {sorted({t for t in targets if targets.count(t) > 1})}."
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        use_dora=use_dora,
        bias="none",
        # A string is matched with re.fullmatch against full module names: exactly these layers, no suffixes.
        target_modules="|".join(re.escape(t) for t in targets),
    )
    with warnings.catch_warnings():
        # transformers 5.x deprecation surfaced by peft's wrapping; not actionable here
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        wrapped = get_peft_model(model, config)
    adapted = {name.removeprefix("base_model.model.") for name in lora_layers(wrapped)}
    if adapted != set(targets):
        raise RuntimeError(
            f"peft adapted {sorted(adapted ^ set(targets))[:5]} differently from the requested targets."
        )
    return wrapped


class LoraSettings(Protocol):
    """The adapter knobs that :class:`~roadwork.train.finetune_config.FinetuneConfig` and
    :class:`~roadwork.adapt.config.AdaptConfig` both carry (see :func:`apply_lora`)."""

    @property
    def lora_rank(self) -> int: ...

    @property
    def lora_alpha(self) -> float: ...

    @property
    def lora_dropout(self) -> float: ...

    @property
    def use_dora(self) -> bool: ...


def adapted_copy(backbone: Backbone, settings: LoraSettings, targets: Sequence[str]) -> Backbone:
    """A copy of ``backbone`` whose ``model`` carries adapters on ``targets``, as ``settings`` say.

    ``backbone`` itself is not modified. :func:`apply_lora` draws ``lora_A`` from torch's global RNG (seed or
    fork it for reproducibility); ``lora_B`` starts at zero, so the copy computes exactly what ``backbone``
    does, and only the adapters require gradients.
    """
    adapted = copy.deepcopy(backbone)
    adapted.model = apply_lora(
        adapted.model,
        rank=settings.lora_rank,
        alpha=settings.lora_alpha,
        dropout=settings.lora_dropout,
        use_dora=settings.use_dora,
        targets=targets,
    )
    return adapted


def set_adapter_mode(model: nn.Module, mode: bool) -> None:
    """Put only the adapter layers (peft ``LoraLayer``s: adapters and their dropout) of ``model`` in ``mode``.

    The whole adapted layer, not only ``lora_dropout``: peft's DoRA skips its dropout (and may cache weights)
    when the layer itself is in eval mode; its base ``Linear``/``Conv2d`` has no modes. The rest of a
    backbone's network keeps its (eval) mode, so its dropout, drop-path and batch-norm statistics stay off.
    """
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.train(mode)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters of a :func:`apply_lora` model into its base weights; returns the plain network.

    ``W <- W + (alpha / rank) * B @ A`` (DoRA: the magnitude-rescaled weight), checked for non-finite
    values (peft's ``safe_merge``). The returned model has the original architecture and no LoRA layers.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(f"model must be a peft.PeftModel (from apply_lora), got {type(model).__name__}.")
    merged = model.merge_and_unload(safe_merge=True)
    if lora_layers(merged):
        raise RuntimeError("merge_and_unload left LoRA layers in the model.")
    return merged
