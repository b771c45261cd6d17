"""Folding the adapters into the backbone, and checking that the fold changed nothing.

:func:`merge_student` turns the adapted student into a plain :class:`Backbone` (peft ``merge_and_unload``
via :func:`roadwork.models.lora.merge_lora`); :func:`merge_check` compares backbone features of the merged
network with those of the unmerged one on a fixed batch, in exact float32 (TF32 off on GPUs), and raises
:class:`MergeCheckError` when they differ by more than the tolerance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from roadwork.models.backbone import Backbone
from roadwork.models.lora import lora_layers, merge_lora

__all__ = ["MERGE_TOLERANCE", "MergeCheckError", "backbone_features", "merge_check", "merge_student"]

# Merged vs. adapter forward compute the same function with the same float32 weights in a different order.
MERGE_TOLERANCE = 1e-4


class MergeCheckError(RuntimeError):
    """The merged backbone's features differ from the unmerged backbone's by more than the tolerance."""


@contextlib.contextmanager
def _exact_float32() -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def backbone_features(backbone: Backbone, batch: Tensor) -> Tensor:
    """``backbone(batch)`` as float32 on CPU: no gradients, no autocast, no TF32, every module in eval mode.

    The modes of ``backbone``'s modules are restored afterwards.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    modes = [(m, m.training) for m in backbone.modules()]
    device = next(backbone.model.parameters()).device
    try:
        for module, _ in modes:
            module.training = False
        with torch.no_grad(), torch.autocast(device.type, enabled=False), _exact_float32():
            return backbone(batch.to(device=device, dtype=torch.float32)).float().cpu()
    finally:
        for module, mode in modes:
            module.training = mode


def merge_check(
    unmerged: Backbone | Tensor, merged: Backbone, batch: Tensor, tol: float = MERGE_TOLERANCE
) -> float:
    """Max absolute difference of backbone features, merged vs. unmerged, on ``batch``; raise above ``tol``.

    Args:
        unmerged: the adapted backbone before merging (its ``model`` a peft model), or its features on
            ``batch`` computed beforehand with :func:`backbone_features` (merging works in place, so this lets
            a caller check without keeping a second copy of the network).
        merged: the merged, plain backbone.
        batch: ``[B, 3, S, S]`` preprocessed pixels.
        tol: largest accepted difference (finite, >= 0).

    Returns:
        ``max |merged(batch) - unmerged(batch)|`` over all features, in float32.

    Raises:
        MergeCheckError: the difference exceeds ``tol`` or is not finite, or the shapes differ.
    """
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < float("inf"):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
    if not isinstance(batch, Tensor) or batch.ndim != 4 or batch.shape[0] == 0:
        raise ValueError("batch must be a non-empty [B, 3, S, S] tensor of preprocessed pixels.")
    reference = unmerged if isinstance(unmerged, Tensor) else backbone_features(unmerged, batch)
    check = backbone_features(merged, batch)
    if reference.shape != check.shape:
        raise MergeCheckError(
            f"merge check failed: merged features have shape {tuple(check.shape)}, unmerged "
            f"{tuple(reference.shape)}."
        )
    diff = float((check - reference.float().cpu()).abs().max())
    if not diff <= tol:  # NaN fails too
        raise MergeCheckError(
            f"merge check failed: merged backbone features differ from the unmerged (adapter) backbone's by "
            f"{diff:.3g} on the check batch (tolerance {tol:.3g}); the merged backbone was not saved."
        )
    return diff


def merge_student(student: Backbone, *, backbone_id: str) -> Backbone:
    """Fold ``student``'s adapters into its weights **in place**; returns it as a plain frozen backbone.

    ``student.model`` becomes the original architecture (``merge_and_unload``), with every parameter frozen,
    the network in eval mode and ``backbone_id`` set to the given id (where it will be saved).
    """
    if not isinstance(student, Backbone):
        raise TypeError(f"student must be a roadwork Backbone, got {type(student).__name__}.")
    student.model = merge_lora(student.model)
    if lora_layers(student.model):
        raise RuntimeError("merging left adapter layers in the backbone.")
    student.model.requires_grad_(False)
    student.eval()
    student.backbone_id = backbone_id
    return student
