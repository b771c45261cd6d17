"""One stage execution's MLflow run, from opening (nested under its pipeline run) to its end status."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roadwork.distributed import is_rank_zero
from roadwork.tracking.handle import OffRankRun, StageRun, TrackingLostError
from roadwork.tracking.lineage import changed_params, data_version, experiment_label, git_state, repo_root
from roadwork.tracking.parent import (
    DVC_STAGE_TAG,
    HOST_TAG,
    KIND_TAG,
    PID_TAG,
    PIPELINE_TAG,
    describe_parent,
    end_abandoned_runs,
    parent_outcome,
    parent_run,
    pipeline_id,
)
from roadwork.tracking.store import check_reachable, ensure_experiment, redact_uri, tracking_uri


def _on_start(
    handle: StageRun, client: Any, dvc_stage: str, *, own_parent: bool, changed: tuple[dict[str, Any], str]
) -> None:
    """What a starting stage does to the runs around its own: end its runs that a killed process left
    RUNNING, mark its pipeline run RUNNING (unless ``mlflow run``'s launcher owns it) and log on that the
    parameters that differ from ``params.yaml``'s committed values (:func:`changed_params`)."""
    handle.call(
        "end abandoned runs",
        lambda: end_abandoned_runs(client, handle.experiment_id, dvc_stage, handle.run_id),
    )
    if own_parent:
        handle.call("reopen pipeline run", lambda: client.update_run(handle.parent_id, status="RUNNING"))
    handle.call("describe pipeline run", lambda: describe_parent(client, handle.parent_id, *changed))


def _source_tags(root: Path, resolved_config: Mapping[str, Any]) -> dict[str, str]:
    """The tags a stage run and its pipeline run share: git commit, dirty flag, data version, pipeline id."""
    commit, dirty = git_state(root)
    data_ver = data_version(root)
    return {
        "roadwork.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "roadwork.git_dirty": str(dirty).lower(),
        "roadwork.data_version": data_ver,
        PIPELINE_TAG: pipeline_id(commit, data_ver, resolved_config),
    }


def _stage_tags(
    common: Mapping[str, str],
    stage: str,
    dvc_stage: str,
    variant: str | None,
    overrides: tuple[str, ...],
    parent: str,
) -> dict[str, str]:
    return {
        **common,
        KIND_TAG: "stage",
        "roadwork.stage": stage,
        DVC_STAGE_TAG: dvc_stage,
        "roadwork.variant": variant or "",
        "roadwork.overrides": " ".join(overrides),
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        # The tag the UI nests by; start_run(parent_run_id=...) would insist the parent is still active.
        "mlflow.parentRunId": parent,
    }


def _on_end(handle: StageRun, client: Any, dvc_stage: str, status: str, *, own_parent: bool) -> None:
    """End the stage run with ``status`` and (unless ``mlflow run``'s launcher owns it) record the outcome on
    the pipeline run."""
    import mlflow

    handle.call("end_run", lambda: client.set_terminated(handle.run_id, status))
    # end_run pops the local active run first; its own server call may fail again and adds nothing
    with contextlib.suppress(Exception):
        mlflow.end_run(status=status)
    if own_parent:
        handle.call(
            "pipeline status",
            lambda: parent_outcome(client, handle.parent_id, dvc_stage, status == "FINISHED"),
        )


def _tracking_lost(
    stage: str, variant: str | None, dvc_stage: str, handle: StageRun, uri: str
) -> TrackingLostError:
    from roadwork.layout import output_dir

    where = output_dir(stage, variant)
    return TrackingLostError(
        f"stage {dvc_stage} finished and wrote {where}, but {len(handle.failures)} MLflow call(s) to "
        f"{redact_uri(uri)} failed (first: {handle.failures[0]}). Nothing is lost: once the server is "
        f"back, run `roadwork relog {stage}{f' --variant {variant}' if variant else ''}` to log the "
        f"results again, then `dvc commit {dvc_stage}` to record the outputs without recomputing."
    )


@contextmanager
def stage_run(
    stage: str,
    *,
    params: Mapping[str, Any],
    resolved_config: Mapping[str, Any],
    experiment: str = "roadwork",
    variant: str | None = None,
    overrides: tuple[str, ...] = (),
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution (nested under its pipeline's parent run).

    ``params`` are the parameters to log on the stage's run, flattened to ``section.key``;
    ``resolved_config`` is the whole configuration: it feeds the pipeline id and the parent's changed
    parameters.
    """
    if not is_rank_zero():
        yield OffRankRun(run_id="", experiment_id="")
        return
    import mlflow

    root = repo_root()
    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    common = _source_tags(root, resolved_config)
    dvc_stage = f"{stage}@{variant}" if variant else stage
    experiment_id = ensure_experiment(client, experiment, root, uri)
    # Under `mlflow run` the launcher's run is the parent (and the launcher sets its status); left in the
    # environment, start_run would resume it.
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    name = f"{experiment_label(root)}@{common['roadwork.git_commit'][:7]}"
    parent = launcher or parent_run(client, experiment_id, common[PIPELINE_TAG], name, common)
    tags = _stage_tags(common, stage, dvc_stage, variant, overrides, parent)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=dvc_stage, tags=tags)
    handle = StageRun(run_id=run.info.run_id, experiment_id=experiment_id, parent_id=parent)
    _on_start(
        handle, client, dvc_stage, own_parent=not launcher, changed=changed_params(root, resolved_config)
    )
    handle.call("log_params", lambda: mlflow.log_params({k: str(v) for k, v in params.items()}))
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        _on_end(handle, client, dvc_stage, status, own_parent=not launcher)
    if handle.failures:
        raise _tracking_lost(stage, variant, dvc_stage, handle, uri)
