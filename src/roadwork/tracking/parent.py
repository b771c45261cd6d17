"""The pipeline (parent) run of a stage run: its id, how it is found or made, its changed parameters and its
status, and the ending of stage runs a killed process left RUNNING."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

PIPELINE_TAG = "roadwork.pipeline_id"
KIND_TAG = "roadwork.run_kind"
DVC_STAGE_TAG = "roadwork.dvc_stage"
# on a pipeline run: the stages whose last run under it failed (space-separated); none -> FINISHED
FAILED_STAGES_TAG = "roadwork.failed_stages"
CHANGED_PARAMS_TAG = "roadwork.changed_params"
# on a stage run: the process that opened it, so a later run can tell whether it is still alive
HOST_TAG, PID_TAG = "roadwork.host", "roadwork.pid"


def pipeline_id(commit: str, data_ver: str, resolved_config: Mapping[str, Any]) -> str:
    if os.environ.get("ROADWORK_PIPELINE_ID"):
        return os.environ["ROADWORK_PIPELINE_ID"]
    blob = json.dumps({"commit": commit, "data": data_ver, "config": resolved_config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parent_run(client: Any, experiment_id: str, pipeline_id: str, name: str, tags: Mapping[str, str]) -> str:
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_id}' and tags.`{KIND_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    # left RUNNING: its stages set its status as they start and end (parent_outcome)
    return client.create_run(experiment_id, run_name=name, tags={**tags, KIND_TAG: "pipeline"}).info.run_id


def describe_parent(client: Any, parent_id: str, changed: Mapping[str, Any], listing: str) -> None:
    """Log the changed parameters on the pipeline run; only those it lacks, so a repeat never conflicts."""
    from mlflow.entities import Param

    logged = client.get_run(parent_id).data.params
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in changed.items() if k not in logged])
    client.set_tag(parent_id, CHANGED_PARAMS_TAG, listing)


def parent_outcome(client: Any, parent_id: str, dvc_stage: str, succeeded: bool) -> None:
    """Record how ``dvc_stage`` ended under the pipeline run and set the pipeline's status from all of them:
    FAILED while any stage's last run under it failed, else FINISHED (the end time is the last stage's)."""
    tags = client.get_run(parent_id).data.tags
    failed = set(tags.get(FAILED_STAGES_TAG, "").split())
    failed = failed - {dvc_stage} if succeeded else failed | {dvc_stage}
    client.set_tag(parent_id, FAILED_STAGES_TAG, " ".join(sorted(failed)))
    client.set_terminated(parent_id, "FAILED" if failed else "FINISHED")


def _opener_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that opened a stage run is gone. Only a process on this host can be checked; a
    run from another host (or from before runs recorded their process) counts as gone: ending a live one
    is undone when it ends, as it sets its own status then."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return True
    try:
        os.kill(int(tags[PID_TAG]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. another user's live process
        return False
    return False


def end_abandoned_runs(client: Any, experiment_id: str, dvc_stage: str, keep: str) -> None:
    """End as KILLED the runs of ``dvc_stage`` left RUNNING by a killed process, and mark their pipeline
    runs FAILED (until the stage succeeds under them)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{DVC_STAGE_TAG}` = '{dvc_stage}' and tags.`{KIND_TAG}` = 'stage' "
            "and attributes.status = 'RUNNING'"
        ),
    )
    for run in runs:
        if run.info.run_id == keep or not _opener_gone(run.data.tags):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        print(
            f"roadwork: ended run {run.info.run_id} of {dvc_stage} as KILLED (its process is gone)",
            file=sys.stderr,
        )
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).data.tags.get(KIND_TAG) == "pipeline":
            parent_outcome(client, parent, dvc_stage, succeeded=False)
