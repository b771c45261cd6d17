"""The head a pipeline ships: its module, its saved format and its forward pass, with torch alone.

Serving (the pyfunc, ``roadwork predict``) and the exports import this module; training
(:mod:`roadwork.train.head`) builds on it. Nothing here imports Lightning or DVC.

The head emits two logits ``(z0, z1)`` per image so that a linear head on the feature vector maps onto
Hugging Face's ``*ForImageClassification`` classifier; the *margin* ``z = z1 - z0`` is what calibration
consumes, and ``z > 0`` is the decision at probability 0.5. Label 1 = roadwork.

Views: ``V == 1`` (global view only) or ``V == 10`` (global view then a 3x3 grid of tiles); any ``V >= 1``
works. An image's views form a bag (multiple-instance learning), pooled by ``HeadTrainConfig.aggregation``:

* ``topk_mean``: the head scores every view; the image's logits are the mean of the logit vectors of the
  ``K = min(topk, V)`` views with the largest margins. The mean is linear, so the image margin is exactly
  the mean of the top-K view margins (and does not depend on how ties between views are broken).
* ``attention``: gated attention pooling (Ilse et al., 2018) of the view features, then the head:
  ``a_v = softmax_v(w^T (tanh(U_1 h_v) * sigmoid(U_2 h_v)))`` and ``h = sum_v a_v h_v``.

With ``V == 1`` both reduce to the identity (the head on the single view) and build the same parameters,
so the aggregation fields are then inactive; :meth:`HeadTrainConfig.inactive_fields` lists them and
``head.json`` records them.

A saved head is a folder: ``head.safetensors`` (weights), ``head.json`` (config, feature dim, views, best
epoch and metric) and ``history.csv`` (one row per training epoch). No pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn

from roadwork.atomic import atomic_write, atomic_write_csv, atomic_write_json
from roadwork.train.head_config import HeadTrainConfig
from roadwork.vocab import AGGREGATIONS, FEATURE_TRANSFORMS, HEADS

if TYPE_CHECKING:
    import pandas as pd

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
HISTORY = "history.csv"
HEAD_FORMAT_VERSION = 1
ID2LABEL = {0: "None", 1: "Roadwork"}


class GatedAttentionPool(nn.Module):
    """Gated attention pooling over views (Ilse et al., 2018): ``[B, V, D] -> [B, D]``.

    ``a_v = softmax_v(w^T (tanh(U_1 h_v + b_1) * sigmoid(U_2 h_v + b_2)))``, output ``sum_v a_v h_v``.
    """

    def __init__(self, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.value = nn.Linear(feature_dim, hidden)
        self.gate = nn.Linear(feature_dim, hidden)
        # A bias on the score would cancel in the softmax.
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B, V]``, non-negative and summing to 1 over views."""
        scores = self.score(torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features)))
        return torch.softmax(scores.squeeze(-1).float(), dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (self.weights(features).unsqueeze(-1) * features).sum(dim=1)


class SignedSqrtL2(nn.Module):
    """``sign(x) * sqrt(|x|)``, then each vector scaled to unit L2 norm (power normalisation; a zero vector
    stays zero): it damps the few large activations that dominate pooled CNN features."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rooted = features.sign() * features.abs().sqrt()
        return nn.functional.normalize(rooted, p=2.0, dim=-1, eps=1e-12)


class HeadModel(nn.Module):
    """The trainable head plus its view aggregation: ``[B, V, D]`` features -> ``[B, 2]`` logits.

    ``self.classifier`` is the per-view head (its last layer is ``Linear(., 2)``); ``self.pool`` exists only
    for ``aggregation == "attention"`` with ``V > 1``.
    """

    def __init__(
        self,
        *,
        feature_dim: int,
        num_views: int,
        head: str,
        mlp_hidden: int,
        dropout: float,
        aggregation: str,
        topk: int,
        attention_hidden: int,
        feature_transform: str = "none",
    ) -> None:
        super().__init__()
        if feature_dim < 1 or num_views < 1:
            raise ValueError(f"feature_dim and num_views must be >= 1, got {feature_dim} and {num_views}.")
        for name, value, allowed in (
            ("head", head, HEADS),
            ("feature_transform", feature_transform, FEATURE_TRANSFORMS),
            ("aggregation", aggregation, AGGREGATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
        self.feature_dim = feature_dim
        self.num_views = num_views
        self.aggregation = aggregation
        self.topk = min(topk, num_views)
        if head == "linear":
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 2))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(feature_dim, mlp_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_hidden, 2)
            )
        if feature_transform == "sqrt_l2":
            self.classifier.insert(0, SignedSqrtL2())
        # Built after the classifier so that, for one seed, the classifier's initial weights do not depend
        # on the aggregation (with V == 1 both aggregations then train identical models).
        self.pool = (
            GatedAttentionPool(feature_dim, attention_hidden)
            if aggregation == "attention" and num_views > 1
            else None
        )

    @classmethod
    def from_config(cls, cfg: HeadTrainConfig, *, feature_dim: int, num_views: int) -> HeadModel:
        """The architecture ``cfg`` describes, for features of ``num_views`` views of ``feature_dim`` dims."""
        return cls(
            feature_dim=feature_dim,
            num_views=num_views,
            head=cfg.head,
            mlp_hidden=cfg.mlp_hidden,
            dropout=cfg.dropout,
            aggregation=cfg.aggregation,
            topk=cfg.topk,
            attention_hidden=cfg.attention_hidden,
            feature_transform=cfg.feature_transform,
        )

    def view_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-view logits ``[B, V, 2]`` of the classifier applied to each view on its own."""
        return self.classifier(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.num_views == 1:
            return self.classifier(features[:, 0])
        if self.pool is not None:
            return self.classifier(self.pool(features))
        per_view = self.view_logits(features)
        top = (per_view[..., 1] - per_view[..., 0]).topk(self.topk, dim=1).indices
        return per_view.gather(1, top.unsqueeze(-1).expand(-1, -1, 2)).mean(dim=1)


def check_features(features: np.ndarray, model: HeadModel, name: str = "features") -> NDArray[np.float32]:
    if not isinstance(features, np.ndarray) or not np.issubdtype(features.dtype, np.floating):
        raise TypeError(f"{name} must be a floating numpy array [N, V, D], got {type(features).__name__}.")
    expected = (model.num_views, model.feature_dim)
    if features.ndim != 3 or features.shape[1:] != expected:
        raise ValueError(
            f"{name} must have shape [N, {expected[0]}, {expected[1]}] (the views and dims the head was "
            f"trained on), got {features.shape}."
        )
    if not np.isfinite(features).all():
        raise ValueError(f"{name} has non-finite values; re-embed those images.")
    return np.ascontiguousarray(features, dtype=np.float32)


# ----------------------------------------------------------------------------------------- saved format


def save_head(
    out_dir: Path,
    model: HeadModel,
    cfg: HeadTrainConfig,
    *,
    history: pd.DataFrame,
    best_epoch: int,
    best_metric: float,
    optimizer_steps: int,
) -> tuple[Path, Path, Path]:
    """Write ``head.safetensors``, ``head.json`` and ``history.csv`` (each atomically) into ``out_dir``.

    The format :func:`load_head` reads; used by :func:`fit_head` and by
    :func:`roadwork.train.finetune.finetune`. ``epochs_run`` is the number of ``history`` rows. Returns the
    three paths in that order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_views, feature_dim = model.num_views, model.feature_dim
    head_path, config_path, history_path = out_dir / HEAD_WEIGHTS, out_dir / HEAD_CONFIG, out_dir / HISTORY
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(head_path, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    meta = {
        "format_version": HEAD_FORMAT_VERSION,
        "config": asdict(cfg),
        "feature_dim": feature_dim,
        "num_views": num_views,
        "inactive_fields": list(cfg.inactive_fields(num_views)),
        "best_epoch": int(best_epoch),
        "best_metric": float(best_metric),
        "selection_metric": cfg.selection_metric,
        "epochs_run": len(history),
        "optimizer_steps": int(optimizer_steps),
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
    }
    atomic_write_json(config_path, meta, sort_keys=False)
    atomic_write_csv(history_path, history)
    return head_path, config_path, history_path


def load_head(head_dir: Path) -> HeadModel:
    """Rebuild the head saved by :func:`fit_head` in ``head_dir`` (eval mode, float32).

    Raises FileNotFoundError when ``head.json`` or ``head.safetensors`` is missing and ValueError naming
    the file when its contents do not describe a head of this format.
    """
    head_dir = Path(head_dir)
    config_path, weights_path = head_dir / HEAD_CONFIG, head_dir / HEAD_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; point head_dir at a folder written by fit_head.")
    try:
        meta = json.loads(config_path.read_text())
        version = meta["format_version"]
        cfg = HeadTrainConfig(**meta["config"])
        feature_dim, num_views = int(meta["feature_dim"]), int(meta["num_views"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{config_path}: not a valid head description ({exc}).") from None
    if version != HEAD_FORMAT_VERSION:
        raise ValueError(f"{config_path}: format_version {version!r}; this code reads {HEAD_FORMAT_VERSION}.")
    with torch.random.fork_rng(devices=[]):
        # Initial weights are overwritten below; the fork keeps the caller's RNG stream untouched.
        model = HeadModel.from_config(cfg, feature_dim=feature_dim, num_views=num_views)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not match {config_path} ({exc}).") from None
    return model.eval()


def predict_logits(
    head: Path | HeadModel, features: np.ndarray, *, batch_size: int = 4096
) -> NDArray[np.float32]:
    """Logits ``[N, 2]`` (float32) of a saved head folder or an in-memory :class:`HeadModel`.

    ``features`` is ``[N, V, D]`` with the head's ``V`` and ``D``. Runs in eval mode (no dropout), float32,
    without autocast, in chunks of ``batch_size`` rows; an in-memory model's train/eval mode is restored.
    """
    model = load_head(head) if isinstance(head, (str, Path)) else head
    if not isinstance(model, HeadModel):
        raise TypeError(f"head must be a folder path or a HeadModel, got {type(head).__name__}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    x = torch.from_numpy(check_features(features, model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            chunks = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    out = torch.cat(chunks) if chunks else torch.empty(0, 2)
    return out.float().numpy()


def predict_margins(
    head: Path | HeadModel, features: np.ndarray, *, batch_size: int = 4096
) -> NDArray[np.float32]:
    """Margins ``z1 - z0`` ``[N]`` of :func:`predict_logits`; ``margin > 0`` means roadwork at p = 0.5."""
    logits = predict_logits(head, features, batch_size=batch_size)
    return logits[:, 1] - logits[:, 0]
