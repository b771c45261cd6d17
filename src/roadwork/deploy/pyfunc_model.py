"""The MLflow pyfunc model, logged as code (models-from-code): nothing is pickled.

Input: a DataFrame with a column ``image`` (base64 text or raw bytes of an encoded image) or ``path``
(image file paths). Output: one row per input with ``probability``, ``calibrated_probability``,
``decision``, ``abstain`` and ``error`` (see :mod:`roadwork.deploy.predictor`).
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"


def _sources(frame: pd.DataFrame) -> tuple[list[Any], list[str]]:
    """Encoded bytes or paths per row, and a per-row error for rows that cannot even be read as input."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    sources: list[Any] = []
    errors: list[str] = []
    if "image" in frame.columns:
        for value in frame["image"]:
            if isinstance(value, (bytes, bytearray)):
                sources.append(bytes(value))
                errors.append("")
                continue
            try:
                sources.append(base64.b64decode(str(value), validate=True))
                errors.append("")
            except (binascii.Error, ValueError):
                sources.append(b"")
                errors.append("ValueError: column 'image' must hold base64-encoded image bytes")
        return sources, errors
    if "path" in frame.columns:
        return [Path(str(p)) for p in frame["path"]], [""] * len(frame)
    # MlflowException with BAD_REQUEST: the scoring server answers 400 with this message, not a bare 500
    raise MlflowException(
        f"input needs a column 'image' (base64 image bytes) or 'path'; got columns {list(frame.columns)}",
        error_code=BAD_REQUEST,
    )


class RoadworkClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        from roadwork.deploy.predictor import Predictor

        self.predictor = Predictor.from_dir(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        sources, errors = _sources(model_input)
        good = [i for i, e in enumerate(errors) if not e]
        out = self.predictor.predict([sources[i] for i in good]).set_index(pd.Index(good))
        failed = pd.DataFrame(
            {
                "probability": float("nan"),
                "calibrated_probability": float("nan"),
                "decision": -1,
                "abstain": False,
                "error": [errors[i] for i in range(len(errors)) if errors[i]],
            },
            index=[i for i, e in enumerate(errors) if e],
        )
        frames = [f for f in (out, failed) if len(f)]
        result = pd.concat(frames).sort_index() if frames else out
        return result.reset_index(drop=True)


mlflow.models.set_model(RoadworkClassifier())
