"""ONNX export: backbone + linear head + folded policy as one graph.

The graph takes ``pixel_values`` ``[B, 3, S, S]`` float32 (dynamic batch ``B``; ``S`` is the backbone's
``preprocess.image_size``), normalised as :func:`roadwork.data.preprocess.to_tensor_batch` makes them, and
returns ``probability`` ``[B]`` (the folded p(roadwork) = ``softmax(logits)[:, 1]`` =
``sigmoid((z - z*) / s)``; ``> 0.5`` exactly when the policy decides roadwork, up to the float edge described
in :mod:`roadwork.deploy.fold`) and ``logits`` ``[B, 2]`` (the folded classifier's logits). Preprocessing is
not in the graph; the model's ``metadata_props`` record it (``roadwork.preprocess``) with the labels and the
policy.

Exporter choice (torch 2.14, onnx 1.23, onnxscript 0.7): the default ``torch.export``-based ("dynamo")
exporter only emits opset >= 18 and its down-conversion to 17 fails on ``ReduceMean`` (axes input ->
attribute), leaving opset 18. So opset <= 17 uses the TorchScript exporter (``dynamo=False``, deprecated
since torch 2.9 but exact and fast) and opset >= 18 the dynamo exporter, unless ``dynamo`` says otherwise;
the written opset is checked either way. The TorchScript exporter writes a single protobuf, limited to 2 GB
(DINOv2 up to ViT-L fits).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from roadwork.atomic import atomic_write
from roadwork.deploy.fold import folded_classifier
from roadwork.models.backbone import Backbone
from roadwork.models.head import ID2LABEL, HeadModel
from roadwork.policy.policy import Policy

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "export_onnx", "onnx_outputs", "onnx_probabilities"]

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("probability", "logits")


class FoldedClassifier(nn.Module):
    """``pixel_values [B, 3, S, S] -> (probability [B], logits [B, 2])``: backbone, folded classifier."""

    def __init__(self, backbone: Backbone, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)
        self.eval()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(self.backbone(pixel_values))
        return torch.softmax(logits, dim=-1)[:, 1], logits


def _cpu_float32(backbone: Backbone) -> Backbone:
    tensors = list(backbone.parameters()) + list(backbone.buffers())
    if all(
        t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors
    ):
        return backbone
    return copy.deepcopy(backbone).to("cpu", torch.float32)


def export_onnx(
    backbone: Backbone,
    head: HeadModel,
    policy: Policy,
    path: str | Path,
    *,
    opset: int = 17,
    dynamo: bool | None = None,
) -> Path:
    """Export backbone + head + folded policy to one ONNX file.

    Args:
        backbone: the frozen backbone the head was trained on (a CPU float32 copy is exported if it lives
            elsewhere). Any family, DINOv3 included.
        head: a single-view linear head (see :func:`roadwork.deploy.fold.folded_classifier`).
        policy: the fitted policy (finite ``decision_margin``).
        path: the ``.onnx`` file to write (parent folders are created; an existing file is replaced).
        opset: ONNX opset of the default domain (>= 14).
        dynamo: ``True`` for the ``torch.export``-based exporter, ``False`` for the TorchScript one; ``None``
            picks TorchScript for ``opset <= 17`` and dynamo otherwise (see the module docstring).

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: MLP or multi-view head, infinite decision margin, head/backbone feature sizes that
            differ, a bad ``opset``.
        RuntimeError: the exporter wrote a different opset than asked (dynamo with ``opset < 18``).
    """
    import onnx

    weight, bias = _exportable_classifier(backbone, head, policy, opset)
    use_dynamo = opset >= 18 if dynamo is None else bool(dynamo)
    module = FoldedClassifier(_cpu_float32(backbone), weight.float(), bias.float())
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="roadwork-onnx-") as scratch:
        # the dynamo exporter writes the weights to a second file beside the graph (<name>.data); loaded
        # here and written whole below, so only the one checked file lands at ``path``
        exported = Path(scratch) / "model.onnx"
        _run_exporter(module, backbone.preprocess.image_size, exported, opset, use_dynamo)
        model = onnx.load(str(exported))
    written = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise RuntimeError(
            f"{path}: the {'dynamo' if use_dynamo else 'TorchScript'} exporter wrote opset {written}, not "
            f"{opset}; use opset >= 18 with dynamo=True or opset <= 17 with dynamo=False."
        )
    _add_metadata(model, backbone, policy)
    onnx.checker.check_model(model)
    return atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))


def _exportable_classifier(
    backbone: Backbone, head: HeadModel, policy: Policy, opset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded classifier (weight, bias) of ``head`` and ``policy``, once the arguments are known to
    export."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14, got {opset!r}.")
    weight, bias = folded_classifier(head, policy)
    if head.feature_dim != backbone.feature_dim:
        raise ValueError(
            f"the head takes {head.feature_dim}-d features but the backbone gives {backbone.feature_dim}-d; "
            "export the head with the backbone it was trained on."
        )
    return weight, bias


def _run_exporter(module: nn.Module, side: int, path: Path, opset: int, use_dynamo: bool) -> None:
    """Write ``module`` to the scratch file ``path`` with the dynamo or the TorchScript exporter, batch
    dimension dynamic."""
    # batch 2: torch.export specialises a dimension whose example size is 0 or 1
    example = torch.zeros(2, 3, side, side, dtype=torch.float32)
    common = {"input_names": [INPUT_NAME], "output_names": list(OUTPUT_NAMES), "opset_version": opset}
    with warnings.catch_warnings():
        # the TorchScript exporter warns about its deprecation and about shape checks it records as
        # constants (the channel count, the fixed input size): both expected here
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        with torch.no_grad():
            if use_dynamo:
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=True,
                    dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                    verbose=False,
                    **common,
                )
            else:
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    dynamo=False,
                    dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                    **common,
                )


def _add_metadata(model: Any, backbone: Backbone, policy: Policy) -> None:
    """Record labels, preprocessing, backbone and policy in the graph's ``metadata_props``."""
    metadata = {
        "roadwork.id2label": json.dumps({str(k): v for k, v in ID2LABEL.items()}),
        "roadwork.preprocess": json.dumps(backbone.preprocess.to_dict()),
        "roadwork.backbone_id": backbone.backbone_id,
        "roadwork.family": backbone.family,
        "roadwork.policy": json.dumps(
            {k: v for k, v in asdict(policy).items() if k != "conformal"}, default=str, allow_nan=True
        ),
        "roadwork.outputs": "probability = softmax(logits)[:, 1] = sigmoid((z - z*) / s), > 0.5: roadwork",
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def onnx_outputs(path: str | Path, pixel_values: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Run an exported graph with onnxruntime (CPU): ``{"probability": [B], "logits": [B, 2]}`` float32."""
    import onnxruntime as ort

    x = pixel_values.detach().cpu().numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
    x = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    if x.ndim != 4 or list(x.shape[1:]) != list(shape[1:]):
        raise ValueError(
            f"pixel_values must have shape [B, {', '.join(map(str, shape[1:]))}], got {x.shape}."
        )
    outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    return dict(zip(OUTPUT_NAMES, outputs, strict=True))


def onnx_probabilities(path: str | Path, pixel_values: torch.Tensor | np.ndarray) -> np.ndarray:
    """The folded p(roadwork) ``[B]`` (float32) of an exported graph, via onnxruntime."""
    return onnx_outputs(path, pixel_values)["probability"]
