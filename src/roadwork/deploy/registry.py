"""The MLflow model registry: log the pyfunc as code, register versions, and the promotion rule.

Aliases: ``challenger`` points at the newest bundle; ``champion`` at the model in production. Promotion
compares both on the *current* hold-out (the split may have changed since either was registered) and moves
``champion`` only when the challenger is better by more than ``min_delta`` on the chosen metric; the first
model becomes champion without a comparison. Every decision is recorded as tags on the challenger version.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MODEL_NAME = "roadwork-classifier"
CHALLENGER, CHAMPION = "challenger", "champion"

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_NAME",
    "PromotionDecision",
    "decide_promotion",
    "log_pyfunc",
]


def _example_jpeg() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (224, 224), (128, 128, 128)).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


REGISTRATION_TAG = "roadwork.registration"
"""A bundle version's state: ``pending`` from its creation, ``complete`` once its alias is set, or
``abandoned`` (a killed registration another holds the outputs of)."""
PENDING, COMPLETE, ABANDONED = "pending", "complete", "abandoned"
OUTPUTS_HASH_TAG = "roadwork.outputs_hash"


def _quiet_signature(example: Any, output: Any) -> Any:
    """``infer_signature`` without its hint about integer columns: the ``decision`` column is an integer by
    design and never missing, which is what the hint warns about."""
    import warnings

    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Hint: Inferred schema contains integer column", category=UserWarning
        )
        return infer_signature(example, output)


def log_pyfunc(
    model_dir: Path,
    *,
    registered_model_name: str | None,
    tags: Mapping[str, str] = (),
    description: str | None = None,
) -> Any:
    """Log ``model_dir`` (a :class:`~roadwork.deploy.predictor.Predictor` folder) as a pyfunc in the active
    run, from code (``pyfunc_model.py``) with the ``roadwork`` package as code path; register it as a new
    version of ``registered_model_name`` when given, tagged with ``tags`` and described by ``description``
    (the text the registry's version page shows). Returns MLflow's ``ModelInfo``."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import roadwork
    from roadwork.deploy import pyfunc_model

    example = pd.DataFrame({"image": [_example_jpeg()]})
    output = pd.DataFrame(
        {
            "probability": [0.5],
            "calibrated_probability": [0.5],
            "decision": [0],
            "abstain": [False],
            "error": [""],
        }
    )
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=pyfunc_model.__file__,
        artifacts={pyfunc_model.MODEL_ARTIFACT: str(model_dir)},
        code_paths=[str(Path(roadwork.__file__).parent)],
        # 'path' is declared only so that the server can refuse it by name: MLflow drops undeclared
        # columns before the model sees them
        signature=ModelSignature(
            inputs=Schema(
                [ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)]
            ),
            outputs=_quiet_signature(example, output).outputs,
        ),
        input_example=example,
    )
    if not registered_model_name:
        return info
    # one call creates the version with every tag, the pending mark included: a kill can leave a version
    # without its alias, never one without tags (see repair_registrations)
    created = mlflow.register_model(
        info.model_uri,
        registered_model_name,
        tags={**{k: str(v) for k, v in dict(tags).items()}, REGISTRATION_TAG: PENDING},
    )
    if description:
        mlflow.MlflowClient().update_model_version(
            registered_model_name, created.version, description=description
        )
    info.registered_model_version = created.version  # what log_model's own registration would have set
    return info


def outputs_hash(directory: Path) -> str:
    """sha256 over the relative paths and bytes of every file under ``directory`` (sorted): which bundle
    outputs a registered version holds."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def finish_registration(client: Any, name: str, version: str, alias: str) -> None:
    """Point ``alias`` at ``version``, then mark the version complete (the last step of a registration)."""
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, REGISTRATION_TAG, COMPLETE)


def repair_registrations(client: Any, name: str, held_outputs: str, alias: str) -> str | None:
    """Settle the versions of ``name`` a killed bundle left pending: the one holding ``held_outputs`` (the
    current bundle outputs' :func:`outputs_hash`) is completed (``alias`` moves to it) and returned; every
    other pending version is marked abandoned, so that promote never takes it. None when none holds them."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:  # no such model yet
        return None
    completed = None
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if version.tags.get(REGISTRATION_TAG) != PENDING:
            continue
        if completed is None and version.tags.get(OUTPUTS_HASH_TAG) == held_outputs:
            finish_registration(client, name, str(version.version), alias)
            completed = str(version.version)
        else:
            client.set_model_version_tag(name, str(version.version), REGISTRATION_TAG, ABANDONED)
    return completed


def usable(version: Any) -> bool:
    """Whether ``version`` finished registering: not pending or abandoned (a version registered before the
    mark existed counts as finished when bundle tagged it with its variant)."""
    state = version.tags.get(REGISTRATION_TAG)
    return state == COMPLETE or (state is None and "roadwork.variant" in version.tags)


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    challenger: float,
    champion: float | None,
    min_delta: float,
    difference_low: float | None = None,
    difference_high: float | None = None,
) -> PromotionDecision:
    """The rule: no champion -> promote; else promote iff ``challenger > champion + min_delta`` **and** the
    lower bound ``difference_low`` of the paired interval of ``challenger - champion`` is above zero.

    ``difference_low`` None skips the second test (a caller without an interval). Ties keep the champion.
    A kept champion's reason starts "no significant difference" unless the interval lies wholly below zero
    (``difference_high < 0``: the champion is better).
    """
    if min_delta < 0 or not np.isfinite(min_delta):
        raise ValueError(f"min_delta must be finite and >= 0, got {min_delta!r}.")
    if champion is None:
        return PromotionDecision(True, "no champion yet: the first model becomes champion")
    if not np.isfinite(challenger):
        return PromotionDecision(False, f"challenger score is {challenger}; nothing to compare")
    interval = ""
    if difference_low is not None:
        high = float("nan") if difference_high is None else difference_high
        interval = f"; difference interval [{difference_low:+.4f}, {high:+.4f}]"
    if difference_high is not None and difference_high < 0:
        return PromotionDecision(
            False, f"the champion is better: {challenger:.4f} vs {champion:.4f}{interval}"
        )
    if challenger <= champion + min_delta or (difference_low is not None and not difference_low > 0):
        return PromotionDecision(
            False,
            f"no significant difference: challenger {challenger:.4f}, champion {champion:.4f}, min_delta "
            f"{min_delta:g}{interval} (promotion needs challenger > champion + min_delta and the interval "
            "above 0)",
        )
    return PromotionDecision(
        True, f"challenger {challenger:.4f} > champion {champion:.4f} + min_delta {min_delta:g}{interval}"
    )


def alias_version(client: Any, name: str, alias: str) -> Any | None:
    """The model version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def predict_with(
    model: Any, sources: Iterable[bytes], progress: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """Predict encoded images ``sources`` with a loaded pyfunc, one call per request the model's
    :meth:`~roadwork.deploy.predictor.Predictor.requests` forms (``progress(n)`` after each), so no call
    goes over its batch size or request budgets; ``model`` may also be a model URI, loaded here.

    The bytes go in the ``image`` column, exactly as the served model receives them. ``sources`` is read as
    the calls go (a generator reading files keeps one request in memory). The probability columns come back
    as floats, NaN where the served JSON says null.
    """
    import mlflow

    from roadwork.deploy.predictor import OUTPUT_COLUMNS, PROBABILITY_COLUMNS

    if isinstance(model, str):
        model = mlflow.pyfunc.load_model(model)
    chunks = []
    for request in model.unwrap_python_model().predictor.requests(sources):
        chunks.append(model.predict(pd.DataFrame({"image": request})))
        if progress:
            progress(len(request))
    frame = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    return frame.astype({column: float for column in PROBABILITY_COLUMNS if column in frame})
