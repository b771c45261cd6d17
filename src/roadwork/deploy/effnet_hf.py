"""EfficientNet-Lite0 as transformers' own ``EfficientNetForImageClassification``, loadable since 4.45.

The subnet's miner pins ``transformers ~4.45``, which has no ``timm_wrapper`` model type; its EfficientNet
(the B0-B7 port) holds the same network as timm's ``tf_efficientnet_lite0`` once configured as Lite0:

* the B0 layout (width and depth 1.0, 224 px, the default stage table), a 1280-d head, batch-norm eps 1e-3;
* ``hidden_act="relu6"`` (Lite replaces swish with ReLU6);
* TF "same" padding: transformers pads stride-2 depthwise convolutions by ``correct_pad`` (0/1 for k = 3,
  1/2 for k = 5) and the stem by (0, 1, 0, 1), which is what timm's ``Conv2dSame`` computes for inputs whose
  side is a multiple of 32 (224, 384, ...);
* no squeeze-and-excitation: Lite has none, transformers' blocks always have one. Each is made the identity
  exactly: ``squeeze_expansion_ratio=0`` leaves one hidden unit, whose expand weights are 0 and biases 100,
  so the gate is ``sigmoid(100)``, which is exactly 1.0 in float32 (and float64 rounds it to 1 - 4e-44).

:func:`efficientnet_lite_classifier` builds that model from a roadwork backbone and a folded classifier; its
logits agree with timm's to float32 rounding (tested against the timm network in this environment and in
transformers 4.45.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LITE_ARCHITECTURES", "efficientnet_lite_classifier", "efficientnet_lite_state"]

LITE_ARCHITECTURES = ("tf_efficientnet_lite0",)
"""timm architectures this module converts."""

# sigmoid(_GATE_OPEN) rounds to exactly 1.0 in float32: a squeeze-excite gate that passes everything through
_GATE_OPEN = 100.0
_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def _lite0_config(
    id2label: Mapping[int, str], label2id: Mapping[str, int], image_size: int, pooling: str
) -> Any:
    from transformers import EfficientNetConfig

    return EfficientNetConfig(
        image_size=image_size,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        squeeze_expansion_ratio=0.0,
        dropout_rate=0.2,
        batch_norm_eps=1e-3,
        pooling_type={"avg": "mean", "max": "max"}[pooling],
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id=dict(label2id),
    )


def _bn(state: Mapping[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{dst}.{n}": state[f"{src}.{n}"] for n in names if f"{src}.{n}" in state}


def efficientnet_lite_state(
    timm_state: Mapping[str, torch.Tensor], hf_state: Mapping[str, torch.Tensor]
) -> dict:
    """timm ``tf_efficientnet_lite0`` (headless) tensors renamed to transformers' EfficientNet, with every
    squeeze-excite made the identity; ``hf_state`` (the target model's own state) gives the SE shapes.

    Raises KeyError naming a timm tensor the layout needs but ``timm_state`` lacks.
    """
    out = {"efficientnet.embeddings.convolution.weight": timm_state["conv_stem.weight"]}
    out |= _bn(timm_state, "bn1", "efficientnet.embeddings.batchnorm")
    flat = 0
    for stage, repeats in enumerate(_REPEATS):
        for j in range(repeats):
            src, dst = f"blocks.{stage}.{j}", f"efficientnet.encoder.blocks.{flat}"
            if stage == 0:  # depthwise-separable: conv_dw, bn1, conv_pw, bn2
                out[f"{dst}.depthwise_conv.depthwise_conv.weight"] = timm_state[f"{src}.conv_dw.weight"]
                out |= _bn(timm_state, f"{src}.bn1", f"{dst}.depthwise_conv.depthwise_norm")
                out[f"{dst}.projection.project_conv.weight"] = timm_state[f"{src}.conv_pw.weight"]
                out |= _bn(timm_state, f"{src}.bn2", f"{dst}.projection.project_bn")
            else:  # inverted residual: conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3
                out[f"{dst}.expansion.expand_conv.weight"] = timm_state[f"{src}.conv_pw.weight"]
                out |= _bn(timm_state, f"{src}.bn1", f"{dst}.expansion.expand_bn")
                out[f"{dst}.depthwise_conv.depthwise_conv.weight"] = timm_state[f"{src}.conv_dw.weight"]
                out |= _bn(timm_state, f"{src}.bn2", f"{dst}.depthwise_conv.depthwise_norm")
                out[f"{dst}.projection.project_conv.weight"] = timm_state[f"{src}.conv_pwl.weight"]
                out |= _bn(timm_state, f"{src}.bn3", f"{dst}.projection.project_bn")
            for part in ("reduce", "expand"):
                weight, bias = f"{dst}.squeeze_excite.{part}.weight", f"{dst}.squeeze_excite.{part}.bias"
                out[weight] = torch.zeros_like(hf_state[weight])
                fill = _GATE_OPEN if part == "expand" else 0.0
                out[bias] = torch.full_like(hf_state[bias], fill)
            flat += 1
    out["efficientnet.encoder.top_conv.weight"] = timm_state["conv_head.weight"]
    out |= _bn(timm_state, "bn2", "efficientnet.encoder.top_bn")
    return out


def efficientnet_lite_classifier(
    timm_model: torch.nn.Module,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    id2label: Mapping[int, str],
    label2id: Mapping[str, int],
    image_size: int,
) -> torch.nn.Module:
    """``EfficientNetForImageClassification`` holding ``timm_model``'s (tf_efficientnet_lite0) weights and the
    classifier ``(weight [C, 1280], bias [C])``, in eval mode, float32.

    Raises ValueError when ``timm_model`` is not a Lite0, or pools otherwise than by average or max (the two
    ``pooling_type`` values transformers offers; GeM has none).
    """
    from transformers import EfficientNetForImageClassification

    architecture = getattr(timm_model, "pretrained_cfg", {}).get("architecture")
    if architecture not in LITE_ARCHITECTURES:
        raise ValueError(f"efficientnet_lite_classifier converts {LITE_ARCHITECTURES}, not {architecture!r}.")
    pool = getattr(timm_model, "global_pool", None)
    pooling = getattr(pool, "pool_type", type(pool).__name__)
    if pooling not in ("avg", "max"):
        raise ValueError(
            f"the backbone pools its features by {pooling!r} (backbone.pooling); transformers' EfficientNet "
            "pools by mean or max only. Use backbone.pooling=avg or max to export."
        )
    config = _lite0_config(id2label, label2id, image_size, pooling)
    with torch.random.fork_rng(devices=[]):  # initial weights are all overwritten
        model = EfficientNetForImageClassification(config)
    timm_state = {k: v.detach().to("cpu", torch.float32) for k, v in timm_model.state_dict().items()}
    state = efficientnet_lite_state(timm_state, model.state_dict())
    state["classifier.weight"], state["classifier.bias"] = weight.float(), bias.float()
    model.load_state_dict(state, strict=True)
    return model.float().eval()
