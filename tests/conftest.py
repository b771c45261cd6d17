"""Shared fixtures: every test gets its own MLflow store and never touches the repository's mlflow.db."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path_factory.mktemp("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    # an earlier test's mlflow.set_experiment / start_run leaves these in the environment, and a child
    # `mlflow run` refuses an experiment id beside its --experiment-name
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    _unpin_mlflow_uris()


def _unpin_mlflow_uris() -> None:
    """Forget URIs an earlier test pinned with ``mlflow.set_tracking_uri``/``set_registry_uri`` (a stage run
    in-process pins its store; a server test pins its server): pinned URIs win over the environment, so a
    later test would talk to a store or server that is no longer its own. Skipped while mlflow is not
    imported (importing it costs seconds)."""
    if "mlflow" not in sys.modules:
        return
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None


@pytest.fixture(scope="module")
def adapt_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 images with a shrunk ExPLoRA, no augmented train copies, a 3-epoch head (the adapt-stage tests)."""
    from helpers.project import SHRUNK_ADAPT, prepare_project

    return prepare_project(
        tmp_path_factory.mktemp("project"),
        n=60,
        seed=7,
        updates={"embed": {"train_copies": 0}, "train": {"max_epochs": 3}, "adapt": SHRUNK_ADAPT},
    )


@pytest.fixture()
def adapt_work(adapt_project: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of :func:`adapt_project`, entered as the working directory."""
    from helpers.project import inside

    copy = tmp_path / "work"
    shutil.copytree(adapt_project, copy)
    with inside(copy):
        yield copy
