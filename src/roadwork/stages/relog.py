"""``roadwork relog STAGE``: log a finished stage's outputs to MLflow again, after a tracking outage.

A stage whose MLflow logging failed still writes its outputs and exits non-zero saying so. Once the server
is back, this opens a new run for the stage (tagged ``roadwork.relogged``, with every parameter of the
current ``params.yaml``), logs its figures (``report.json``, which holds them all, where the stage writes
one; else ``metrics.json``) and its small output files as artifacts, and nothing is recomputed.
``dvc commit <stage>`` then records the outputs in ``dvc.lock``.
"""

from __future__ import annotations

import json
from pathlib import Path

from roadwork.config import RoadworkConfig, flatten, to_dict
from roadwork.layout import METRICS_JSON, REPORT_JSON, output_dir
from roadwork.tracking import stage_run

MAX_ARTIFACT_BYTES = 20_000_000  # features and image copies are DVC's to keep, not MLflow's


def main(cfg: RoadworkConfig, stage: str, variant: str | None) -> int:
    directory = output_dir(stage, variant)
    metrics_file = directory / METRICS_JSON
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file}: missing; the stage never finished, so run it instead.")
    report = directory / REPORT_JSON
    metrics = json.loads((report if report.is_file() else metrics_file).read_text())
    resolved = to_dict(cfg)
    logged = 0
    with stage_run(
        stage,
        params=flatten(resolved),
        resolved_config=resolved,
        experiment=cfg.tracking.experiment,
        variant=variant,
        overrides=("relog",),
    ) as run:
        run.set_tags({"roadwork.relogged": "true"})
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            if path.stat().st_size <= MAX_ARTIFACT_BYTES and path.suffix != ".npy":
                parent = path.parent.relative_to(directory).as_posix()
                run.log_artifact(path, None if parent == "." else parent)
                logged += 1
    print(f"relog: {stage}{f'@{variant}' if variant else ''}: {len(metrics)} metrics, {logged} files logged")
    if stage == "bundle":
        _complete_registration(cfg, directory / "model")
    return 0


def _complete_registration(cfg: RoadworkConfig, model_dir: Path) -> None:
    """Complete the version a killed bundle registered for ``model_dir`` (its alias set last)."""
    import mlflow

    from roadwork.deploy.registry import CHALLENGER, outputs_hash, repair_registrations

    name = cfg.deploy.registered_model
    version = repair_registrations(mlflow.MlflowClient(), name, outputs_hash(model_dir), CHALLENGER)
    if version is None:
        print(f"relog: no pending version of '{name}' holds {model_dir}; nothing to complete.")
    else:
        print(f"relog: completed '{name}' version {version}; '{CHALLENGER}' points at it.")
