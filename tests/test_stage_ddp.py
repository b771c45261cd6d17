"""``roadwork adapt`` and ``roadwork train`` with ``trainer.devices=2 trainer.strategy=ddp`` (CPU, gloo)
against the same stages in one process: equal results within float tolerance, files and MLflow runs
written once.

Lightning relaunches the command for rank 1, so the two-process runs are real subprocesses of the
``roadwork`` console script. Marked slow (about a minute on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.project import run

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DDP = ("trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu")
# Dropout draws differ per rank and class-weighted means do not average across ranks into the global one:
# without both, two processes compute the single process's gradients (up to float summation order).
HEAD = ("train.dropout=0", "train.class_weights=none")


def run_ddp(*argv: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["roadwork", *argv, *DDP], env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def stage_runs(stage: str) -> list:
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("roadwork")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`roadwork.stage` = '{stage}'")


def test_adapt_and_train_in_two_processes_equal_one_process(adapt_work: Path) -> None:
    run("adapt")
    single_adapt = json.loads(Path("outputs/adapt/metrics.json").read_text())
    single_history = pd.read_csv("outputs/adapt/history.csv")
    run("embed")
    run("train", *HEAD)
    single_train = json.loads(Path("outputs/train/base/metrics.json").read_text())
    single_curves = pd.read_csv("outputs/train/base/history.csv")
    single_logits = pd.read_csv("outputs/train/base/logits/val_select.csv")

    Path("outputs/adapt/metrics.json").unlink()
    log = run_ddp("adapt")
    assert "ExPLoRA steps" in log
    ddp_adapt = json.loads(Path("outputs/adapt/metrics.json").read_text())
    ddp_history = pd.read_csv("outputs/adapt/history.csv")
    assert ddp_adapt["steps"] == single_adapt["steps"] and ddp_adapt["merge_max_abs_diff"] <= 1e-4
    assert ddp_adapt["trainable_params"] == single_adapt["trainable_params"]
    for column in ("loss", "loss_dino", "loss_ibot", "agreement"):
        np.testing.assert_allclose(ddp_history[column], single_history[column], rtol=1e-4, atol=1e-5)
    assert len(stage_runs("adapt")) == 2  # rank 1 opened no run of its own

    Path("outputs/train/base/metrics.json").unlink()
    run_ddp("train", *HEAD)
    ddp_train = json.loads(Path("outputs/train/base/metrics.json").read_text())
    ddp_curves = pd.read_csv("outputs/train/base/history.csv")
    ddp_logits = pd.read_csv("outputs/train/base/logits/val_select.csv")
    # val_select is sharded across the ranks and gathered: the whole split, equal to one process's values
    assert ddp_train["best_epoch"] == single_train["best_epoch"]
    assert ddp_train["val_select_mcc"] == pytest.approx(single_train["val_select_mcc"], abs=1e-9)
    np.testing.assert_allclose(ddp_curves["val_mcc"], single_curves["val_mcc"], atol=1e-9)
    # the last incomplete batch of an epoch is padded with repeated rows on the short rank
    # (DistributedSampler's rule), so the weights drift apart by a few 1e-4 per epoch
    np.testing.assert_allclose(ddp_curves["val_loss"], single_curves["val_loss"], rtol=2e-3)
    np.testing.assert_allclose(ddp_logits["margin"], single_logits["margin"], rtol=5e-3, atol=5e-3)
    runs = stage_runs("train")
    assert len(runs) == 2
    ddp_run = max(runs, key=lambda r: r.info.start_time)
    assert ddp_run.data.params["trainer.devices"] == "2" and ddp_run.data.params["trainer.strategy"] == "ddp"
