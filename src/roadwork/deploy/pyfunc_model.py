"""The MLflow pyfunc model, logged as code (models-from-code): nothing is pickled.

Input: a DataFrame with a column ``image`` holding each image's encoded bytes, base64 text (JSON over HTTP)
or raw bytes (parquet, or a caller in the same process). The served model reads no files: a ``path`` column
is refused with HTTP 400 (``roadwork predict`` reads local paths and sends their bytes). Output: one row
per input with ``probability``, ``calibrated_probability``, ``decision``, ``abstain`` and ``error`` (see
:mod:`roadwork.deploy.predictor`); a row without a prediction carries None probabilities, which the scoring
server writes as JSON ``null``.

Requests the server answers with HTTP 400 (an :class:`MlflowException` with ``BAD_REQUEST``, which MLflow's
scoring server maps to 400): a ``path`` column, no ``image`` column, images over the request budgets
(:class:`~roadwork.deploy.predictor.RequestTooLarge`) and JSON nested too deeply to parse
(:func:`answer_deep_json_with_400`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PythonModel

MODEL_ARTIFACT = "model"
PATH_REFUSED = (
    "column 'path' is refused: the served model reads no files on the server. Send each image's bytes, "
    "base64-encoded, in column 'image' (roadwork predict reads local paths)"
)
NO_IMAGE_COLUMN = (
    "input needs a column 'image' holding each image's bytes, base64-encoded; the request has none "
    "(MLflow drops columns the model's signature does not declare, so a misspelt column arrives as none)"
)


def _images(frame: Any) -> tuple[list[bytes], list[str]]:
    """Encoded bytes per row, and a per-row error for a cell that holds no image bytes."""
    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if "path" in frame.columns:
        raise MlflowException(PATH_REFUSED, error_code=BAD_REQUEST)
    if "image" not in frame.columns:
        raise MlflowException(NO_IMAGE_COLUMN, error_code=BAD_REQUEST)
    images: list[bytes] = []
    errors: list[str] = []
    for value in frame["image"]:
        error = ""
        if isinstance(value, (bytes, bytearray)):
            images.append(bytes(value))
        elif isinstance(value, str):
            try:
                images.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                images.append(b"")
                error = "ValueError: column 'image' must hold base64-encoded image bytes"
        else:
            images.append(b"")
            error = f"ValueError: column 'image' must hold base64 text or bytes, got {type(value).__name__}"
        errors.append(error)
    return images, errors


def answer_deep_json_with_400() -> None:
    """Make MLflow's scoring server answer a body nested too deeply for Python's JSON parser with HTTP 400.

    The server parses the body (``json.loads`` in ``scoring_server._decode_json_input``) before the model
    runs and turns only ``JSONDecodeError`` / ``UnicodeDecodeError`` into its 400 (``MlflowInvalidInput
    Exception``); the ``RecursionError`` of arrays nested ~1000 deep escapes as a 500. MLflow has no hook
    before that parse, so the model wraps that one function when it is loaded (the server loads the model
    before it serves): the RecursionError becomes the same 400 exception, nothing else changes. Idempotent;
    a no-op if MLflow renames the function (tests/test_serve_load.py would then see the 500 again).
    """
    from mlflow.pyfunc import scoring_server
    from mlflow.utils.proto_json_utils import MlflowInvalidInputException

    decode = getattr(scoring_server, "_decode_json_input", None)
    if decode is None or getattr(decode, "roadwork_guard", False):
        return

    @functools.wraps(decode)
    def guarded(json_input: Any) -> Any:
        try:
            return decode(json_input)
        except RecursionError:
            raise MlflowInvalidInputException(
                "the JSON body is nested too deeply to parse; send "
                '{"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}}'
            ) from None

    guarded.roadwork_guard = True  # type: ignore[attr-defined]
    scoring_server._decode_json_input = guarded


IMAGE_BLOCK_BYTES = 64 << 20


def give_image_memory_back() -> None:
    """Make Pillow allocate images in 64 MiB blocks (its ``PILLOW_BLOCK_SIZE``; a value the user set wins).

    Pillow's default 16 MiB blocks are below glibc's cap on its mmap threshold (32 MiB), so once one is
    freed they come from per-thread malloc arenas, which keep the freed memory resident: a server decoding
    large images on many threads grew by 2 GB for good in tests/test_serve_load.py. Blocks above the cap are
    always mapped for themselves and unmapped when the image is freed.
    """
    from PIL import Image

    if "PILLOW_BLOCK_SIZE" not in os.environ:
        Image.core.set_block_size(IMAGE_BLOCK_BYTES)


class RoadworkClassifier(PythonModel):
    def load_context(self, context: Any) -> None:
        from roadwork.deploy.predictor import Predictor

        answer_deep_json_with_400()
        give_image_memory_back()
        self.predictor = Predictor.from_dir(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from roadwork.deploy.predictor import (
            OUTPUT_COLUMNS,
            PROBABILITY_COLUMNS,
            RequestTooLarge,
            unscored_rows,
        )

        images, errors = _images(model_input)
        good = [i for i, e in enumerate(errors) if not e]
        try:
            scored = self.predictor.predict([images[i] for i in good])
        except RequestTooLarge as exc:
            raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
        result = unscored_rows(errors)
        for column in OUTPUT_COLUMNS:
            result.loc[good, column] = scored[column].to_numpy()
        for column in PROBABILITY_COLUMNS:  # None, not NaN: the server's JSON then says null
            result[column] = result[column].astype(object).where(result[column].notna(), None)
        return result


mlflow.models.set_model(RoadworkClassifier())
