"""MLflow tracking: one run per stage execution, grouped under one parent run per pipeline version.

Every stage run carries the tags that make it traceable: git commit (and whether the tree was dirty),
data version (the md5 recorded in ``data.dvc``), DVC stage name, variant, and the stage's parameters as
MLflow params (``section.key``, so they never collide with keys that autologging writes).

The runs of one ``dvc repro`` share a *pipeline id*: a hash of the git commit, the data version and the
whole resolved configuration, so every stage that one reproduction executes lands under the same parent
run (``ROADWORK_PIPELINE_ID`` overrides it, for example to group an ``mlflow run`` invocation). The parent
is what a user compares pipelines by: it is named ``<experiment>@<short commit>`` (the DVC experiment under
``dvc exp run``, else the git branch), carries as params the resolved parameters that differ from
``params.yaml`` as committed (and a tag listing them), the headline figures stages log to it, and a status
that follows its stages: RUNNING while one runs, FAILED while any stage that ran under it last failed,
FINISHED otherwise. Runs are opened by separate stage processes, so each stage updates the parent when it
starts and ends; a stage run left RUNNING by a killed process is ended as KILLED by the next run of that
stage, which marks its parent FAILED until the stage succeeds.

The tracking store defaults to ``sqlite:///<repo root>/mlflow.db`` (anchored on ``DVC_ROOT`` inside DVC
stages); ``MLFLOW_TRACKING_URI`` points it anywhere else. ``mlflow`` is imported lazily: it costs seconds.

In a multi-process run (``trainer.devices > 1``: Lightning's ``ddp`` launcher, torchrun or SLURM start the
stage once per rank) only global rank 0 talks to MLflow; the other ranks get an :class:`OffRankRun` whose
calls do nothing.
"""

from roadwork.tracking.handle import OffRankRun, StageRun, TrackingLostError
from roadwork.tracking.lineage import (
    changed_params,
    data_version,
    experiment_label,
    git_state,
    repo_root,
    source_time,
)
from roadwork.tracking.parent import (
    CHANGED_PARAMS_TAG,
    DVC_STAGE_TAG,
    FAILED_STAGES_TAG,
    HOST_TAG,
    KIND_TAG,
    PID_TAG,
    PIPELINE_TAG,
)
from roadwork.tracking.run import stage_run
from roadwork.tracking.store import (
    TrackingUnavailableError,
    check_reachable,
    limit_http_retries,
    redact_uri,
    tracking_uri,
)

__all__ = [
    "CHANGED_PARAMS_TAG",
    "DVC_STAGE_TAG",
    "FAILED_STAGES_TAG",
    "HOST_TAG",
    "KIND_TAG",
    "PID_TAG",
    "PIPELINE_TAG",
    "OffRankRun",
    "StageRun",
    "TrackingLostError",
    "TrackingUnavailableError",
    "changed_params",
    "check_reachable",
    "data_version",
    "experiment_label",
    "git_state",
    "limit_http_retries",
    "redact_uri",
    "repo_root",
    "source_time",
    "stage_run",
    "tracking_uri",
]
