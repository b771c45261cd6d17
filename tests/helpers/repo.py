"""A temporary copy of the repository to run the pipeline's commands in (the slow end-to-end tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# every stage of dvc.yaml, as `dvc repro` names them
STAGES = (
    "ingest",
    "dedupe",
    "split",
    "adapt",
    "embed@base",
    "train@base",
    "calibrate@base",
    "evaluate@base",
    "embed@adapted",
    "train@adapted",
    "calibrate@adapted",
    "evaluate@adapted",
    "bundle",
)


def run(
    cmd: list[str], cwd: Path, *, tracking_uri: str | None = None, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the venv's tools first on PATH; a failure fails the test with its output.

    MLflow goes to ``tracking_uri`` when given, else wherever the environment says.
    """
    env = {
        **os.environ,
        **({"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
        )
    return done


def copy_repository(dest: Path) -> Path:
    """The working tree as git sees it (tracked + untracked, not ignored), without data/ and outputs/, in a
    fresh git repository, with :func:`shrink_params` applied."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in listed:
        if (
            rel.startswith(("data/", "outputs/"))
            or rel in {"data.dvc", "dvc.lock"}
            or not (REPO / rel).is_file()
        ):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    run(["git", "init", "-q"], dest)
    shrink_params(dest / "params.yaml")
    return dest


def shrink_params(params_file: Path) -> None:
    """The offline tiny backbone and a short head training, so the whole pipeline runs in seconds."""
    from omegaconf import OmegaConf

    params = OmegaConf.load(params_file)
    params.backbone.id = params.dedupe.backbone = "tiny"
    params.embed.train_copies = 1
    params.train.max_epochs = 3
    params.evaluate.update({"renders_per_level": 2, "reward_streams": 200, "bootstrap_resamples": 200})
    params.adapt.update(
        {"max_steps": 2, "batch_size": 8, "local_crop_size": 48, "out_dim": 64, "head_hidden_dim": 32}
    )
    OmegaConf.save(params, params_file)
