"""Where a run comes from: the repository root, the git commit, the data version, the source time, the
experiment a pipeline run is named after and the parameters that differ from ``params.yaml`` as committed."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml


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
