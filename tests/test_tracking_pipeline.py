"""MLflow as the place to compare pipelines: the pipeline (parent) run's name, changed params and status,
the upstream params on each stage run, and stage runs a killed process left RUNNING."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from roadwork.config import load_config
from roadwork.stages.common import lineage_params, tracked
from roadwork.tracking import stage_run

REPO = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


@pytest.fixture(scope="module")
def migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite store with its tables made (making them takes seconds, a copy does not)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture(autouse=True)
def _fresh_store(migrated_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own store, as conftest gives it, but copied from :func:`migrated_store`."""
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    shutil.copyfile(migrated_store, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A git repository on branch ``main`` with the real params.yaml and dvc.yaml committed; its commit."""
    for name in ("params.yaml", "dvc.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text())
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "params"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("ROADWORK_PIPELINE_ID", raising=False)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _runs(kind: str) -> list:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("roadwork")
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`roadwork.run_kind` = '{kind}'"
    )


def test_pipeline_run_is_named_carries_changed_params_and_follows_its_stages(
    project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config("params.yaml", ["train.lr=0.5", "split.seed=3"])
    with tracked("split", cfg, ("split",)) as run:
        # the pipeline run is open while a stage runs
        assert mlflow.MlflowClient().get_run(run.parent_id).info.status == "RUNNING"
    with pytest.raises(RuntimeError, match="boom"), tracked("train", cfg, ("train",), variant="base"):
        raise RuntimeError("boom")
    (parent,) = _runs("pipeline")
    assert parent.info.run_name == f"main@{project[:7]}"
    assert parent.data.params == {"train.lr": "0.5", "split.seed": "3"}  # only what differs from HEAD
    assert parent.data.tags["roadwork.changed_params"] == "split.seed train.lr"
    assert parent.info.status == "FAILED" and parent.data.tags["roadwork.failed_stages"] == "train@base"
    assert parent.info.end_time - parent.info.start_time >= 0
    # the failed stage succeeds on the next try: the pipeline is complete
    with tracked("train", cfg, ("train",), variant="base"):
        pass
    (parent,) = _runs("pipeline")
    assert parent.info.status == "FINISHED" and parent.data.tags["roadwork.failed_stages"] == ""

    # a DVC experiment names its own pipeline run; unchanged params give none and say so
    monkeypatch.setenv("DVC_EXP_NAME", "lucid-lark")
    with tracked("split", load_config("params.yaml"), ("split",)):
        pass
    named = {r.info.run_name: r for r in _runs("pipeline")}
    assert set(named) == {f"main@{project[:7]}", f"lucid-lark@{project[:7]}"}
    experiment = named[f"lucid-lark@{project[:7]}"]
    assert experiment.data.params == {} and experiment.data.tags["roadwork.changed_params"] == "none"
    assert experiment.info.status == "FINISHED"


def test_bundle_style_figures_land_on_the_pipeline_run(project: str) -> None:
    cfg = load_config("params.yaml")
    with tracked("bundle", cfg, ("deploy",)) as run:
        run.log_parent_metrics({"chosen_val_calib_mcc": 0.25})
        run.set_parent_tags({"roadwork.chosen_variant": "adapted"})
    (parent,) = _runs("pipeline")
    assert parent.data.metrics == {"chosen_val_calib_mcc": 0.25}
    assert parent.data.tags["roadwork.chosen_variant"] == "adapted"


def test_stage_runs_carry_the_params_of_the_stages_upstream(project: str) -> None:
    cfg = load_config("params.yaml", ["train.lr=0.5"])
    for variant in ("base", "adapted"):
        with tracked("evaluate", cfg, ("evaluate",), variant=variant):
            pass
    with tracked("split", cfg, ("split",)):
        pass
    params = {r.data.tags["roadwork.dvc_stage"]: r.data.params for r in _runs("stage")}
    assert params["evaluate@base"]["train.lr"] == "0.5"  # a changed lr shows where results are compared
    assert params["evaluate@base"]["split.seed"] == params["split"]["split.seed"] == "0"
    assert not any(k.startswith("adapt.") for k in params["evaluate@base"])  # base does not use adapt
    assert "adapt.lr" in params["evaluate@adapted"]
    assert not any(k.startswith(("train.", "evaluate.", "deploy.")) for k in params["split"])  # downstream


def test_lineage_params_agree_with_dvcs_own_graph() -> None:
    """The independent oracle: DVC's stage graph of the real dvc.yaml and the params DVC tracks per stage."""
    import networkx as nx
    from dvc.repo import Repo

    graph = Repo(str(REPO)).index.graph
    for stage in graph.nodes:
        if not stage.cmd:  # data.dvc
            continue
        upstream = {stage, *nx.descendants(graph, stage)}
        expected = {key for s in upstream for dep in s.params for key in dep.params}
        assert lineage_params(REPO / "dvc.yaml", stage.addressing) == sorted(expected), stage.addressing


def test_a_killed_stage_run_is_ended_as_killed_by_the_next_run_of_that_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = {"split": {"seed": 0}}
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, signal
                from roadwork.tracking import stage_run
                with stage_run("split", params={{}}, resolved_config={config!r}) as run:
                    print(run.run_id, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    dead = killed.stdout.strip()
    client = mlflow.MlflowClient()
    assert client.get_run(dead).info.status == "RUNNING"  # what a kill leaves behind
    # a live run of the same stage (this process) and a killed run of another stage
    experiment = client.get_run(dead).info.experiment_id
    live_tags = {
        **client.get_run(dead).data.tags,
        "roadwork.host": socket.gethostname(),
        "roadwork.pid": str(os.getpid()),
    }
    live = client.create_run(experiment, tags=live_tags).info.run_id
    other = client.create_run(
        experiment, tags={**live_tags, "roadwork.dvc_stage": "dedupe", "roadwork.pid": "0"}
    )

    with stage_run("split", params={}, resolved_config=config) as run:
        assert client.get_run(dead).info.status == "KILLED"
        parent = client.get_run(run.parent_id)
        # the killed stage failed its pipeline until this run of it succeeds
        assert parent.data.tags["roadwork.failed_stages"] == "split" and parent.info.status == "RUNNING"
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
    parent = client.get_run(run.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["roadwork.failed_stages"] == ""
    assert client.get_run(run.run_id).info.status == "FINISHED"
