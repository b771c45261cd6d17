"""``kill -9`` during ``dvc repro`` of adapt and of train, then ``dvc repro`` again: the stage resumes from
its last checkpoint (it says so) and ends with the outputs of an uninterrupted run, byte for byte on CPU.

The checkpoints live in ``.cache/checkpoints/`` (outside every DVC ``outs``, which DVC deletes before a stage
runs). The uninterrupted reference is the same stage forced to run again with the checkpoints removed; DVC's
own md5s of the outputs (``dvc.lock``) are the comparison. Marked slow (about two minutes on 2 cores).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers.repo import BIN, copy_repository, run
from roadwork.adapt.explora import CHECKPOINT_FILE
from roadwork.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow


def locked_outs(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}


def kill_when(repo: Path, cmd: list[str], ready: callable, timeout: float = 240) -> None:  # type: ignore[valid-type]
    """Start ``cmd`` in its own process group and SIGKILL the whole group as soon as ``ready()`` holds."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"{cmd} ended (rc {process.returncode}) before it could be killed"
            assert time.monotonic() < deadline, f"{cmd}: no checkpoint within {timeout} s"
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def adapt_checkpoint_step(repo: Path) -> int:
    paths = (repo / ".cache/checkpoints/adapt").glob(f"*/{CHECKPOINT_FILE}")
    return max((int(read_checkpoint(p)["step"]) for p in paths), default=0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from omegaconf import OmegaConf

    repo = copy_repository(tmp_path_factory.mktemp("repo"))
    params = OmegaConf.load(repo / "params.yaml")
    # long enough to be killed in the middle: several checkpoints per run
    params.adapt.update({"epochs": 3, "max_steps": 8, "checkpoint_every_steps": 1})
    params.train.update({"max_epochs": 60, "early_stopping_patience": 60, "batch_size": 8})
    OmegaConf.save(params, repo / "params.yaml")
    run(["roadwork", "synth", "data", "--n", "60", "--seed", "2", "--quiet"], repo)
    run(["dvc", "repro", "split"], repo)
    return repo


def test_killed_adapt_resumes_under_dvc_repro_and_matches_an_uninterrupted_run(repo: Path) -> None:
    kill_when(repo, ["dvc", "repro", "adapt"], lambda: adapt_checkpoint_step(repo) >= 3)
    killed_at = adapt_checkpoint_step(repo)
    assert 3 <= killed_at < 8
    resumed = run(["dvc", "repro", "adapt"], repo)
    assert f"resumed at step {killed_at}" in resumed.stdout + resumed.stderr
    after_resume = locked_outs(repo, "adapt")
    history = (repo / "outputs/adapt/history.csv").read_text()
    assert len(history.splitlines()) == 1 + 8  # every step once, the replayed ones included

    shutil.rmtree(repo / ".cache/checkpoints/adapt")
    fresh = run(["dvc", "repro", "--force", "--single-item", "adapt"], repo)
    assert "resumed" not in fresh.stdout + fresh.stderr
    assert locked_outs(repo, "adapt") == after_resume
    assert (repo / "outputs/adapt/history.csv").read_text() == history


def test_killed_train_resumes_under_dvc_repro_and_matches_an_uninterrupted_run(repo: Path) -> None:
    run(["dvc", "repro", "embed@base"], repo)
    checkpoint = repo / ".cache/checkpoints/train@base/head-checkpoint.safetensors"
    kill_when(repo, ["dvc", "repro", "train@base"], checkpoint.is_file)
    resumed = run(["dvc", "repro", "train@base"], repo)
    assert "resumed after epoch" in resumed.stdout + resumed.stderr
    after_resume = locked_outs(repo, "train@base")
    metrics = (repo / "outputs/train/base/metrics.json").read_text()

    shutil.rmtree(repo / ".cache/checkpoints/train@base")
    fresh = run(["dvc", "repro", "--force", "--single-item", "train@base"], repo)
    assert "resumed" not in fresh.stdout + fresh.stderr
    assert locked_outs(repo, "train@base") == after_resume
    assert (repo / "outputs/train/base/metrics.json").read_text() == metrics
