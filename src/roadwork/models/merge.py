"""Folding LoRA/DoRA adapters into a backbone, and the one check that the fold changed nothing.

Shared by ExPLoRA (:mod:`roadwork.adapt`) and finetuning (:mod:`roadwork.train.finetune`).
:func:`merge_adapters` turns an adapted backbone into a plain :class:`Backbone` (peft ``merge_and_unload``
via :func:`roadwork.models.lora.merge_lora`). :func:`check_merged` compares what the network computed before
the fold with what it computes after, both in exact float32 (no autocast; TF32 off on GPUs, see
:func:`exact_float32`), and raises :class:`MergeCheckError` when any value differs by more than
:data:`MERGE_TOLERANCE`. ExPLoRA compares backbone features on a fixed batch (:func:`merge_check`);
finetuning compares the backbone + head's val_select logits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from roadwork.models.backbone import Backbone
from roadwork.models.lora import lora_layers, merge_lora

__all__ = [
    "MERGE_TOLERANCE",
    "MergeCheckError",
    "backbone_features",
    "check_merged",
    "exact_float32",
    "merge_adapters",
    "merge_check",
]

# Merged and adapter forward compute the same function with the same float32 weights in a different order,
# both in exact float32, so they differ by float32 rounding only: below 1e-6 on the `tiny` features and
# logits the tests check. 1e-4 (absolute) leaves two orders of magnitude for larger networks and values,
# while a wrong merge (a 1 % error in one weight matrix) moves them by ~1e-2.
MERGE_TOLERANCE = 1e-4


class MergeCheckError(RuntimeError):
    """The merged network's outputs differ from the unmerged network's by more than the tolerance."""


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN convolutions while inside (no effect on CPU); restored after."""
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
        with torch.no_grad(), torch.autocast(device.type, enabled=False), exact_float32():
            return backbone(batch.to(device=device, dtype=torch.float32)).float().cpu()
    finally:
        for module, mode in modes:
            module.training = mode


def _check_tol(tol: float) -> None:
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 <= tol < float("inf"):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")


def check_merged(reference: Tensor, merged: Tensor, *, what: str, tol: float = MERGE_TOLERANCE) -> float:
    """``max |merged - reference|``; raise :class:`MergeCheckError` above ``tol``.

    Args:
        reference: the unmerged network's outputs (float32, exact: see the module docstring).
        merged: the merged network's outputs on the same inputs, computed the same way.
        what: what the outputs are, for the message (e.g. ``"backbone features on the check batch"``).
        tol: largest accepted difference (finite, >= 0).

    Raises:
        MergeCheckError: the difference exceeds ``tol`` or is not finite, or the shapes differ.
    """
    _check_tol(tol)
    if reference.shape != merged.shape:
        raise MergeCheckError(
            f"merge check failed: the merged network's {what} have shape {tuple(merged.shape)}, the "
            f"unmerged network's {tuple(reference.shape)}."
        )
    diff = float((merged.float().cpu() - reference.float().cpu()).abs().max())
    if not diff <= tol:  # NaN fails too
        raise MergeCheckError(
            f"merge check failed: the merged network's {what} differ from the unmerged (adapter) network's "
            f"by {diff:.3g} (tolerance {tol:.3g}); nothing was saved."
        )
    return diff


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
        MergeCheckError: see :func:`check_merged`.
    """
    _check_tol(tol)
    if not isinstance(batch, Tensor) or batch.ndim != 4 or batch.shape[0] == 0:
        raise ValueError("batch must be a non-empty [B, 3, S, S] tensor of preprocessed pixels.")
    reference = unmerged if isinstance(unmerged, Tensor) else backbone_features(unmerged, batch)
    check = backbone_features(merged, batch)
    return check_merged(reference, check, what="backbone features on the check batch", tol=tol)


def merge_adapters(backbone: Backbone, *, backbone_id: str) -> Backbone:
    """Fold ``backbone``'s adapters into its weights **in place**; returns it as a plain frozen backbone.

    ``backbone.model`` becomes the original architecture (``merge_and_unload``), with every parameter frozen,
    the network in eval mode and ``backbone_id`` set to the given id (where it will be saved).
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    backbone.model = merge_lora(backbone.model)
    if lora_layers(backbone.model):
        raise RuntimeError("merging left adapter layers in the backbone.")
    backbone.model.requires_grad_(False)
    backbone.eval()
    backbone.backbone_id = backbone_id
    return backbone
