"""The LoRA knobs of ``train.mode: finetune`` (``train.finetune:`` in params.yaml), free of torch/Lightning so
configuration checks stay fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from roadwork.settings import LORA_RANGES, POSITIVE, Rule, Settings

__all__ = ["FinetuneConfig"]


@dataclass(frozen=True)
class FinetuneConfig(Settings):
    """The LoRA knobs of ``train.mode: finetune``; every other knob is in :class:`HeadTrainConfig`.

    Attributes:
        lora_rank: adapter rank ``r`` (>= 1).
        lora_alpha: adapter scale numerator (> 0); the update is ``(lora_alpha / lora_rank) * B @ A``.
        lora_dropout: dropout probability in [0, 1) on the adapters' input, during training steps only.
        use_dora: DoRA (weight-decomposed LoRA: adds a trainable magnitude per output unit) instead of LoRA.
        backbone_lr: peak learning rate (> 0) of the adapter parameters; the head uses
            ``HeadTrainConfig.lr``. Both follow ``HeadTrainConfig.schedule`` and its warmup.
    """

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False
    backbone_lr: float = 1e-4

    RANGES: ClassVar[dict[str, Rule]] = {**LORA_RANGES, "backbone_lr": POSITIVE}
