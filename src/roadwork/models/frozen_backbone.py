"""The :class:`Backbone` every loader returns: a frozen network, its preprocessing, forward, fingerprint and
save (:func:`roadwork.models.backbone.load_backbone` reads what :meth:`Backbone.save` writes)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from roadwork.atomic import atomic_dir, atomic_write_json
from roadwork.models.bn_fold import FoldedCache
from roadwork.models.pooling import set_pooling
from roadwork.models.preprocess_config import PreprocessConfig, image_processor_for

FAMILIES = ("dinov2", "dinov2_with_registers", "dinov3", "timm")
# Written by Backbone.save for timm backbones; a folder holding it is loaded by load_backbone.
TIMM_CONFIG_FILE = "roadwork_backbone.json"
TIMM_WEIGHTS_FILE = "model.safetensors"
# Bumped whenever the definition of the feature vector changes, so cached features keyed by the fingerprint
# are never reused across definitions.
# v2: timm networks run with batch norm folded into the convolutions at inference (float32 rounding moves).
_FEATURE_DEFINITION = "roadwork-backbone-features/v2"
# Config keys that describe the environment, not the network, and must not move the fingerprint.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "_attn_implementation", "_attn_implementation_internal",
     "attn_implementation", "torch_dtype", "dtype", "architectures", "_commit_hash"}
)  # fmt: skip


class Backbone(torch.nn.Module):
    """A frozen feature extractor: ``[B, 3, H, W]`` normalised pixels -> ``[B, feature_dim]`` float32.

    Attributes:
        backbone_id: the id or folder it was loaded from (not part of the fingerprint).
        family: one of ``FAMILIES``.
        feature_dim: length of one feature vector (``2 * hidden_size`` for ViTs, 1280 for EfficientNet-Lite0).
        preprocess: the input definition used by :func:`roadwork.data.preprocess.to_tensor_batch`.
        model: the wrapped network (a ``transformers`` model or a ``timm`` model).

    The module stays in eval mode even when a parent calls ``.train()``: dropout off and batch-norm statistics
    fixed, which is what a frozen backbone means.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        backbone_id: str,
        family: str,
        feature_dim: int,
        preprocess: PreprocessConfig,
        num_register_tokens: int = 0,
        arch_config: dict[str, Any],
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
        self.model = model
        self.backbone_id = backbone_id
        self.family = family
        self.feature_dim = int(feature_dim)
        self.preprocess = preprocess
        self.num_register_tokens = int(num_register_tokens)
        self._arch_config = arch_config
        self.model.requires_grad_(False)
        self.eval()
        self._folded = FoldedCache()

    def train(self, mode: bool = True) -> Backbone:
        """Keep the frozen network in eval mode whatever ``mode`` a parent module asks for."""
        super().train(False)
        return self

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Features of a batch.

        Args:
            pixel_values: ``[B, 3, H, W]`` float tensor, normalised as ``self.preprocess`` says. ViTs accept
                any
                H, W of at least one patch (position embeddings are interpolated); the reference size is
                ``preprocess.image_size``.

        Returns:
            ``[B, feature_dim]`` float32. For ViTs ``concat(last_hidden_state[:, 0],
            last_hidden_state[:, 1 + num_register_tokens:].mean(1))``; for timm models the pooled features.
        """
        if not isinstance(pixel_values, Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape [B, 3, H, W], got {tuple(pixel_values.shape)}.")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"pixel_values must be a float tensor (normalised pixels), got {pixel_values.dtype}; "
                "build it with roadwork.data.preprocess.to_tensor_batch."
            )
        param = next(self.model.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        if self.family == "timm":
            return self._timm_network()(pixel_values.contiguous(memory_format=torch.channels_last)).float()
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        cls_token = hidden[:, 0]
        patch_mean = hidden[:, 1 + self.num_register_tokens :].mean(dim=1)
        return torch.cat([cls_token, patch_mean], dim=-1).float()

    def reconfigured(self, *, input_size: int | None, pooling: str) -> Backbone:
        """A copy of this backbone that feeds ``input_size`` px and (timm) pools by ``pooling``.

        ``input_size`` S resizes the image straight to S x S (``resize_mode="squash"``, what a
        ``ViTImageProcessor`` does): the whole of a square validator image, where the backbones' own
        preprocessing crops its border away; None keeps the backbone's own. ``pooling`` is one of
        :data:`roadwork.models.pooling.POOLINGS`; only timm backbones take another than ``avg``. Both are part
        of the fingerprint and of what :meth:`save` writes.
        """
        if self.family != "timm" and pooling != "avg":
            raise ValueError(
                f"pooling {pooling!r} applies to timm backbones; {self.backbone_id!r} is {self.family}."
            )
        preprocess = self.preprocess
        if input_size is not None:
            preprocess = PreprocessConfig(
                input_size, input_size, preprocess.mean, preprocess.std, preprocess.interpolation, "squash"
            )
        model, arch_config = self.model, self._arch_config
        if self.family == "timm":
            # the default pooling leaves the architecture (and so the fingerprint) as loaded
            arch_config = {k: v for k, v in self._arch_config.items() if k != "global_pool"}
            if pooling != "avg":
                arch_config["global_pool"] = pooling
            model = set_pooling(copy.deepcopy(self.model), pooling)
        return Backbone(
            model=model,
            backbone_id=self.backbone_id,
            family=self.family,
            feature_dim=self.feature_dim,
            preprocess=preprocess,
            num_register_tokens=self.num_register_tokens,
            arch_config=arch_config,
        )

    def _timm_network(self) -> torch.nn.Module:
        """The network a timm forward runs: under ``torch.inference_mode`` its batch-norm-folded copy.

        Inference mode is where features are computed (:mod:`roadwork.models.inference`); training and
        gradient checks see the saved, exported network itself.
        """
        if not torch.is_inference_mode_enabled():
            return self.model
        param = next(self.model.parameters())
        probe = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        probe = probe.to(device=param.device, dtype=param.dtype).contiguous(memory_format=torch.channels_last)
        return self._folded.get(self.model, probe)

    def _config_for_hash(self) -> dict[str, Any]:
        return {
            "feature_definition": _FEATURE_DEFINITION,
            "family": self.family,
            "feature_dim": self.feature_dim,
            "num_register_tokens": self.num_register_tokens,
            "preprocess": self.preprocess.to_dict(),
            "architecture": {k: v for k, v in self._arch_config.items() if k not in _VOLATILE_CONFIG_KEYS},
        }

    def fingerprint(self) -> str:
        """Hex sha256 over the feature definition, preprocessing, architecture config and every tensor.

        Tensors are hashed in sorted name order with their dtype and shape, so the value is deterministic and
        changes when any single weight or buffer changes. The load path (``backbone_id``) and library versions
        are left out: the same weights loaded from a hub id or from a saved folder give the same fingerprint.
        Runs over all weights each call (about a second per 100M float32 parameters).
        """
        h = hashlib.sha256()
        h.update(json.dumps(self._config_for_hash(), sort_keys=True, default=str).encode())
        state = self.model.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            h.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            # view as bytes: numpy has no bfloat16
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def save(self, directory: Path) -> None:
        """Write weights (safetensors) and configs so that ``load_backbone(str(directory))`` rebuilds it.

        Hugging Face ViTs are written with ``save_pretrained`` plus a ``preprocessor_config.json``
        (``BitImageProcessor`` for ``resize_mode="shortest_edge"``, ``DINOv3ViTImageProcessor`` for
        ``"square"``); timm models as ``model.safetensors`` plus ``roadwork_backbone.json``. The folder is
        written beside ``directory`` and then takes its place whole (:func:`roadwork.atomic.atomic_dir`):
        a folder already there is replaced, files from an earlier save included.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"save: {directory} exists and is not a directory.")
        with atomic_dir(directory) as tmp:
            if self.family == "timm":
                state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
                save_file(state, str(tmp / TIMM_WEIGHTS_FILE))
                meta = {
                    "family": "timm",
                    "architecture": self._arch_config,
                    "preprocess": self.preprocess.to_dict(),
                }
                atomic_write_json(tmp / TIMM_CONFIG_FILE, meta)
            else:
                self.model.save_pretrained(str(tmp), safe_serialization=True)
                image_processor_for(self.preprocess).save_pretrained(str(tmp))
