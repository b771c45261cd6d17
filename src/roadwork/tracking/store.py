"""The tracking store: where it is, whether it answers, and its experiment."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from roadwork.tracking.lineage import repo_root


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; raised before any heavy work starts."""


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """Drop credentials (``user:password@``) from a URI so it can be printed, tagged or logged."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", uri)


def limit_http_retries() -> None:
    """Bound MLflow's own HTTP retries (7 with back-off, minutes, by default): roadwork retries per call.

    Only sets defaults; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` in the environment win.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_reachable(uri: str) -> None:
    """Fail fast, naming the (redacted) URI, when the tracking store does not answer."""
    import mlflow

    limit_http_retries()
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking at {redact_uri(uri)} is unreachable "
            f"({type(exc).__name__}: {redact_uri(str(exc))[:500]}). "
            "Start the server or unset MLFLOW_TRACKING_URI to use the local sqlite store."
        ) from None


def ensure_experiment(client: Any, name: str, root: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A file-store-free local setup keeps artifacts beside the database instead of in the CWD.
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)
