"""Global pooling of a timm CNN's last feature map: average (timm's default), max, or generalised mean.

GeM (Radenović et al., "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018) is
``mean(x^p)^(1/p)`` over the spatial positions: p = 1 is the average, p -> inf the max. It weighs the few
strongly activated positions more than the average does, which helps when the object is small in the frame.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["POOLINGS", "GeMPool", "set_pooling"]

from roadwork.vocab import POOLINGS  # the names set_pooling accepts (backbone.pooling)


class GeMPool(nn.Module):
    """``[B, C, H, W] -> [B, C]``: ``mean(clamp(x, eps)^p)^(1/p)`` per channel (fixed ``p``, default 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if not p >= 1.0:
            raise ValueError(f"GeM power p must be >= 1, got {p}.")
        self.p, self.eps = float(p), float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def set_pooling(model: nn.Module, pooling: str) -> nn.Module:
    """Make the headless timm ``model`` (``num_classes=0``) pool its last feature map by ``pooling``.

    ``avg`` and ``max`` go through timm's own ``reset_classifier``; ``gem`` installs :class:`GeMPool` as the
    model's ``global_pool``. Returns ``model`` (changed in place). ValueError names the allowed values.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if pooling == "gem":
        model.global_pool = GeMPool()
    else:
        model.reset_classifier(0, global_pool=pooling)
    return model
