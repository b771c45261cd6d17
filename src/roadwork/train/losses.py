"""Classification losses and class weights for the 2-logit roadwork head.

Both functions work on the head's two logits ``(z0, z1)`` (class 0 = no roadwork, class 1 = roadwork).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray


def inverse_frequency_weights(labels: NDArray[np.integer], num_classes: int = 2) -> NDArray[np.float64]:
    """Class weights ``w_c = N / (num_classes * n_c)`` (scikit-learn's ``class_weight="balanced"``).

    ``N`` is the number of rows in ``labels`` and ``n_c`` the rows of class ``c``; every row counts once, so
    augmented copies count as often as they appear in training. With these weights each class contributes
    the same total weight to a loss summed over rows.

    Raises ValueError when ``labels`` is not 1-D, holds values outside ``0..num_classes-1``, or lacks a class
    (its weight would be infinite: a classifier cannot be trained without examples of every class).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, found {sorted(set(labels.tolist()))[:5]}."
        )
    counts = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero(counts == 0).tolist()
    if missing:
        raise ValueError(
            f"labels has no example of class(es) {missing}: inverse-frequency weights are undefined; "
            "train on data that contains every class."
        )
    return labels.size / (num_classes * counts.astype(np.float64))


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean focal loss (Lin et al., 2017) with class weights and label smoothing; a scalar tensor.

    With ``p = softmax(logits)``, ``t_c = -(1 - p_c)**gamma * log p_c``, smoothing ``e`` over ``C`` classes
    and class weights ``w`` (all ones when ``None``), the loss of row ``i`` with label ``y`` is
    ``(1 - e) * w_y * t_y + (e / C) * sum_c w_c * t_c`` and the mean divides the sum over rows by
    ``sum_i w_{y_i}``. This is exactly how ``torch.nn.functional.cross_entropy`` combines ``weight`` and
    ``label_smoothing``, so ``gamma = 0`` reproduces it. Computed in float32 whatever the logits' dtype.

    Args:
        logits: ``[B, C]`` raw scores.
        target: ``[B]`` integer class indices in ``0..C-1``.
        gamma: focusing parameter, ``>= 0``; larger values down-weight well-classified rows.
        weight: optional ``[C]`` class weights.
        label_smoothing: ``e`` in ``[0, 1)``.
    """
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [B, C] and target [B], got {tuple(logits.shape)} and {tuple(target.shape)}."
        )
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}.")
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}.")
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)
    per_class = -((1 - log_p.exp()) ** gamma) * log_p
    w = (
        torch.ones(num_classes, dtype=per_class.dtype, device=per_class.device)
        if weight is None
        else weight.to(device=per_class.device, dtype=per_class.dtype)
    )
    true_term = per_class.gather(1, target[:, None]).squeeze(1) * w[target]
    smooth_term = (per_class * w).sum(dim=1) / num_classes
    rows = (1 - label_smoothing) * true_term + label_smoothing * smooth_term
    return rows.sum() / w[target].sum()
