"""The deployed model: backbone + head + policy + views, applied to encoded images.

The MLflow pyfunc (and so ``mlflow models serve``), ``roadwork predict``, ``roadwork promote`` and
``roadwork export-submission`` run it; its margins come from :func:`roadwork.models.inference.infer_margins`,
the one inference path that train's logits and evaluate use too. The exports are separate graphs checked
against it: the Hugging Face one on validation renders (:mod:`roadwork.stages.agreement`, in bundle and
export-submission), the ONNX one on a fixed batch (:func:`export_onnx_from_dir`). A model folder holds
``backbone/`` (:meth:`Backbone.save`), ``head.safetensors`` + ``head.json``, ``policy.json`` and
``predictor.json`` (:class:`PredictorSpec`: views, test-time flip, input limits, request budgets, batch
size). :meth:`Predictor.predict` takes encoded image bytes only and opens no file (``roadwork predict``
reads the paths).

Limits, all checked before a pixel is decoded: per image ``max_bytes`` and ``max_pixels`` (its declared
width x height; :func:`roadwork.data.images.decode_image`); per call (a served request) the images to
decode may total at most ``request_max_bytes`` encoded bytes and ``request_max_pixels`` declared pixels,
or the call is refused whole (:class:`RequestTooLarge`). A call is decoded and predicted ``batch_size``
images at a time, each batch dropped before the next is decoded, so memory follows the batch, not the
call. The inference path then applies the validator's level-0 geometry (the identity on the 224x224 JPEG
the validator sends) and the backbone's own preprocessing.

Per image the output is ``probability`` (the policy folded in: > 0.5 exactly when the decision is
roadwork), ``calibrated_probability``, ``decision`` (0/1), ``abstain`` and ``error`` (empty, or why the
input could not be used: such rows carry NaN / -1 and never stop the others).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from roadwork.atomic import atomic_write, atomic_write_json

__all__ = [
    "OUTPUT_COLUMNS",
    "PROBABILITY_COLUMNS",
    "Predictor",
    "PredictorSpec",
    "RequestTooLarge",
    "unscored_rows",
]

OUTPUT_COLUMNS = ("probability", "calibrated_probability", "decision", "abstain", "error")
PROBABILITY_COLUMNS = ("probability", "calibrated_probability")  # NaN where a row has no prediction
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
        request_max_bytes: most encoded bytes the images of one call (a served request) may total.
        request_max_pixels: most declared pixels the images of one call may total.
        batch_size: images decoded, then run through the backbone, at a time.
    """

    views: str = "global"
    grid: int = 3
    overlap: float = 0.25
    tta_flip: bool = False
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    request_max_bytes: int = 40_000_000
    request_max_pixels: int = 50_000_000
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "request_max_bytes", "request_max_pixels", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PredictorSpec.{name} must be a positive int, got {value!r}.")
        for one, total in (("max_bytes", "request_max_bytes"), ("max_pixels", "request_max_pixels")):
            if getattr(self, total) < getattr(self, one):
                raise ValueError(
                    f"PredictorSpec.{total}={getattr(self, total)} is below {one}={getattr(self, one)}: a "
                    "request could not carry one image of the largest accepted size."
                )


class RequestTooLarge(ValueError):
    """A call whose images exceed ``request_max_bytes`` or ``request_max_pixels``; nothing was decoded."""


def unscored_rows(errors: Sequence[str]) -> pd.DataFrame:
    """:data:`OUTPUT_COLUMNS` rows without a prediction: NaN probabilities, decision -1, and ``errors``."""
    n = len(errors)
    return pd.DataFrame(
        {
            "probability": np.full(n, np.nan),
            "calibrated_probability": np.full(n, np.nan),
            "decision": np.full(n, -1, dtype=np.int64),
            "abstain": np.zeros(n, dtype=bool),
            "error": list(errors),
        }
    )


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
        from roadwork.models.head import load_head
        from roadwork.policy import Policy

        directory = Path(directory)
        spec_path = directory / SPEC_FILE
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: missing; {directory} is not a roadwork model folder.")
        try:
            values = json.loads(spec_path.read_text())
            # a folder bundled before the request budgets existed: they default to at least its own limits
            for one, total in (("max_bytes", "request_max_bytes"), ("max_pixels", "request_max_pixels")):
                default = next(f.default for f in fields(PredictorSpec) if f.name == total)
                values.setdefault(total, max(default, values.get(one, 0)))
            spec = PredictorSpec(**values)
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
            atomic_write(directory / name, partial(shutil.copyfile, Path(head_dir) / name))
        self.policy.to_json(directory / POLICY_FILE)
        atomic_write_json(directory / SPEC_FILE, asdict(self.spec))

    def check_size(self, size: int) -> None:
        """ValueError when an input of ``size`` bytes is over ``max_bytes``."""
        if size > self.spec.max_bytes:
            raise ValueError(f"input is {size} bytes; the limit is max_bytes={self.spec.max_bytes}")

    def decode(self, data: bytes) -> Image.Image:
        """One input as an RGB image, or ImageRejected / ValueError saying why not."""
        from roadwork.data.images import decode_image

        self.check_size(len(data))
        return decode_image(data, max_pixels=self.spec.max_pixels, min_side=1).image

    def cost(self, data: bytes) -> tuple[int, int]:
        """The encoded bytes and declared pixels decoding ``data`` takes from a call's budgets, read from
        its header: (0, 0) for an input refused undecoded (over ``max_bytes``, a header that is not an
        image, more than ``max_pixels``)."""
        from roadwork.data.images import declared_size

        if len(data) > self.spec.max_bytes:
            return 0, 0
        size = declared_size(data)
        if size is None or size[0] * size[1] > self.spec.max_pixels:
            return 0, 0
        return len(data), size[0] * size[1]

    def requests(self, sources: Iterable[bytes]) -> Iterator[list[bytes]]:
        """``sources``, in order, as calls :meth:`predict` accepts: at most ``batch_size`` inputs each and
        within the request budgets (an input costs at most one image's limits, so every input fits one)."""
        spec = self.spec
        request: list[bytes] = []
        used_bytes = used_pixels = 0
        for data in sources:
            nbytes, pixels = self.cost(data)
            full = len(request) == spec.batch_size
            over = (
                used_bytes + nbytes > spec.request_max_bytes or used_pixels + pixels > spec.request_max_pixels
            )
            if request and (full or over):
                yield request
                request, used_bytes, used_pixels = [], 0, 0
            request.append(data)
            used_bytes, used_pixels = used_bytes + nbytes, used_pixels + pixels
        if request:
            yield request

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

    def predict(self, sources: Sequence[bytes]) -> pd.DataFrame:
        """One row per encoded image, in order, with :data:`OUTPUT_COLUMNS`; bad inputs get an ``error``.

        Raises:
            TypeError: an input is not bytes (the predictor reads no files).
            RequestTooLarge: the images exceed the request budgets (checked on their headers).
        """
        for k, source in enumerate(sources):
            if not isinstance(source, (bytes, bytearray)):
                raise TypeError(
                    f"inputs[{k}] is a {type(source).__name__}; the predictor takes encoded image bytes "
                    "and opens no file (roadwork predict reads paths)"
                )
        costs = np.array([self.cost(s) for s in sources], dtype=np.int64).reshape(-1, 2).sum(axis=0)
        for total, name in zip(costs.tolist(), ("request_max_bytes", "request_max_pixels"), strict=True):
            if total > getattr(self.spec, name):
                unit = name.rsplit("_", 1)[1]
                raise RequestTooLarge(
                    f"the request's {len(sources)} images total {total} {unit} to decode; the limit is "
                    f"{name}={getattr(self.spec, name)}: send fewer or smaller images per request"
                )
        frame = unscored_rows([""] * len(sources))
        for begin in range(0, len(sources), self.spec.batch_size):
            self._predict_batch(sources, range(begin, min(begin + self.spec.batch_size, len(sources))), frame)
        return frame

    def _predict_batch(self, sources: Sequence[bytes], batch: range, frame: pd.DataFrame) -> None:
        """Decode, predict and fill ``frame``'s rows ``batch``; the decoded images die with this call."""
        from roadwork.data.images import ImageRejected

        images, ok = [], []
        for i in batch:
            try:
                images.append(self.decode(sources[i]))
                ok.append(i)
            except (ImageRejected, ValueError) as exc:
                frame.loc[i, "error"] = f"{type(exc).__name__}: {exc}"
        if not ok:
            return
        applied = self.policy.apply(self.margins(images).astype(np.float64))
        frame.loc[ok, "probability"] = applied["probability"]
        frame.loc[ok, "calibrated_probability"] = applied["calibrated_probability"]
        frame.loc[ok, "decision"] = applied["decision"].astype(np.int64)
        frame.loc[ok, "abstain"] = applied["abstain"]


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
    from roadwork.models.head import predict_logits

    logits = predict_logits(predictor.head, features[:, None, :])
    expected = predictor.policy.apply((logits[:, 1] - logits[:, 0]).astype(np.float64))["probability"]
    diff = float(np.abs(onnx_probabilities(path, pixels.numpy()) - expected).max())
    if diff > ONNX_TOLERANCE:
        path.unlink(missing_ok=True)
        raise RuntimeError(f"ONNX export disagrees with torch: max |dp| {diff:.2e} > {ONNX_TOLERANCE}.")
    return diff
