"""Tracking outages: unreachable at the start (fail fast); lost mid-run (finish, then re-log)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from roadwork.cli import main as cli
from roadwork.data.synth import generate_dataset
from roadwork.tracking import StageRun, TrackingLostError, redact_uri

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    params = OmegaConf.load(REPO / "params.yaml")
    params.dedupe.embedding_cosine = None  # no backbone needed for these stages
    OmegaConf.save(params, tmp_path / "params.yaml")
    generate_dataset(tmp_path / "data", n=40, seed=2, show_progress=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROADWORK_TRACKING_BACKOFF", "0.01")
    assert cli(["ingest"]) == 0 and cli(["dedupe"]) == 0
    return tmp_path


def test_unreachable_server_fails_fast_naming_the_uri_without_credentials(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:9")
    start = time.monotonic()
    assert cli(["split"]) == 3
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert "http://***@127.0.0.1:9" in err and "unreachable" in err
    assert "s3cret" not in err
    assert not (project / "outputs/split/splits.csv").exists()  # failed before any work


def test_lost_mid_run_finishes_the_stage_and_relog_recovers(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}

    def down(*args, **kwargs):
        calls["n"] += 1
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(mlflow, "log_metrics", down)
    monkeypatch.setattr(mlflow, "log_artifact", down)
    assert cli(["split"]) == 3
    err = capsys.readouterr().err
    assert "roadwork relog split" in err and "dvc commit split" in err
    splits = project / "outputs/split/splits.csv"
    metrics = json.loads((project / "outputs/split/metrics.json").read_text())
    assert splits.stat().st_size > 0 and metrics["n_images"] > 0  # the work was done and written
    # retried with back-off on the first failure, then one try per call once the server is known down
    assert calls["n"] == int(os.environ.get("ROADWORK_TRACKING_RETRIES", "4")) + 1

    monkeypatch.undo()
    monkeypatch.chdir(project)
    assert cli(["relog", "split"]) == 0
    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [client.get_experiment_by_name("roadwork").experiment_id],
        filter_string="tags.`roadwork.relogged` = 'true'",
    )
    assert len(runs) == 1
    assert runs[0].data.metrics["n_images"] == metrics["n_images"]
    assert runs[0].data.tags["roadwork.stage"] == "split"


def test_recorded_failures_are_redacted_and_raise_after_the_stage() -> None:
    run = StageRun(run_id="r", experiment_id="e")

    def fail() -> None:
        raise ConnectionError("POST http://bob:hunter2@tracking.example/api failed")

    run.call("log", fail)
    assert run.failures and "hunter2" not in run.failures[0] and "***@tracking.example" in run.failures[0]
    assert redact_uri("https://u:p@h/x and http://v:q@k") == "https://***@h/x and http://***@k"
    assert issubclass(TrackingLostError, RuntimeError)
