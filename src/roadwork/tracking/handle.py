"""The handle a stage logs through: every MLflow call retried, a lasting failure recorded, not raised."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roadwork.tracking.store import redact_uri


class TrackingLostError(RuntimeError):
    """Logging failed during a stage although its outputs were written; the message says how to re-log."""


def _retry_settings() -> tuple[int, float]:
    """(attempts, first back-off in seconds) from ``ROADWORK_TRACKING_RETRIES`` / ``..._BACKOFF``."""
    return int(os.environ.get("ROADWORK_TRACKING_RETRIES", "4")), float(
        os.environ.get("ROADWORK_TRACKING_BACKOFF", "1.0")
    )


@dataclass
class StageRun:
    """Handle a stage uses to log to its MLflow run.

    Every call is retried with exponential back-off (``ROADWORK_TRACKING_RETRIES`` attempts, first wait
    ``ROADWORK_TRACKING_BACKOFF`` seconds). A call that still fails is recorded in ``failures`` instead of
    raising, so a lost tracking server never costs the stage its work; once one call has failed, later
    calls try once only. :func:`stage_run` turns recorded failures into :class:`TrackingLostError` after
    the stage has written its outputs.
    """

    run_id: str
    experiment_id: str
    failures: list[str] = field(default_factory=list)
    parent_id: str = ""

    def call(self, what: str, fn: Any) -> None:
        retries, backoff = _retry_settings()
        attempts = 1 if self.failures else max(1, retries)
        for attempt in range(attempts):
            try:
                fn()
                return
            except Exception as exc:  # any transport or server error is a tracking outage
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(backoff * 2**attempt)
        message = f"{what}: {type(last).__name__}: {redact_uri(str(last))[:300]}"
        self.failures.append(message)
        print(f"roadwork: MLflow logging failed, continuing without it ({message})", file=sys.stderr)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.call("log_metrics", lambda: mlflow.log_metrics(clean, step=step, run_id=self.run_id))

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` on the pipeline's parent run: the headline figures pipelines are compared by."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.call("log_metrics (pipeline run)", lambda: mlflow.log_metrics(clean, run_id=self.parent_id))

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for key, value in tags.items():
            self.call(
                f"set_tag {key} (pipeline run)", lambda k=key, v=value: client.set_tag(self.parent_id, k, v)
            )

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            self.call(
                f"log_artifacts {path}",
                lambda: mlflow.log_artifacts(str(path), artifact_path=artifact_path, run_id=self.run_id),
            )
        else:
            self.call(
                f"log_artifact {path}",
                lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.run_id),
            )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for key, value in tags.items():
            self.call(f"set_tag {key}", lambda k=key, v=value: client.set_tag(self.run_id, k, v))

    def lightning_logger(self) -> Any:
        """Lightning's MLFlowLogger on this run, with the same retry-and-record behaviour."""
        import mlflow
        from lightning.pytorch.loggers import MLFlowLogger

        run = self

        class _ResilientMLFlowLogger(MLFlowLogger):
            def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
                run.call("epoch metrics", lambda: MLFlowLogger.log_metrics(self, metrics, step))

            def log_hyperparams(self, params: Any) -> None:
                run.call("hyperparameters", lambda: MLFlowLogger.log_hyperparams(self, params))

            def finalize(self, status: str = "success") -> None:
                """The stage owns the run and ends it."""

        return _ResilientMLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=self.run_id)

    def loggers(self) -> list[Any]:
        """The Lightning loggers a stage hands to its trainer: :meth:`lightning_logger` on rank 0."""
        return [self.lightning_logger()]


class OffRankRun(StageRun):
    """The run handle of a rank other than 0: every call is a no-op, so MLflow sees one writer."""

    def call(self, what: str, fn: Any) -> None:
        return None

    def lightning_logger(self) -> Any:
        return None

    def loggers(self) -> list[Any]:
        return []
