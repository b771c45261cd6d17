"""The deployed model: backbone + head + policy + views, applied to encoded images.

The MLflow pyfunc (and so ``mlflow models serve``), ``roadwork predict`` and ``roadwork promote`` run it;
its margins come from :func:`roadwork.models.inference.infer_margins`, the one inference path that training,
evaluation and the exports use too. A model folder holds ``backbone/`` (:meth:`Backbone.save`),
``head.safetensors`` + ``head.json``, ``policy.json`` and ``predictor.json`` (views, test-time flip, input
limits). Images are
decoded by :func:`roadwork.data.images.decode_image` (limits on bytes and pixels checked before any pixel
is decoded), then the inference path applies the validator's level-0 geometry (the identity on the 224x224
JPEG the validator sends) and the backbone's own preprocessing.

Per image the output is ``probability`` (the policy folded in: > 0.5 exactly when the decision is
roadwork), ``calibrated_probability``, ``decision`` (0/1), ``abstain`` and ``error`` (empty, or why the
input could not be used: such rows carry NaN / -1 and never stop the others).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

__all__ = ["OUTPUT_COLUMNS", "Predictor", "PredictorSpec"]

OUTPUT_COLUMNS = ("probability", "calibrated_probability", "decision", "abstain", "error")
SPEC_FILE = "predictor.json"
POLICY_FILE = "policy.json"
BACKBONE_DIR = "backbone"


@dataclass(frozen=True)
class PredictorSpec:
    """How inputs become predictions.

    Attributes:
        views: ``global`` or ``global+tiles`` (with ``grid`` and ``overlap``), as the head was trained.
        tta_flip: average the logits of the image and its mirror image.
        max_bytes: largest accepted encoded input, in bytes.
        max_pixels: largest accepted declared width x height.
        batch_size: images per backbone forward pass.
    """

    views: str = "global"
    grid: int = 3
    overlap: float = 0.25
    tta_flip: bool = False
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PredictorSpec.{name} must be a positive int, got {value!r}.")


class Predictor:
    """Backbone, head, policy and spec; :meth:`predict` maps encoded images to the output columns."""

    def __init__(self, backbone: Any, head: Any, policy: Any, spec: PredictorSpec) -> None:
        from roadwork.models.inference import ViewSpec

        self.backbone, self.head, self.policy, self.spec = backbone, head, policy, spec
        self.view_spec = ViewSpec(spec.views, spec.grid, spec.overlap)
        if head.num_views != self.view_spec.num_views:
            raise ValueError(
                f"the head expects {head.num_views} views per image but the spec gives "
                f"{self.view_spec.num_views} ({spec.views})."
            )

    @classmethod
    def from_dir(cls, directory: Path | str) -> Predictor:
        from roadwork.models.backbone import load_backbone
        from roadwork.policy import Policy
        from roadwork.train.head import load_head

        directory = Path(directory)
        spec_path = directory / SPEC_FILE
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: missing; {directory} is not a roadwork model folder.")
        try:
            spec = PredictorSpec(**json.loads(spec_path.read_text()))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{spec_path}: invalid predictor spec ({exc}).") from None
        return cls(
            load_backbone(str(directory / BACKBONE_DIR)),
            load_head(directory),
            Policy.from_json(directory / POLICY_FILE),
            spec,
        )

    def save(self, directory: Path | str, *, head_dir: Path) -> None:
        """Write the model folder (``head_dir`` holds the trained ``head.safetensors`` / ``head.json``)."""
        import shutil

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save(directory / BACKBONE_DIR)
        for name in ("head.safetensors", "head.json"):
            shutil.copyfile(Path(head_dir) / name, directory / name)
        self.policy.to_json(directory / POLICY_FILE)
        (directory / SPEC_FILE).write_text(json.dumps(asdict(self.spec), indent=2, sort_keys=True) + "\n")

    def decode(self, source: bytes | Path) -> Image.Image:
        """One input as an RGB image, or ImageRejected / ValueError / OSError saying why not."""
        from roadwork.data.images import decode_image

        size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
        if size > self.spec.max_bytes:
            raise ValueError(f"input is {size} bytes; the limit is max_bytes={self.spec.max_bytes}")
        return decode_image(source, max_pixels=self.spec.max_pixels, min_side=1).image

    def margins(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Margins ``z1 - z0`` of decoded images through :func:`roadwork.models.inference.infer_margins`."""
        from roadwork.models.inference import infer_margins

        return infer_margins(
            self.backbone,
            self.head,
            list(images),
            spec=self.view_spec,
            tta_flip=self.spec.tta_flip,
            batch_size=self.spec.batch_size,
        )

    def predict(self, sources: Sequence[bytes | Path]) -> pd.DataFrame:
        """One row per source, in order, with :data:`OUTPUT_COLUMNS`; bad inputs get an ``error``."""
        from roadwork.data.images import ImageRejected

        images, ok, errors = [], [], [""] * len(sources)
        for i, source in enumerate(sources):
            try:
                images.append(self.decode(source))
                ok.append(i)
            except (ImageRejected, OSError, ValueError) as exc:
                errors[i] = f"{type(exc).__name__}: {exc}"
        frame = pd.DataFrame(
            {
                "probability": np.full(len(sources), np.nan),
                "calibrated_probability": np.full(len(sources), np.nan),
                "decision": np.full(len(sources), -1, dtype=np.int64),
                "abstain": np.zeros(len(sources), dtype=bool),
                "error": errors,
            }
        )
        if ok:
            applied = self.policy.apply(self.margins(images).astype(np.float64))
            frame.loc[ok, "probability"] = applied["probability"]
            frame.loc[ok, "calibrated_probability"] = applied["calibrated_probability"]
            frame.loc[ok, "decision"] = applied["decision"].astype(np.int64)
            frame.loc[ok, "abstain"] = applied["abstain"]
        return frame


ONNX_TOLERANCE = 1e-4


def export_onnx_from_dir(model_dir: Path | str, path: Path | str, *, opset: int = 17) -> float:
    """Export a model folder to ONNX and check onnxruntime against torch on a fixed batch.

    Returns the max abs difference of the probability; raises RuntimeError above :data:`ONNX_TOLERANCE`
    (the file is then removed). Multi-view and flip-averaged models are refused (the graph is single-view).
    """
    import torch

    from roadwork.deploy.onnx_export import export_onnx, onnx_probabilities

    predictor = Predictor.from_dir(model_dir)
    if predictor.spec.views != "global" or predictor.spec.tta_flip:
        raise ValueError(
            f"{model_dir}: views={predictor.spec.views!r}, tta_flip={predictor.spec.tta_flip}; the ONNX "
            "graph is single-view without flip averaging (train with embed.views=global, "
            "embed.tta_flip=false)."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(predictor.backbone, predictor.head, predictor.policy, path, opset=opset)
    size = predictor.backbone.preprocess.image_size
    pixels = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features = predictor.backbone(pixels).numpy()
    from roadwork.train.head import predict_logits

    logits = predict_logits(predictor.head, features[:, None, :])
    expected = predictor.policy.apply((logits[:, 1] - logits[:, 0]).astype(np.float64))["probability"]
    diff = float(np.abs(onnx_probabilities(path, pixels.numpy()) - expected).max())
    if diff > ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with torch: max |dp| {diff:.2e} > {ONNX_TOLERANCE}.")
    return diff
