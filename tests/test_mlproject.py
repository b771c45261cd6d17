"""`mlflow run` of the MLproject entry points, in a temporary copy of the repository with 40 synthetic images.

Marked slow: ``-e main`` is ``dvc repro`` of the whole pipeline (about 6 minutes on 2 shared cores, most of
it each stage's interpreter importing torch and MLflow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.repo import STAGES, copy_repository, run

pytestmark = pytest.mark.slow


def test_mlflow_run_main_and_a_stage_with_its_defaults_and_with_overrides(tmp_path: Path) -> None:
    import mlflow
    from omegaconf import OmegaConf

    (tmp_path / "repo").mkdir()
    repo = copy_repository(tmp_path / "repo")
    params = OmegaConf.load(repo / "params.yaml")
    params.data.synth.n = 40
    OmegaConf.save(params, repo / "params.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_run = ["mlflow", "run", ".", "--env-manager", "local", "--experiment-name", "roadwork"]

    run([*mlflow_run, "-e", "synth"], repo, tracking_uri=uri)
    main = run([*mlflow_run, "-e", "main"], repo, tracking_uri=uri)
    log = main.stdout + main.stderr
    assert all(f"Running stage '{stage}'" in log for stage in STAGES)
    reproduced = (repo / "outputs/split/splits.csv").read_bytes()

    run([*mlflow_run, "-e", "split"], repo, tracking_uri=uri)
    assert (repo / "outputs/split/splits.csv").read_bytes() == reproduced  # the same parameters
    overrides = "split.seed=3 split.fractions.train=0.5 split.fractions.val_test=0.2"
    run([*mlflow_run, "-e", "split", "-P", f"overrides={overrides}"], repo, tracking_uri=uri)
    assert (repo / "outputs/split/splits.csv").read_bytes() != reproduced

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("roadwork")
    latest = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`roadwork.stage` = 'split'",
        order_by=["attributes.start_time DESC"],
    )
    assert [r.data.params["split.seed"] for r in latest] == ["3", "0", "0"]
    assert latest[0].data.params["split.fractions.train"] == "0.5"
