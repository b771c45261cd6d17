"""A tiny deployable model and the steps to save, register and serve it (the deploy and serving tests)."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from roadwork.deploy.predictor import Predictor, PredictorSpec
from roadwork.models.backbone import load_backbone
from roadwork.models.head import HeadModel, save_head
from roadwork.policy import fit_policy
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_module import HISTORY_COLUMNS


def jpeg(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


HEAD_CFG = HeadTrainConfig(dropout=0.0, topk=1)


def make_predictor(seed: int = 0, **spec) -> Predictor:
    backbone = load_backbone("tiny")
    torch.manual_seed(seed)
    head = HeadModel.from_config(HEAD_CFG, feature_dim=backbone.feature_dim, num_views=1).eval()
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    policy = fit_policy(rng.normal(size=200) + y, y, conformal_alpha=0.2, split_hash="x" * 64)
    return Predictor(backbone, head, policy, PredictorSpec(**spec))


def save_model(predictor: Predictor, folder: Path) -> Path:
    head_dir = folder / "head"
    history = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    save_head(
        head_dir, predictor.head, HEAD_CFG, history=history, best_epoch=0, best_metric=0.0, optimizer_steps=0
    )
    predictor.save(folder / "model", head_dir=head_dir)
    return folder / "model"


def register(folder: Path, name: str = "roadwork-classifier") -> str:
    import mlflow

    from roadwork.deploy.registry import CHALLENGER, finish_registration, log_pyfunc

    mlflow.set_experiment("deploy-tests")
    with mlflow.start_run():
        info = log_pyfunc(folder, registered_model_name=name, tags={"roadwork.variant": "base"})
    version = str(info.registered_model_version)
    finish_registration(mlflow.MlflowClient(), name, version, CHALLENGER)
    return version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
