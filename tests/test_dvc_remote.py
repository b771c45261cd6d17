"""A DVC remote round trip: push from one clone, pull into a fresh one, and nothing re-runs.

Clone A (a temporary copy of the working tree with a small synthetic data set, `dvc add data`) runs
`dvc repro`, commits, adds a local-directory remote as the default and `dvc push`es. Clone B is a plain
`git clone` of A: `dvc pull` must restore the data and every stage output, after which `dvc repro` runs no
stage (bundle, which registers a model in MLflow, included), `dvc status` is clean and the outputs are
byte-identical to A's. Neither the feature cache (`.cache/features`) nor an MLflow store travels with the
clone; B must need neither.

Marked slow: one whole pipeline run plus push, clone and pull (2.5-6 minutes on 2 shared cores).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.repo import STAGES, copy_repository, run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GIT_USER = ["-c", "user.name=roadwork-test", "-c", "user.email=test@roadwork.invalid"]


def _run(cmd: list[str], cwd: Path, tracking_uri: str) -> str:
    done = run(cmd, cwd, tracking_uri=tracking_uri)
    return done.stdout + done.stderr


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Clones:
    first: Path
    second: Path
    remote: Path
    first_store: str
    second_store: str
    first_repro: str
    push: str
    pull: str


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> Clones:
    base = tmp_path_factory.mktemp("dvc_remote")
    first, second, remote = base / "first", base / "second", base / "remote"
    first.mkdir()
    first_store = f"sqlite:///{base / 'first-mlflow.db'}"
    second_store = f"sqlite:///{base / 'second-mlflow.db'}"

    copy_repository(first)
    _run(["roadwork", "synth", "data", "--n", "80", "--seed", "3", "--quiet"], first, first_store)
    _run(["dvc", "add", "data"], first, first_store)
    first_repro = _run(["dvc", "repro"], first, first_store)
    _run(["git", "add", "-A"], first, first_store)
    _run(["git", *GIT_USER, "commit", "-qm", "pipeline outputs"], first, first_store)
    _run(["dvc", "remote", "add", "-d", "store", str(remote)], first, first_store)
    _run(["git", "add", ".dvc/config"], first, first_store)
    _run(["git", *GIT_USER, "commit", "-qm", "default remote"], first, first_store)
    push = _run(["dvc", "push"], first, first_store)

    _run(["git", "clone", "-q", str(first), str(second)], base, second_store)
    pull = _run(["dvc", "pull"], second, second_store)
    return Clones(first, second, remote, first_store, second_store, first_repro, push, pull)


def test_first_clone_ran_every_stage_and_pushed(clones: Clones) -> None:
    for stage in STAGES:
        assert f"Running stage '{stage}'" in clones.first_repro
    assert any(p.is_file() for p in clones.remote.rglob("*")), "dvc push wrote nothing to the remote"
    in_sync = _run(["dvc", "status", "--cloud"], clones.first, clones.first_store)
    assert "in sync" in in_sync, in_sync
    # the first clone's stages did log, so the second clone's empty store is a real check
    assert not _no_runs(clones.first_store)


def test_pull_then_repro_runs_no_stage(clones: Clones) -> None:
    assert (clones.second / "data").is_dir() and (clones.second / "outputs").is_dir()
    repro = _run(["dvc", "repro"], clones.second, clones.second_store)
    assert "Running stage" not in repro, repro
    for stage in STAGES:
        assert f"'{stage}' didn't change, skipping" in repro, repro
    status = _run(["dvc", "status"], clones.second, clones.second_store)
    assert "up to date" in status, status
    # Nothing was computed: no feature was embedded and no stage (bundle's registration included) logged.
    assert not (clones.second / ".cache").exists()
    assert not Path(clones.second_store.removeprefix("sqlite:///")).exists() or _no_runs(clones.second_store)
    assert _run(["git", "status", "--porcelain"], clones.second, clones.second_store).strip() == ""


def _no_runs(store: str) -> bool:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("roadwork")
    return experiment is None or not client.search_runs([experiment.experiment_id])


def test_pulled_outputs_are_byte_identical(clones: Clones) -> None:
    first, second = _files(clones.first / "outputs"), _files(clones.second / "outputs")
    assert second.keys() == first.keys()
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, differ
    assert _files(clones.second / "data") == _files(clones.first / "data")
    assert (clones.second / "dvc.lock").read_bytes() == (clones.first / "dvc.lock").read_bytes()
    for name in ("bundle/choice.json", "train/base/model/head.safetensors", "embed/base/index.csv"):
        assert name in second, f"outputs/{name} was not restored"
    assert any(name.startswith("bundle/model/") for name in second)
