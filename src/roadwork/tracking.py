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

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from roadwork.distributed import is_rank_zero

PIPELINE_TAG = "roadwork.pipeline_id"
KIND_TAG = "roadwork.run_kind"
DVC_STAGE_TAG = "roadwork.dvc_stage"
# on a pipeline run: the stages whose last run under it failed (space-separated); none -> FINISHED
FAILED_STAGES_TAG = "roadwork.failed_stages"
CHANGED_PARAMS_TAG = "roadwork.changed_params"
# on a stage run: the process that opened it, so a later run can tell whether it is still alive
HOST_TAG, PID_TAG = "roadwork.host", "roadwork.pid"


class TrackingUnavailableError(RuntimeError):
    """The tracking server cannot be reached; raised before any heavy work starts."""


def repo_root() -> Path:
    """``DVC_ROOT`` when DVC runs the stage, else the enclosing git work tree, else the working directory."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        return Path(top)
    except (OSError, subprocess.SubprocessError):
        return Path.cwd().resolve()


def tracking_uri(root: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """Drop credentials (``user:password@``) from a URI so it can be printed, tagged or logged."""
    return re.sub(r"(?<=://)[^/@]+@", "***@", uri)


def git_state(root: Path) -> tuple[str, bool]:
    """(commit sha or 'unknown', dirty flag ignoring untracked files)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


# what a built model depends on; dvc.lock is left out because it is committed after the run that wrote it
_SOURCE_PATHS = ("src", "params.yaml", "dvc.yaml", "data.dvc")


def source_time(root: Path) -> datetime:
    """When the version being built was made, so that the same commit builds the same bytes.

    ``SOURCE_DATE_EPOCH`` (the reproducible-builds convention, seconds since the epoch) when set; else the
    committer time of the last commit that changed the pipeline's inputs (:data:`_SOURCE_PATHS`); else, with
    no git history, the current time. Always UTC, whole seconds.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        try:
            epoch = subprocess.run(
                ["git", "log", "-1", "--format=%ct", "--", *_SOURCE_PATHS],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            epoch = ""
    if not epoch.isdigit():
        return datetime.now(timezone.utc).replace(microsecond=0)
    return datetime.fromtimestamp(int(epoch), timezone.utc)


def data_version(root: Path, dvc_file: str = "data.dvc") -> str:
    """The md5 DVC recorded for the data set in ``data.dvc``, or 'untracked' when there is none."""
    path = root / dvc_file
    if not path.is_file():
        return "untracked"
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "untracked"))


class TrackingLostError(RuntimeError):
    """Logging failed during a stage although its outputs were written; the message says how to re-log."""


def _retry_settings() -> tuple[int, float]:
    """(attempts, first back-off in seconds) from ``ROADWORK_TRACKING_RETRIES`` / ``..._BACKOFF``."""
    return int(os.environ.get("ROADWORK_TRACKING_RETRIES", "4")), float(
        os.environ.get("ROADWORK_TRACKING_BACKOFF", "1.0")
    )


@dataclass
class StageRun:
    """Handle a stage uses to log to its MLflow run.

    Every call is retried with exponential back-off (``ROADWORK_TRACKING_RETRIES`` attempts, first wait
    ``ROADWORK_TRACKING_BACKOFF`` seconds). A call that still fails is recorded in ``failures`` instead of
    raising, so a lost tracking server never costs the stage its work; once one call has failed, later
    calls try once only. :func:`stage_run` turns recorded failures into :class:`TrackingLostError` after
    the stage has written its outputs.
    """

    run_id: str
    experiment_id: str
    failures: list[str] = field(default_factory=list)
    parent_id: str = ""

    def call(self, what: str, fn: Any) -> None:
        retries, backoff = _retry_settings()
        attempts = 1 if self.failures else max(1, retries)
        for attempt in range(attempts):
            try:
                fn()
                return
            except Exception as exc:  # any transport or server error is a tracking outage
                last = exc
                if attempt + 1 < attempts:
                    time.sleep(backoff * 2**attempt)
        message = f"{what}: {type(last).__name__}: {redact_uri(str(last))[:300]}"
        self.failures.append(message)
        print(f"roadwork: MLflow logging failed, continuing without it ({message})", file=sys.stderr)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.call("log_metrics", lambda: mlflow.log_metrics(clean, step=step, run_id=self.run_id))

    def log_parent_metrics(self, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` on the pipeline's parent run: the headline figures pipelines are compared by."""
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.call("log_metrics (pipeline run)", lambda: mlflow.log_metrics(clean, run_id=self.parent_id))

    def set_parent_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for key, value in tags.items():
            self.call(
                f"set_tag {key} (pipeline run)", lambda k=key, v=value: client.set_tag(self.parent_id, k, v)
            )

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            self.call(
                f"log_artifacts {path}",
                lambda: mlflow.log_artifacts(str(path), artifact_path=artifact_path, run_id=self.run_id),
            )
        else:
            self.call(
                f"log_artifact {path}",
                lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.run_id),
            )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        for key, value in tags.items():
            self.call(f"set_tag {key}", lambda k=key, v=value: client.set_tag(self.run_id, k, v))

    def lightning_logger(self) -> Any:
        """Lightning's MLFlowLogger on this run, with the same retry-and-record behaviour."""
        import mlflow
        from lightning.pytorch.loggers import MLFlowLogger

        run = self

        class _ResilientMLFlowLogger(MLFlowLogger):
            def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
                run.call("epoch metrics", lambda: MLFlowLogger.log_metrics(self, metrics, step))

            def log_hyperparams(self, params: Any) -> None:
                run.call("hyperparameters", lambda: MLFlowLogger.log_hyperparams(self, params))

            def finalize(self, status: str = "success") -> None:
                """The stage owns the run and ends it."""

        return _ResilientMLFlowLogger(tracking_uri=mlflow.get_tracking_uri(), run_id=self.run_id)

    def loggers(self) -> list[Any]:
        """The Lightning loggers a stage hands to its trainer: :meth:`lightning_logger` on rank 0."""
        return [self.lightning_logger()]


class OffRankRun(StageRun):
    """The run handle of a rank other than 0: every call is a no-op, so MLflow sees one writer."""

    def call(self, what: str, fn: Any) -> None:
        return None

    def lightning_logger(self) -> Any:
        return None

    def loggers(self) -> list[Any]:
        return []


def _pipeline_id(commit: str, data_ver: str, resolved_config: Mapping[str, Any]) -> str:
    if os.environ.get("ROADWORK_PIPELINE_ID"):
        return os.environ["ROADWORK_PIPELINE_ID"]
    blob = json.dumps({"commit": commit, "data": data_ver, "config": resolved_config}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ensure_experiment(client: Any, name: str, root: Path, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A file-store-free local setup keeps artifacts beside the database instead of in the CWD.
    location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return client.create_experiment(name, artifact_location=location)


def experiment_label(root: Path) -> str:
    """What a pipeline run is named after: the DVC experiment (``DVC_EXP_NAME``, which ``dvc exp run`` sets),
    else the git branch ('detached' on a detached HEAD, 'no-git' without a repository)."""
    if os.environ.get("DVC_EXP_NAME"):
        return os.environ["DVC_EXP_NAME"]
    try:
        branch = subprocess.run(
            ["git", "symbolic-ref", "--short", "-q", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "no-git"
    if branch.returncode == 0:
        return branch.stdout.strip()
    # symbolic-ref exits 1 on a detached HEAD, 128 outside a repository
    return "detached" if branch.returncode == 1 else "no-git"


def changed_params(root: Path, resolved_config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The resolved parameters (``section.key``) whose values differ from ``params.yaml`` as committed at
    HEAD (both through the schema, so defaults fill the same keys), and the text of the tag listing them:
    their names, 'none', or why there is nothing to compare with."""
    from roadwork.atomic import atomic_write_text
    from roadwork.config import flatten, load_config, to_dict

    try:
        text = subprocess.run(
            ["git", "show", "HEAD:params.yaml"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}, "unknown: no committed params.yaml to compare with"
    with tempfile.TemporaryDirectory() as folder:
        path = atomic_write_text(Path(folder) / "params.yaml", text, durable=False)
        try:
            committed = flatten(to_dict(load_config(path)))
        except ValueError as exc:  # ConfigError, or a value the schema's own checks refuse
            reason = str(exc).replace(str(path), "HEAD:params.yaml")
            return {}, f"unknown: the committed params.yaml does not load ({reason})"[:5000]
    changed = {k: v for k, v in flatten(resolved_config).items() if k not in committed or committed[k] != v}
    return changed, (" ".join(sorted(changed)) or "none")[:5000]


def _parent_run(client: Any, experiment_id: str, pipeline_id: str, name: str, tags: Mapping[str, str]) -> str:
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_id}' and tags.`{KIND_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    # left RUNNING: its stages set its status as they start and end (_parent_outcome)
    return client.create_run(experiment_id, run_name=name, tags={**tags, KIND_TAG: "pipeline"}).info.run_id


def _describe_parent(client: Any, parent_id: str, changed: Mapping[str, Any], listing: str) -> None:
    """Log the changed parameters on the pipeline run; only those it lacks, so a repeat never conflicts."""
    from mlflow.entities import Param

    logged = client.get_run(parent_id).data.params
    client.log_batch(parent_id, params=[Param(k, str(v)) for k, v in changed.items() if k not in logged])
    client.set_tag(parent_id, CHANGED_PARAMS_TAG, listing)


def _parent_outcome(client: Any, parent_id: str, dvc_stage: str, succeeded: bool) -> None:
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


def _end_abandoned_runs(client: Any, experiment_id: str, dvc_stage: str, keep: str) -> None:
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
            _parent_outcome(client, parent, dvc_stage, succeeded=False)


def limit_http_retries() -> None:
    """Bound MLflow's own HTTP retries (7 with back-off, minutes, by default): roadwork retries per call.

    Only sets defaults; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` in the environment win.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def check_reachable(uri: str) -> None:
    """Fail fast, naming the (redacted) URI, when the tracking store does not answer."""
    import mlflow

    limit_http_retries()
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingUnavailableError(
            f"MLflow tracking at {redact_uri(uri)} is unreachable "
            f"({type(exc).__name__}: {redact_uri(str(exc))[:500]}). "
            "Start the server or unset MLFLOW_TRACKING_URI to use the local sqlite store."
        ) from None


def _on_start(
    handle: StageRun, client: Any, dvc_stage: str, *, own_parent: bool, changed: tuple[dict[str, Any], str]
) -> None:
    """What a starting stage does to the runs around its own: end its runs that a killed process left
    RUNNING, mark its pipeline run RUNNING (unless ``mlflow run``'s launcher owns it) and log on that the
    parameters that differ from ``params.yaml``'s committed values (:func:`changed_params`)."""
    handle.call(
        "end abandoned runs",
        lambda: _end_abandoned_runs(client, handle.experiment_id, dvc_stage, handle.run_id),
    )
    if own_parent:
        handle.call("reopen pipeline run", lambda: client.update_run(handle.parent_id, status="RUNNING"))
    handle.call("describe pipeline run", lambda: _describe_parent(client, handle.parent_id, *changed))


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
    commit, dirty = git_state(root)
    data_ver = data_version(root)
    pipeline_id = _pipeline_id(commit, data_ver, resolved_config)
    dvc_stage = f"{stage}@{variant}" if variant else stage
    common = {
        "roadwork.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "roadwork.git_dirty": str(dirty).lower(),
        "roadwork.data_version": data_ver,
        PIPELINE_TAG: pipeline_id,
    }
    experiment_id = _ensure_experiment(client, experiment, root, uri)
    # Under `mlflow run` the launcher's run is the parent (and the launcher sets its status); left in the
    # environment, start_run would resume it.
    launcher = os.environ.pop("MLFLOW_RUN_ID", None)
    name = f"{experiment_label(root)}@{commit[:7]}"
    parent = launcher or _parent_run(client, experiment_id, pipeline_id, name, common)
    tags = {
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
        handle.call("end_run", lambda: client.set_terminated(handle.run_id, status))
        # end_run pops the local active run first; its own server call may fail again and adds nothing
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)
        if not launcher:
            handle.call(
                "pipeline status", lambda: _parent_outcome(client, parent, dvc_stage, status == "FINISHED")
            )
    if handle.failures:
        where = f"outputs/{stage}" + (f"/{variant}" if variant else "")
        raise TrackingLostError(
            f"stage {dvc_stage} finished and wrote {where}, but {len(handle.failures)} MLflow call(s) to "
            f"{redact_uri(uri)} failed (first: {handle.failures[0]}). Nothing is lost: once the server is "
            f"back, run `roadwork relog {stage}{f' --variant {variant}' if variant else ''}` to log the "
            f"results again, then `dvc commit {dvc_stage}` to record the outputs without recomputing."
        )
