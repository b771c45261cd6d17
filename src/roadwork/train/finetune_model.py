"""The network and LightningModule of ``train.mode: finetune`` (its LoRA settings:
:mod:`roadwork.train.finetune_config`).

:class:`FinetuneNet` is an adapted :class:`~roadwork.models.backbone.Backbone` feeding a single-view
:class:`~roadwork.train.head.HeadModel`; :class:`FinetuneModule` trains it with everything
:class:`~roadwork.train.head.HeadLightningModule` does for a head. See :mod:`roadwork.train.finetune`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray
from torch import nn

from roadwork.models.backbone import Backbone
from roadwork.models.head import HeadModel
from roadwork.models.lora import set_adapter_mode
from roadwork.train.finetune_config import FinetuneConfig
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_module import HeadLightningModule

__all__ = ["FinetuneModule", "FinetuneNet"]


class FinetuneNet(nn.Module):
    """Pixels ``[B, 3, S, S]`` -> logits ``[B, 2]``: an adapted :class:`Backbone` feeding a single-view head.

    ``train(True)`` puts the head and the adapted layers (peft ``LoraLayer``: adapters, their
    ``lora_dropout`` and the wrapped ``nn.Linear``/``nn.Conv2d``, which behave the same in both modes) in
    training mode, while the rest of the backbone network stays in eval mode (:meth:`Backbone.train` enforces
    that); see :mod:`roadwork.train.finetune`.
    """

    def __init__(self, backbone: Backbone, head: HeadModel) -> None:
        super().__init__()
        if head.num_views != 1 or head.feature_dim != backbone.feature_dim:
            raise ValueError(
                f"head must take 1 view of {backbone.feature_dim} features, got {head.num_views} views of "
                f"{head.feature_dim}."
            )
        self.backbone = backbone
        self.head = head

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)  # the Backbone child forces its whole subtree to eval mode
        set_adapter_mode(self.backbone, mode)
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values).unsqueeze(1))


class FinetuneModule(HeadLightningModule):
    """:class:`HeadLightningModule` (loss, schedule, EMA, selection, history, early stop) on a
    :class:`FinetuneNet`.

    Differences: two optimizer parameter groups (head at ``HeadTrainConfig.lr``, adapters at
    ``FinetuneConfig.backbone_lr``; ``history.lr`` is the head's), EMA over the trainable parameters only,
    device-agnostic float32 validation, and :attr:`best_val_logits` (val_select logits of the selected epoch).
    """

    def __init__(
        self,
        net: FinetuneNet,
        cfg: HeadTrainConfig,
        ft_cfg: FinetuneConfig,
        *,
        class_weight: torch.Tensor | None,
        steps_per_epoch: int,
        val_labels: NDArray[np.int64],
        loggers: Sequence[Logger] = (),
    ) -> None:
        super().__init__(
            net,  # type: ignore[arg-type]  # HeadLightningModule only calls the model and iterates its parameters
            cfg,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            val_labels=val_labels,
            loggers=loggers,
        )
        self.ft_cfg = ft_cfg
        self.trainable_names = tuple(n for n, p in net.named_parameters() if p.requires_grad)
        self.best_val_logits: NDArray[np.float32] | None = None

    def param_groups(self) -> list[dict[str, Any]]:
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        adapters = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return [
            {"params": head, "lr": self.cfg.lr},
            {"params": adapters, "lr": self.ft_cfg.backbone_lr},
        ]

    def on_fit_start(self) -> None:
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(self.device)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.model.train()

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self._last_lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step(closure=optimizer_closure)
        if self.ema is not None:
            ema_params = dict(self.ema.named_parameters())
            model_params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name in self.trainable_names:
                    ema_params[name].lerp_(model_params[name], 1.0 - self.cfg.ema_decay)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        with torch.autocast(self.device.type, enabled=False):
            self._val_logits.append(self.evaluated_model(batch[0]).float().cpu())

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits).numpy().copy()
        super().on_validation_epoch_end()
        if self.best_epoch == self.epoch:
            self.best_val_logits = logits

    def checkpoint_state(self) -> dict[str, Any]:
        """:meth:`HeadLightningModule.checkpoint_state` with only the trainable tensors, plus
        ``best_val_logits``."""
        state = super().checkpoint_state()
        keep = set(self.trainable_names)
        for key in ("model", "ema", "best_state"):
            if state[key] is not None:
                state[key] = {k: v for k, v in state[key].items() if k in keep}
        logits = self.best_val_logits
        state["best_val_logits"] = None if logits is None else torch.from_numpy(logits)
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` onto this module's (unchanged) frozen weights."""
        keep = set(self.trainable_names)
        for key in ("model", "ema", "best_state"):
            if state[key] is not None and set(state[key]) != keep:
                raise ValueError(f"checkpoint {key!r} does not hold exactly the trainable tensors.")
        full = dict(state)
        full["model"] = {**self.model.state_dict(), **state["model"]}
        if self.ema is not None:
            full["ema"] = {**self.ema.state_dict(), **state["ema"]}
        full["best_state"] = {**self.evaluated_model.state_dict(), **state["best_state"]}
        super().load_checkpoint_state(full)
        logits = state["best_val_logits"]
        self.best_val_logits = None if logits is None else logits.numpy().copy()
