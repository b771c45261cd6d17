"""End to end: `dvc repro` on a small synthetic data set in a temporary copy of the repository.

Marked slow: it bootstraps a DVC repository and an MLflow store (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.repo import BIN, STAGES, copy_repository
from helpers.repo import run as repo_run

pytestmark = pytest.mark.slow


def run(
    cmd: list[str], cwd: Path, *, tracking_uri: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """:func:`helpers.repo.run`, with MLflow going to this module's store once ``reproduced`` made one."""
    return repo_run(cmd, cwd, tracking_uri=tracking_uri or TRACKING_URI.get("uri"), **kwargs)


TRACKING_URI: dict[str, str] = {}
GIT = ["git", "-c", "user.name=roadwork-test", "-c", "user.email=test@roadwork.invalid"]
BAD_FILES = {
    "roadwork/zero_bytes.jpg": "empty_file",
    "roadwork/text.jpg": "not_an_image",
    "no_roadwork/truncated.jpg": "truncated",
    "misc/unlabelled.jpg": "unknown_label",
}


def plant_bad_files(data: Path) -> None:
    """Unusable inputs that ingest must quarantine (with a reason) without stopping the pipeline."""
    good = next((data / "roadwork").glob("*.jpg")).read_bytes()
    (data / "misc").mkdir()
    (data / "roadwork/zero_bytes.jpg").write_bytes(b"")
    (data / "roadwork/text.jpg").write_text("not a picture")
    (data / "no_roadwork/truncated.jpg").write_bytes(good[: len(good) // 2])
    (data / "misc/unlabelled.jpg").write_bytes(good)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    TRACKING_URI["uri"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    run(["roadwork", "synth", "data", "--n", "80", "--seed", "3", "--quiet"], repo)
    plant_bad_files(repo / "data")
    run(["dvc", "add", "data"], repo)  # tracked as in a user's repository: the remote test pushes it
    first = run(["dvc", "repro"], repo)
    return repo, first.stdout + first.stderr


def test_repro_runs_every_stage_and_writes_metrics(reproduced: tuple[Path, str]) -> None:
    repo, log = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
        metrics = json.loads((repo / "outputs" / stage.replace("@", "/") / "metrics.json").read_text())
        assert metrics
    ingest = json.loads((repo / "outputs/ingest/metrics.json").read_text())
    assert ingest["n_inputs"] == ingest["n_kept"] + ingest["n_quarantined"] == 80 + len(BAD_FILES)
    assert ingest["n_quarantined"] == len(BAD_FILES)
    quarantine = dict(
        line.split(",")[:2] for line in (repo / "outputs/ingest/quarantine.csv").read_text().splitlines()[1:]
    )
    assert quarantine == BAD_FILES
    dedupe = json.loads((repo / "outputs/dedupe/metrics.json").read_text())
    assert dedupe["known_pairs"] > 0 and dedupe["known_pairs_recall"] >= 0.95
    split = json.loads((repo / "outputs/split/metrics.json").read_text())
    assert split["known_pairs_across_splits"] == 0
    embed = json.loads((repo / "outputs/embed/base/metrics.json").read_text())
    # train = clean + 1 augmented copy per image
    assert embed["train_rows"] == 2 * embed["train_images"]
    train = json.loads((repo / "outputs/train/base/metrics.json").read_text())
    assert train["epochs_run"] <= 3 and -1 <= train["val_select_mcc"] <= 1
    logits = (repo / "outputs/train/base/logits/val_calib.csv").read_text().splitlines()
    # the clean render and one render at each of L1-L3 per val_calib image
    assert logits[0] == "sha256,path,render,level,margin" and len(logits) - 1 == 4 * split["val_calib_n"]
    policy = json.loads((repo / "outputs/calibrate/base/policy.json").read_text())
    assert policy["calibrator"]["name"] == "temperature" and len(policy["split_hash"]) == 64
    evaluate = json.loads((repo / "outputs/evaluate/base/report.json").read_text())
    assert evaluate["test_n"] == split["val_test_n"]
    headline = ("validator_mcc", "validator_accuracy", "predicted_positive_rate", "expected_reward")
    assert list(evaluate)[:4] == list(headline)
    # DVC's metrics: each stage's headline only, every figure in its report.json
    for stage in ("ingest", "calibrate/base", "evaluate/base"):
        shown = json.loads((repo / "outputs" / stage / "metrics.json").read_text())
        full = json.loads((repo / "outputs" / stage / "report.json").read_text())
        assert len(shown) <= 16 and shown == {k: full[k] for k in shown}
    for name in ("validator_mcc", "expected_reward", "lift_over_probe"):
        assert evaluate[f"{name}_low"] <= evaluate[name] <= evaluate[f"{name}_high"]
    assert evaluate["lift_over_probe"] == pytest.approx(
        evaluate["validator_mcc"] - evaluate["probe_validator_mcc"], abs=1e-12
    )
    assert evaluate["test_mcc_low"] <= evaluate["test_mcc"] <= evaluate["test_mcc_high"]
    assert evaluate["test_deployed_agrees_with_decision"] == 1.0
    assert {f"L{level}_mcc" for level in range(4)} <= set(evaluate)
    for plot in ("roc", "pr", "reliability", "threshold_sweep", "confusion", "risk_coverage", "worst_errors"):
        assert (repo / f"outputs/evaluate/base/plots/{plot}.png").stat().st_size > 1000
    for curve in ("roc", "pr", "reliability"):  # a header and at least one point
        assert len((repo / f"outputs/evaluate/base/plots/{curve}.csv").read_text().splitlines()) > 1


def test_second_repro_runs_nothing(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    again = run(["dvc", "repro"], repo)
    assert "Running stage" not in again.stdout + again.stderr
    status = run(["dvc", "status"], repo)
    assert "up to date" in status.stdout


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _no_runs(store: str) -> bool:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("roadwork")
    return experiment is None or not client.search_runs([experiment.experiment_id])


def test_a_remote_round_trip_restores_every_output_and_runs_nothing(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    """Push from the reproduced repository to a local-folder remote; a plain ``git clone`` of it then
    ``dvc pull``s the data and every stage output, after which ``dvc repro`` runs no stage (bundle's
    registration included) with an empty MLflow store and no feature cache, and the outputs are
    byte-identical."""
    repo, _ = reproduced
    second, remote, store = tmp_path / "second", tmp_path / "remote", f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(["git", "add", "-A"], repo)
    run([*GIT, "commit", "-qm", "pipeline outputs"], repo)
    run(["dvc", "remote", "add", "-d", "store", str(remote)], repo)
    run(["git", "add", ".dvc/config"], repo)
    run([*GIT, "commit", "-qm", "default remote"], repo)
    run(["dvc", "push"], repo)
    assert "in sync" in run(["dvc", "status", "--cloud"], repo).stdout
    run(["git", "clone", "-q", str(repo), str(second)], tmp_path, tracking_uri=store)
    run(["dvc", "pull"], second, tracking_uri=store)
    repro = run(["dvc", "repro"], second, tracking_uri=store)
    assert "Running stage" not in repro.stdout + repro.stderr
    assert all(f"'{stage}' didn't change, skipping" in repro.stdout + repro.stderr for stage in STAGES)
    assert "up to date" in run(["dvc", "status"], second, tracking_uri=store).stdout
    assert not (second / ".cache").exists() and _no_runs(store)  # nothing embedded, nothing logged
    assert run(["git", "status", "--porcelain"], second, tracking_uri=store).stdout.strip() == ""
    first_outputs, second_outputs = _files(repo / "outputs"), _files(second / "outputs")
    assert second_outputs.keys() == first_outputs.keys()
    assert [name for name in first_outputs if first_outputs[name] != second_outputs[name]] == []
    assert _files(second / "data") == _files(repo / "data")
    assert (second / "dvc.lock").read_bytes() == (repo / "dvc.lock").read_bytes()
    # features have one home: with no feature cache, train and evaluate read embed's pulled outputs
    for stage in ("train", "evaluate"):
        rerun = run(["roadwork", stage, "--variant", "base"], second, tracking_uri=store)
        assert re.search(r"backbone inputs computed[^:]*: 0\b", rerun.stdout), rerun.stdout


def test_another_backbone_or_embedding_setting_leaves_dedupe_and_split_alone(
    reproduced: tuple[Path, str],
) -> None:
    """Trying another model keeps the split, so every run is scored on the same val_test: no ``backbone.*``
    or ``embed.*`` value is a param of dedupe or split (``dvc status`` is the oracle)."""
    from omegaconf import OmegaConf

    repo, _ = reproduced
    params_file = repo / "params.yaml"
    before = params_file.read_text()
    try:
        params = OmegaConf.load(params_file)
        params.backbone.id, params.embed.batch_size = "efficientnet_lite0", params.embed.batch_size + 1
        OmegaConf.save(params, params_file)
        status = run(["dvc", "status"], repo).stdout
    finally:
        params_file.write_text(before)
    changed = {line.rstrip(":").strip() for line in status.splitlines() if line.endswith(":")}
    assert {"embed@base", "adapt"} <= changed
    assert not changed & {"ingest", "dedupe", "split"}, status


def test_stage_runs_are_tracked_and_grouped(reproduced: tuple[Path, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=TRACKING_URI["uri"])
    experiment = client.get_experiment_by_name("roadwork")
    runs = client.search_runs([experiment.experiment_id])
    by_dvc_stage = {
        r.data.tags.get("roadwork.dvc_stage"): r
        for r in runs
        if r.data.tags.get("roadwork.run_kind") == "stage"
    }
    parents = [r for r in runs if r.data.tags.get("roadwork.run_kind") == "pipeline"]
    assert set(by_dvc_stage) == set(STAGES)  # both variants side by side
    stages = {name.replace("@base", ""): run_ for name, run_ in by_dvc_stage.items()}
    assert len(parents) == 1
    for run_ in stages.values():
        tags = run_.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["roadwork.pipeline_id"] == parents[0].data.tags["roadwork.pipeline_id"]
        assert len(tags["roadwork.git_commit"]) in (40, len("unknown"))
        assert tags["roadwork.data_version"]
    assert stages["split"].data.params["split.seed"] == "0"
    assert stages["split"].data.params["split.fractions.train"] == "0.6"
    assert stages["ingest"].data.metrics["n_inputs"] == 80 + len(BAD_FILES)
    assert len(stages["split"].data.tags["roadwork.splits_sha256"]) == 64
    train = stages["train"]
    assert train.data.tags["roadwork.dvc_stage"] == "train@base"
    assert train.data.params["train.lr"] == "0.001"
    # per-epoch curves through Lightning's MLFlowLogger, one point per epoch run
    curve = client.get_metric_history(train.info.run_id, "val_mcc")
    assert [m.step for m in curve] == list(range(int(train.data.metrics["epochs_run"])))
    # dedupe's embedding check cached the clean renders: embed computed only the augmented train copies
    # (less those that drew level 0, the same bytes as the clean render), the L1-L3 val renders and
    # val_test's evaluation renders at L1-L3
    embed = stages["embed"].data.metrics
    repo, _ = reproduced
    per_level = yaml.safe_load((repo / "params.yaml").read_text())["evaluate"]["renders_per_level"]
    renders = (
        embed["train_images"]
        + 3 * (embed["val_select_images"] + embed["val_calib_images"])
        + 3 * per_level * embed["val_test_images"]
    )
    assert 0.6 * renders < embed["images_computed"] <= renders
    # ExPLoRA: parameter counts, the SSL curve per step and the merge check in MLflow
    adapt = stages["adapt"]
    assert 0 < adapt.data.metrics["trainable_pct"] < 100
    assert adapt.data.metrics["merge_max_abs_diff"] <= 1e-4
    assert [m.step for m in client.get_metric_history(adapt.info.run_id, "ssl_loss")] == [1, 2]
    assert by_dvc_stage["train@adapted"].data.tags["roadwork.variant"] == "adapted"
    assert stages["evaluate"].data.params["train.lr"] == "0.001"  # upstream params on evaluate's run


def test_pipeline_run_shows_what_the_pipeline_shipped(reproduced: tuple[Path, str]) -> None:
    import mlflow

    repo, _ = reproduced
    client = mlflow.MlflowClient(tracking_uri=TRACKING_URI["uri"])
    experiment = client.get_experiment_by_name("roadwork")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`roadwork.run_kind` = 'pipeline'"
    )
    # the copy's git repository has a branch but no commit yet
    assert parent.info.run_name.endswith("@unknown") and parent.info.status == "FINISHED"
    assert parent.data.tags["roadwork.failed_stages"] == ""
    assert parent.data.tags["roadwork.changed_params"].startswith("unknown: no committed params.yaml")
    chosen = json.loads((repo / "outputs/bundle/choice.json").read_text())["chosen"]
    assert parent.data.tags["roadwork.chosen_variant"] == chosen
    calibrated = json.loads((repo / f"outputs/calibrate/{chosen}/metrics.json").read_text())
    assert parent.data.metrics["chosen_val_calib_mcc"] == pytest.approx(calibrated["val_calib_mcc"])
    for variant in ("base", "adapted"):
        evaluated = json.loads((repo / f"outputs/evaluate/{variant}/metrics.json").read_text())
        assert parent.data.metrics[f"{variant}.validator_mcc"] == pytest.approx(evaluated["validator_mcc"])
    version = client.get_model_version("roadwork-classifier", parent.data.tags["roadwork.registered_version"])
    data_md5 = version.tags["roadwork.data_version"]
    assert version.description.startswith(f"{chosen} variant; data {data_md5}; commit ")
    assert f"val_calib_mcc {calibrated['val_calib_mcc']:.4f}" in version.description


def test_adapted_variant_runs_on_the_adapted_backbone(reproduced: tuple[Path, str]) -> None:
    repo, _ = reproduced
    adapt = json.loads((repo / "outputs/adapt/metrics.json").read_text())
    split = json.loads((repo / "outputs/split/metrics.json").read_text())
    assert adapt["train_images"] == split["train_n"] and adapt["steps"] == 2
    assert adapt["merge_max_abs_diff"] <= 1e-4 and 0 < adapt["trainable_pct"] < 100
    saved = json.loads((repo / "outputs/adapt/adapt.json").read_text())
    embedded = {
        v: json.loads((repo / f"outputs/embed/{v}/backbone.json").read_text()) for v in ("base", "adapted")
    }
    assert embedded["adapted"]["fingerprint"] == saved["backbone_fingerprint"]
    assert embedded["base"]["fingerprint"] == saved["base_backbone"]["fingerprint"]
    assert embedded["adapted"]["fingerprint"] != embedded["base"]["fingerprint"]
    for variant in ("base", "adapted"):
        assert json.loads((repo / f"outputs/evaluate/{variant}/report.json").read_text())["test_n"] > 0
    choice = json.loads((repo / "outputs/bundle/choice.json").read_text())
    assert set(choice["candidates"]) == {"base", "adapted"}
    low, high = yaml.safe_load((repo / "params.yaml").read_text())["deploy"]["positive_rate_band"]
    figures = choice["candidates"]

    def by_hand(variant: str) -> tuple[float, float, bool]:  # nearest the band, then MCC, then base
        rate = figures[variant]["val_calib_predicted_positive_rate"]
        mcc = figures[variant]["val_calib_validator_mcc"]
        return max(low - rate, rate - high, 0.0), -mcc, variant != "base"

    assert choice["chosen"] == min(figures, key=by_hand)


def test_what_is_evaluated_is_what_ships(
    reproduced: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate's predictions equal the registered pyfunc's answers on the same rendered bytes, and
    ``roadwork promote`` scores that model exactly as evaluate did."""
    import mlflow
    import pandas as pd

    from roadwork.config import load_config
    from roadwork.deploy.registry import predict_with
    from roadwork.stages.embed import evaluation_renders
    from roadwork.stages.modelling import rendered_bytes

    repo, _ = reproduced
    monkeypatch.chdir(repo)
    cfg = load_config(repo / "params.yaml")
    variant = json.loads((repo / "outputs/bundle/choice.json").read_text())["chosen"]
    evaluated = pd.read_csv(repo / f"outputs/evaluate/{variant}/predictions.csv", dtype={"sha256": str})
    splits = pd.read_csv(repo / "outputs/split/splits.csv", dtype={"sha256": str, "path": str})
    frame = splits[splits["split"] == "val_test"].sort_values("path").reset_index(drop=True)
    mlflow.set_tracking_uri(TRACKING_URI["uri"])
    model = mlflow.pyfunc.load_model("models:/roadwork-classifier@challenger")
    renders = evaluation_renders(cfg)
    assert sorted({r.level for r in renders}) == [0, 1, 2, 3] and len(renders) == 1 + 3 * 2
    for render in renders:
        served = predict_with(model, rendered_bytes(frame, render))
        ours = evaluated[evaluated["render"] == render.key].reset_index(drop=True)
        assert list(ours["sha256"]) == list(frame["sha256"])
        np.testing.assert_allclose(served["probability"], ours["probability"], atol=1e-5, rtol=0)
        assert (served["decision"].to_numpy() == ours["decision"].to_numpy()).all()
    run(["roadwork", "promote"], repo)  # the first model becomes champion, unscored
    run(["roadwork", "bundle"], repo)  # the same model again, as challenger: promote must score both alike
    promoted = run(["roadwork", "promote"], repo).stdout
    client = mlflow.MlflowClient(tracking_uri=TRACKING_URI["uri"])
    challenger = client.get_model_version_by_alias("roadwork-classifier", "challenger")
    champion = client.get_model_version_by_alias("roadwork-classifier", "champion")
    assert challenger.version != champion.version and "no significant difference" in promoted
    metrics = json.loads((repo / f"outputs/evaluate/{variant}/metrics.json").read_text())
    for score in ("promote.challenger_score", "promote.champion_score"):
        assert float(challenger.tags[score]) == pytest.approx(metrics["expected_reward"], abs=1e-6)
    assert challenger.tags["promote.difference_interval"] == "[0.000000, 0.000000]"


def test_cli_override_reaches_mlflow_params(reproduced: tuple[Path, str]) -> None:
    import mlflow

    repo, _ = reproduced
    run(["roadwork", "split", "split.seed=5"], repo)
    client = mlflow.MlflowClient(tracking_uri=TRACKING_URI["uri"])
    experiment = client.get_experiment_by_name("roadwork")
    latest = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`roadwork.stage` = 'split'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    assert latest.data.params["split.seed"] == "5"
    assert latest.data.tags["roadwork.overrides"] == "split.seed=5"


def test_dvc_exp_run_set_param_reaches_mlflow(reproduced: tuple[Path, str]) -> None:
    import mlflow

    repo, _ = reproduced
    run(["git", "add", "-A"], repo)
    run([*GIT, "commit", "--allow-empty", "-qm", "pipeline"], repo)
    # a bundle-only param: the experiment re-runs bundle alone (a moved split would re-run everything)
    log = run(["dvc", "exp", "run", "-S", "deploy.description=an-experiment-model"], repo)
    out = log.stdout + log.stderr
    assert "Running stage 'bundle'" in out and "Running stage 'embed@base'" not in out
    client = mlflow.MlflowClient(tracking_uri=TRACKING_URI["uri"])
    experiment = client.get_experiment_by_name("roadwork")
    descriptions = {
        r.data.params.get("deploy.description")
        for r in client.search_runs(
            [experiment.experiment_id], filter_string="tags.`roadwork.stage` = 'bundle'"
        )
    }
    assert "an-experiment-model" in descriptions


def test_export_submission_loads_in_the_miners_transformers(reproduced: tuple[Path, str]) -> None:
    """``roadwork export-submission`` on the registered model: a valid card, refusal of the defaults, and a
    folder the subnet's pinned transformers 4.45.2 loads with the miner's calls, agreeing with the pyfunc."""
    import mlflow

    from helpers.miner import TEST_HOTKEY, miner_scores, pinned_transformers
    from roadwork.deploy.registry import predict_with

    repo, _ = reproduced
    uri = "models:/roadwork-classifier@challenger"
    base = ["roadwork", "export-submission", "--model-uri", uri, "--hotkey", TEST_HOTKEY]
    env = {"MLFLOW_TRACKING_URI": TRACKING_URI["uri"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    refused = subprocess.run(
        [*base, "--model-name", "roadwork-classifier", "--out", "outputs/refused"],
        cwd=repo, env={**os.environ, **env}, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode == 2 and "--model-name" in refused.stderr
    assert not (repo / "outputs/refused").exists()
    done = run([*base, "--model-name", "acme-roadwork-test", "--out", "outputs/submission"], repo)
    assert "huggingface-cli upload" in done.stdout
    folder = repo / "outputs/submission"
    card = json.loads((folder / "model_card.json").read_text())
    assert card["submitted_by"] == TEST_HOTKEY and card["model_name"] == "acme-roadwork-test"
    assert "validator_mcc" in (folder / "README.md").read_text()

    # level-0 renders: the 224 x 224 JPEGs the validator sends
    renders = sorted((repo / ".cache/renders/clean-v2").glob("*/*.jpg"))[:10]
    assert len(renders) == 10
    mlflow.set_tracking_uri(TRACKING_URI["uri"])
    served = predict_with(mlflow.pyfunc.load_model(uri), [p.read_bytes() for p in renders])
    result = miner_scores(folder, renders, pinned_transformers())
    assert result["transformers"] == "4.45.2" and result["processor"] == "ViTImageProcessorFast"
    scores = np.asarray(result["scores"])
    np.testing.assert_allclose(scores, served["probability"].to_numpy(), atol=1e-4)
    np.testing.assert_array_equal((scores > 0.5).astype(int), served["decision"].to_numpy())


def test_a_model_without_a_hugging_face_form_ships_its_probe(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    """A flip-averaged model has no image-classification form: bundle registers it, exports the chosen
    variant's linear probe instead, and records what the folder holds and what it costs on val_calib."""
    import mlflow

    from helpers.miner import TEST_HOTKEY
    from roadwork.deploy.hf_export import hf_probabilities
    from roadwork.deploy.predictor import Predictor

    repo = tmp_path / "repo"
    shutil.copytree(reproduced[0], repo, symlinks=True)  # the module's repository stays as it was
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run(["roadwork", "bundle", "embed.tta_flip=true"], repo, tracking_uri=uri)
    metrics = json.loads((repo / "outputs/bundle/metrics.json").read_text())
    assert metrics["hf_exported"] == 1.0 and metrics["hf_holds_fallback"] == 1.0
    cost = metrics["chosen_val_calib_validator_mcc"] - metrics["hf_fallback_val_calib_validator_mcc"]
    assert metrics["hf_cost_val_calib_validator_mcc"] == pytest.approx(cost, abs=1e-12)
    version = mlflow.MlflowClient(tracking_uri=uri).get_model_version_by_alias(
        "roadwork-classifier", "challenger"
    )
    assert "linear probe" in version.tags["roadwork.hf_export_holds"]
    assert "roadwork.hf_cost_val_calib_validator_mcc" in version.tags
    registered = json.loads((repo / "outputs/bundle/model/predictor.json").read_text())
    assert registered["tta_flip"] is True
    fallback = Predictor.from_dir(repo / "outputs/bundle/fallback")
    assert fallback.spec.tta_flip is False and fallback.spec.views == "global"
    renders = sorted((repo / ".cache/renders/clean-v2").glob("*/*.jpg"))[:8]
    ours = fallback.predict([p.read_bytes() for p in renders])
    np.testing.assert_allclose(
        hf_probabilities(repo / "outputs/bundle/hf", renders), ours["probability"], atol=1e-4
    )
    refused = subprocess.run(
        ["roadwork", "export-submission", "--model-uri", "models:/roadwork-classifier@challenger",
         "--hotkey", TEST_HOTKEY, "--model-name", "acme-roadwork-test", "--out", "outputs/flip"],
        cwd=repo, capture_output=True, text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert refused.returncode == 2 and "outputs/bundle/fallback" in refused.stderr
    run(["roadwork", "export-submission", "--model-uri", "outputs/bundle/fallback", "--hotkey", TEST_HOTKEY,
         "--model-name", "acme-roadwork-test", "--out", "outputs/probe"], repo, tracking_uri=uri)  # fmt: skip
    assert (repo / "outputs/probe/model_card.json").is_file()


def test_mlproject_entry_points_run_with_defaults_and_with_overrides(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    """``mlflow run`` of ``main`` (``dvc repro``, which the fixture ran in full: here it runs no stage)
    and of a stage with its defaults (MLflow passes the empty ``overrides`` on as ``''``) and with several
    overrides in one ``-P``, in a copy of the reproduced repository."""
    import mlflow
    from omegaconf import OmegaConf

    repo = tmp_path / "repo"
    shutil.copytree(reproduced[0], repo, symlinks=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_run = ["mlflow", "run", ".", "--env-manager", "local", "--experiment-name", "roadwork"]
    main = run([*mlflow_run, "-e", "main"], repo, tracking_uri=uri)
    assert "Running stage" not in main.stdout + main.stderr  # nothing to compute (bundle may be checked out)
    reproduced_split = (repo / "outputs/split/splits.csv").read_bytes()
    run([*mlflow_run, "-e", "split"], repo, tracking_uri=uri)
    assert (repo / "outputs/split/splits.csv").read_bytes() == reproduced_split  # the same parameters
    overrides = "split.seed=3 split.fractions.train=0.5 split.fractions.val_test=0.2"
    run([*mlflow_run, "-e", "split", "-P", f"overrides={overrides}"], repo, tracking_uri=uri)
    assert (repo / "outputs/split/splits.csv").read_bytes() != reproduced_split
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("roadwork")
    latest = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`roadwork.stage` = 'split'",
        order_by=["attributes.start_time DESC"],
    )
    committed_seed = OmegaConf.load(repo / "params.yaml").split.seed  # an earlier test's `dvc exp run -S`
    assert [r.data.params["split.seed"] for r in latest] == ["3", str(committed_seed)]
    assert latest[0].data.params["split.fractions.train"] == "0.5"
