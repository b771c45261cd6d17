"""End to end against a real MLflow tracking server over HTTP.

`mlflow server` (SQLite backend, proxied artifact store in a temp folder) runs on a free port of
127.0.0.1; `dvc repro` runs the pipeline on a small synthetic data set in a temporary copy of the repository
with ``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT``, then `roadwork promote` moves ``champion``. Everything
the stages log (runs, params, per-epoch curves, artifacts, the registered pyfunc and its aliases) must arrive
through the server: nothing may fall back to a local ``mlflow.db`` or ``mlartifacts/``.

Marked slow: a server start plus the whole pipeline and a promotion (3-4 minutes on 2 shared cores).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.repo import STAGES as PIPELINE_STAGES
from helpers.repo import copy_repository, run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODEL = "roadwork-classifier"
STAGES = sorted({stage.split("@")[0] for stage in PIPELINE_STAGES})  # stage names, both variants in one
SERVER_START_TIMEOUT_S = 120
SERVER_START_ATTEMPTS = 3


def _free_port() -> int:
    # The port is free when asked; another process may take it before the server binds (then we retry).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server and its uvicorn worker (it runs in a process group of its own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
    # a worker that outlived the launcher still belongs to the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class Server:
    url: str
    artifacts: Path
    log: Path


def _start_server(root: Path) -> tuple[subprocess.Popen, Server]:
    artifacts = root / "artifacts"
    database = root / "server.db"
    failures = []
    for attempt in range(SERVER_START_ATTEMPTS):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = root / f"server-{attempt}.log"
        with log.open("w") as sink:
            process = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    f"sqlite:///{database}",
                    # artifacts are proxied: clients upload to mlflow-artifacts:/, the server writes here
                    "--serve-artifacts",
                    "--artifacts-destination",
                    str(artifacts),
                ],
                cwd=root,
                env={
                    **os.environ,
                    "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    # the job runner (GenAI scorers, 7 extra processes) is not needed here
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                },
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and process.poll() is None:
            if _healthy(url):
                return process, Server(url=url, artifacts=artifacts, log=log)
            time.sleep(0.5)
        _stop(process)
        failures.append(f"port {port}: exit {process.returncode}\n{log.read_text()[-3000:]}")
    pytest.fail("mlflow server did not become healthy:\n" + "\n---\n".join(failures))


@dataclass
class Reproduced:
    server: Server
    repo: Path
    repro_log: str
    promote_log: str


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reproduced]:
    process, server = _start_server(tmp_path_factory.mktemp("server"))
    try:
        repo = copy_repository(tmp_path_factory.mktemp("repo"))
        run(
            ["roadwork", "synth", "data", "--n", "80", "--seed", "3", "--quiet"],
            repo,
            tracking_uri=server.url,
        )
        repro = run(["dvc", "repro"], repo, tracking_uri=server.url)
        promote = run(["roadwork", "promote"], repo, tracking_uri=server.url)
        yield Reproduced(server, repo, repro.stdout + repro.stderr, promote.stdout + promote.stderr)
    finally:
        _stop(process)


def _client(url: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=url, registry_uri=url)


def _stage_runs(url: str) -> tuple[dict, list]:
    client = _client(url)
    experiment = client.get_experiment_by_name("roadwork")
    assert experiment is not None, "the stages created no 'roadwork' experiment on the server"
    runs = client.search_runs([experiment.experiment_id])
    stages = {
        r.data.tags["roadwork.stage"]: r for r in runs if r.data.tags.get("roadwork.run_kind") == "stage"
    }
    parents = [r for r in runs if r.data.tags.get("roadwork.run_kind") == "pipeline"]
    return stages, parents


def test_every_stage_ran_and_nothing_was_tracked_locally(reproduced: Reproduced) -> None:
    for dvc_stage in PIPELINE_STAGES:
        assert f"Running stage '{dvc_stage}'" in reproduced.repro_log
    # With a server URI the stages must not fall back to the embedded store or write artifacts locally.
    for local in ("mlflow.db", "mlruns", "mlartifacts"):
        assert not (reproduced.repo / local).exists(), f"{local} was created beside the repository"


def test_stage_runs_are_on_the_server_with_their_tags(reproduced: Reproduced) -> None:
    stages, parents = _stage_runs(reproduced.server.url)
    assert set(stages) == set(STAGES)
    assert len(parents) == 1
    for run_ in stages.values():
        tags = run_.data.tags
        assert run_.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["roadwork.pipeline_id"] == parents[0].data.tags["roadwork.pipeline_id"]
        assert tags["roadwork.data_version"]
        assert len(tags["roadwork.git_commit"]) in (40, len("unknown"))
    assert stages["split"].data.params["split.seed"] == "0"
    assert stages["train"].data.tags["roadwork.dvc_stage"] == "train@base"
    assert stages["ingest"].data.metrics["n_inputs"] == 80
    # Lightning's MLFlowLogger also reached the server: one val_mcc point per epoch run
    train = stages["train"]
    curve = _client(reproduced.server.url).get_metric_history(train.info.run_id, "val_mcc")
    assert [m.step for m in curve] == list(range(int(train.data.metrics["epochs_run"])))


def test_artifacts_went_through_the_server(reproduced: Reproduced, tmp_path: Path) -> None:
    import mlflow

    url = reproduced.server.url
    experiment = _client(url).get_experiment_by_name("roadwork")
    # proxied artifact root: clients never see the server's folder, only mlflow-artifacts:/
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    stages, _ = _stage_runs(url)
    train = stages["train"]
    got = mlflow.artifacts.download_artifacts(
        run_id=train.info.run_id, artifact_path="model/head.json", dst_path=str(tmp_path), tracking_uri=url
    )
    assert Path(got).read_bytes() == (reproduced.repo / "outputs/train/base/model/head.json").read_bytes()
    # ... and they sit in the server's --artifacts-destination
    assert any(reproduced.server.artifacts.rglob("head.json"))
    assert any(reproduced.server.artifacts.rglob("MLmodel"))


def test_version_registered_and_champion_moved_over_http(
    reproduced: Reproduced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    url = reproduced.server.url
    client = _client(url)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert [v.version for v in versions] == ["1"]
    assert client.get_model_version_by_alias(MODEL, "challenger").version == "1"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert champion.tags["promote.decision"] == "promote"
    assert champion.tags["roadwork.variant"] == "base"
    assert "moved to v1" in reproduced.promote_log
    stages, _ = _stage_runs(url)
    assert stages["bundle"].data.tags["roadwork.registered_version"] == "1"
    # the registered pyfunc is downloadable through the server by its alias (models:/ URIs resolve against
    # the environment's registry, not the registry_uri argument)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
    # another test in this process may have set mlflow's global URIs, which win over the environment
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL}@champion", dst_path=str(tmp_path)
            )
        )
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    mlmodel = (local / "MLmodel").read_text()
    assert "python_function" in mlmodel
    choice = json.loads((reproduced.repo / "outputs/bundle/choice.json").read_text())
    assert choice["chosen"] == "base"
