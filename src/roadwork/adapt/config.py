"""The knobs of ExPLoRA domain adaptation (``adapt:`` in params.yaml): :class:`AdaptConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from roadwork.settings import (
    FRACTION,
    LORA_RANGES,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    Rule,
    Settings,
    at_least,
)
from roadwork.vocab import TRAINING_PRECISIONS

__all__ = ["AdaptConfig"]


@dataclass(frozen=True)
class AdaptConfig(Settings):
    """ExPLoRA settings: adapter layout, self-supervised objective, optimisation. Flat scalars only.

    Adapter layout (see :mod:`roadwork.adapt.layout`):

    Attributes:
        unfreeze_last_blocks: ``N`` (>= 0): every weight of the last ``N`` backbone blocks is trained (and,
            for EfficientNets with ``N >= 1``, the ``conv_head`` after the last block); the other blocks get
            LoRA/DoRA adapters. Must be smaller than the backbone's number of blocks.
        lora_rank: adapter rank ``r`` (>= 1).
        lora_alpha: adapter scale numerator (> 0); the update is ``(lora_alpha / lora_rank) * B @ A``.
        lora_dropout: dropout probability in [0, 1) on the adapters' input, student only, training only.
        use_dora: DoRA (weight-decomposed LoRA, a trainable magnitude per output unit) instead of LoRA.

    Schedule and optimiser (AdamW on the student's trainable weights and its projection head):

    Attributes:
        epochs: passes over the training images (>= 1).
        max_steps: cap on optimiser steps over the whole run (>= 0; 0 = no cap). The learning-rate and
            teacher-momentum schedules span ``min(epochs * steps_per_epoch, max_steps)`` steps.
        batch_size: images per step (>= 1); each contributes ``2 + n_local_crops`` crops. A data set smaller
            than a batch makes one batch of all its images; an incomplete last batch is dropped.
        lr: peak learning rate (> 0), reached after ``warmup_steps`` and then cosine-decayed towards 0.
        warmup_steps: linear learning-rate warm-up steps (>= 0).
        weight_decay: AdamW weight decay (>= 0) on matrices and convolution kernels (not on biases,
            normalisation weights, DoRA magnitudes and layer scales).
        gradient_clip_val: clip the global gradient norm to this value (>= 0; 0 = no clipping).

    Multi-crop (lightly's ``DINOTransform`` augmentations, normalised with the backbone's own mean/std; the
    global crops are ``preprocess.image_size`` pixels):

    Attributes:
        n_local_crops: local crops per image (>= 0), in addition to the 2 global crops.
        local_crop_size: side of the local crops in pixels (>= 8); for ViTs a multiple of the patch size is
            best (e.g. 48 for ``tiny``, 98 for DINOv2's patch 14).
        global_crop_min_scale: global crops cover ``[global_crop_min_scale, 1]`` of the image area, local
            crops ``[0.05, global_crop_min_scale]``; in (0.05, 1).

    Objective (DINO self-distillation with an EMA teacher; iBOT masked-patch loss for ViTs):

    Attributes:
        out_dim: prototypes ``K`` of the freshly initialised DINO projection head (>= 2). DINO/DINOv2 use
            65536; the default keeps CPU demo runs fast.
        head_hidden_dim: hidden width of the projection head's MLP (>= 1); DINO uses 2048.
        head_bottleneck_dim: bottleneck width before the weight-normalised last layer (>= 1); DINO uses 256.
        teacher_momentum: starting EMA momentum in [0, 1]; follows a cosine schedule up to 1 at the last step.
        teacher_temp: teacher softmax temperature (> 0) after the warm-up.
        warmup_teacher_temp: teacher temperature (> 0) at step 0, linearly moved to ``teacher_temp`` over
            ``warmup_teacher_temp_epochs``.
        warmup_teacher_temp_epochs: length of the teacher-temperature warm-up in epochs (>= 0, fractional ok).
        student_temp: student softmax temperature (> 0).
        center_momentum: momentum in [0, 1) of the teacher centres (DINO class token and iBOT patch tokens).
        freeze_last_layer_steps: the projection head's last layer gets no update during the first this many
            steps (>= 0).
        ibot_weight: weight (>= 0) of the iBOT masked-patch loss (ViTs only; ignored for EfficientNets).
        mask_probability: fraction in [0, 1] of the student's global crops masked for iBOT (ViTs with
            ``ibot_weight > 0``; otherwise no crop is masked).
        mask_ratio_min: smallest fraction in [0, 1] of patches masked in a masked crop.
        mask_ratio_max: largest fraction in [mask_ratio_min, 1] of patches masked in a masked crop.
        koleo_weight: weight (>= 0) of the KoLeo regulariser on the student's global-crop embeddings.

    Execution:

    Attributes:
        precision: ``"32"`` or ``"bf16-mixed"`` (autocast; losses in float32).
        seed: seed (>= 0) of adapter and head initialisation, crops, masks and dropout.
    """

    unfreeze_last_blocks: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False
    epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 0.04
    gradient_clip_val: float = 3.0
    n_local_crops: int = 2
    local_crop_size: int = 48
    global_crop_min_scale: float = 0.32
    out_dim: int = 1024
    head_hidden_dim: int = 512
    head_bottleneck_dim: int = 256
    teacher_momentum: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 0.0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 1
    ibot_weight: float = 1.0
    mask_probability: float = 0.5
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    koleo_weight: float = 0.0
    precision: str = "32"
    seed: int = 0

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"precision": TRAINING_PRECISIONS}
    RANGES: ClassVar[dict[str, Rule]] = {
        "unfreeze_last_blocks": at_least(0),
        **LORA_RANGES,
        "epochs": at_least(1),
        "max_steps": at_least(0, "0 = no cap"),
        "batch_size": at_least(1),
        "lr": POSITIVE,
        "warmup_steps": at_least(0),
        "weight_decay": NON_NEGATIVE,
        "gradient_clip_val": (NON_NEGATIVE[0], "finite and >= 0 (0 = off)"),
        "n_local_crops": at_least(0),
        "local_crop_size": at_least(8, "pixels"),
        "global_crop_min_scale": (lambda v: 0.05 < v < 1, "in (0.05, 1)"),
        "out_dim": at_least(2),
        "head_hidden_dim": at_least(1),
        "head_bottleneck_dim": at_least(1),
        "teacher_momentum": UNIT_INTERVAL,
        "teacher_temp": POSITIVE,
        "warmup_teacher_temp": POSITIVE,
        "warmup_teacher_temp_epochs": NON_NEGATIVE,
        "student_temp": POSITIVE,
        "center_momentum": FRACTION,
        "freeze_last_layer_steps": at_least(0),
        "ibot_weight": NON_NEGATIVE,
        "mask_probability": UNIT_INTERVAL,
        "mask_ratio_min": UNIT_INTERVAL,
        "mask_ratio_max": UNIT_INTERVAL,
        "koleo_weight": NON_NEGATIVE,
        "seed": at_least(0),
    }

    @classmethod
    def check_relations(cls, values: Mapping[str, Any], prefix: str) -> None:
        """A masked crop's largest masked fraction is not below its smallest."""
        if values["mask_ratio_max"] < values["mask_ratio_min"]:
            raise ValueError(
                f"{prefix}.mask_ratio_max ({values['mask_ratio_max']}) must be >= mask_ratio_min "
                f"({values['mask_ratio_min']})."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)
