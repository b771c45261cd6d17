"""Head training on cached backbone features: Lightning, multiple-instance aggregation over views.

A frozen backbone has been run once per image and per view; this module trains a small head on those
arrays. Label 1 = roadwork. The head emits two logits ``(z0, z1)`` per image so that a linear head on the
feature vector maps onto Hugging Face's ``*ForImageClassification`` classifier; the *margin*
``z = z1 - z0`` is what calibration consumes, and ``z > 0`` is the decision at probability 0.5.

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

Outputs of :func:`fit_head` in ``out_dir``: ``head.safetensors`` (weights of the selected epoch; the EMA
weights when EMA is on, which are also the weights that were evaluated for selection), ``head.json``
(config, feature dim, views, best epoch and metric) and ``history.csv`` (one row per epoch). No pickle is
written: Lightning's checkpointing is off and the best weights are kept in memory.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from roadwork.metrics import mcc
from roadwork.policy.threshold import best_mcc_threshold
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.losses import focal_loss, inverse_frequency_weights

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
HISTORY = "history.csv"
HEAD_FORMAT_VERSION = 1
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mcc", "val_best_mcc", "lr")
ID2LABEL = {0: "None", 1: "Roadwork"}


# --------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class FeatureSet:
    """Cached features of one split, one row per (image, copy).

    Attributes:
        features: ``[N, V, D]`` float32 backbone features; ``V`` views per row (global first), ``D`` dims.
            Other floating dtypes (e.g. a float16 cache) are converted to float32 on construction.
        labels: ``[N]`` int64 labels, 0 = no roadwork, 1 = roadwork (any integer dtype is converted).
        ids: ``[N]`` image ids (sha256 hex of the source image). Rows of augmented copies of one image share
            its id and must share its label.

    Raises TypeError/ValueError naming the field when shapes disagree, a value is not finite, a label is
    not 0/1, an id is empty, or rows sharing an id carry different labels.
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    ids: NDArray[np.str_]

    def __post_init__(self) -> None:
        features = np.asarray(self.features)
        if not np.issubdtype(features.dtype, np.floating):
            raise TypeError(f"FeatureSet.features must be a floating array, got dtype {features.dtype}.")
        if features.ndim != 3 or 0 in features.shape:
            raise ValueError(
                f"FeatureSet.features must have shape [N, V, D] with N, V, D >= 1, got {features.shape}; "
                "a single-view cache needs an explicit view axis of length 1."
            )
        features = features.astype(np.float32, copy=False)
        if not np.isfinite(features).all():
            bad = np.unique(np.argwhere(~np.isfinite(features))[:, 0])
            raise ValueError(
                f"FeatureSet.features has non-finite values in {bad.size} rows (first: {bad[:5].tolist()}); "
                "re-embed those images."
            )
        n = features.shape[0]
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ValueError(
                f"FeatureSet.labels must have shape ({n},) to match features, got {labels.shape}."
            )
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise TypeError(f"FeatureSet.labels must be integers 0/1, got dtype {labels.dtype}.")
        labels = labels.astype(np.int64, copy=False)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"FeatureSet.labels must be 0 or 1, found {sorted(set(labels.tolist()) - {0, 1})[:5]}."
            )
        ids = np.asarray(self.ids)
        if ids.shape != (n,):
            raise ValueError(f"FeatureSet.ids must have shape ({n},) to match features, got {ids.shape}.")
        if ids.dtype.kind not in "UO" or not all(isinstance(i, str) for i in ids.tolist()):
            raise TypeError(f"FeatureSet.ids must hold strings (image sha256), got dtype {ids.dtype}.")
        ids = ids.astype(np.str_)
        if (np.char.str_len(ids) == 0).any():
            raise ValueError("FeatureSet.ids contains empty strings; every row needs its image id.")
        unique, inverse = np.unique(ids, return_inverse=True)
        low = np.full(unique.size, 1, dtype=np.int64)
        high = np.zeros(unique.size, dtype=np.int64)
        np.minimum.at(low, inverse, labels)
        np.maximum.at(high, inverse, labels)
        conflicts = unique[low != high]
        if conflicts.size:
            raise ValueError(
                f"FeatureSet.labels differ between rows of the same id for {conflicts.size} ids "
                f"(first: {conflicts[:3].tolist()}); copies of one image must share its label."
            )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "ids", ids)

    @property
    def num_views(self) -> int:
        """``V``, views per row."""
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        """``D``, feature dimensions per view."""
        return int(self.features.shape[2])


# -------------------------------------------------------------------------------------------------- model


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
    ) -> None:
        super().__init__()
        if feature_dim < 1 or num_views < 1:
            raise ValueError(f"feature_dim and num_views must be >= 1, got {feature_dim} and {num_views}.")
        self.feature_dim = feature_dim
        self.num_views = num_views
        self.aggregation = aggregation
        self.topk = min(topk, num_views)
        if head == "linear":
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 2))
        elif head == "mlp":
            self.classifier = nn.Sequential(
                nn.Linear(feature_dim, mlp_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_hidden, 2)
            )
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}.")
        if aggregation not in HeadTrainConfig.CHOICES["aggregation"]:
            raise ValueError(f"aggregation must be 'topk_mean' or 'attention', got {aggregation!r}.")
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


def _check_features(features: np.ndarray, model: HeadModel, name: str = "features") -> NDArray[np.float32]:
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


# ------------------------------------------------------------------------------------------ Lightning parts


def optimizer_steps_per_epoch(n_rows: int, batch_size: int, accumulate_grad_batches: int) -> int:
    """Optimizer steps in one epoch: ``ceil(ceil(n_rows / batch_size) / accumulate_grad_batches)``.

    Lightning also steps on an epoch's last batch when the accumulation window is incomplete.
    """
    return math.ceil(math.ceil(n_rows / batch_size) / accumulate_grad_batches)


def _tensors(features: NDArray[np.float32], labels: NDArray[np.int64]) -> TensorDataset:
    # np.require copies only arrays torch cannot share (read-only or non-contiguous ones).
    return TensorDataset(
        torch.from_numpy(np.require(features, requirements=["C", "W"])),
        torch.from_numpy(np.require(labels, requirements=["C", "W"])),
    )


class FeatureDataModule(pl.LightningDataModule):
    """Batches of ``(features [B, V, D], labels [B])`` from in-memory feature sets; no worker processes.

    Training batches are reshuffled every epoch from a generator seeded with ``seed``; validation keeps
    row order.
    """

    def __init__(self, train: FeatureSet, val_select: FeatureSet, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self._train = _tensors(train.features, train.labels)
        self._val = _tensors(val_select.features, val_select.labels)
        self._batch_size = batch_size
        self._seed = seed

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self._seed)
        return DataLoader(self._train, batch_size=self._batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._val, batch_size=self._batch_size, shuffle=False)


class HeadModule(pl.LightningModule):
    """Trains a :class:`HeadModel`; evaluates val_select each epoch, keeps the best weights and stops early.

    Per epoch it appends a row to :attr:`history` (see :data:`HISTORY_COLUMNS`): ``train_loss`` is the
    configured loss averaged over the epoch's rows (batch means weighted by batch size); ``val_loss`` is the
    plain (unweighted, unsmoothed) cross-entropy on val_select, comparable across loss settings;
    ``val_mcc`` is the MCC of ``margin > 0``; ``val_best_mcc`` the MCC at the best threshold; ``lr`` the
    learning rate of the epoch's last optimizer step. Epochs count from 0. Validation runs in float32 on the
    evaluated weights (EMA when on) whatever ``precision`` says, as :func:`predict_logits` does.
    """

    def __init__(
        self,
        model: HeadModel,
        cfg: HeadTrainConfig,
        *,
        class_weight: torch.Tensor | None,
        steps_per_epoch: int,
        val_labels: NDArray[np.int64],
        loggers: Sequence[Logger] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False) if cfg.ema_decay > 0 else None
        self.cfg = cfg
        self.class_weight = class_weight
        self.steps_per_epoch = steps_per_epoch
        self.val_labels = val_labels
        self._val_targets = torch.tensor(val_labels, dtype=torch.int64)
        self.metric_loggers = tuple(loggers)
        self.history: list[dict[str, float]] = []
        self.best_metric = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] = {}
        self._epochs_without_improvement = 0
        self._loss_sum = 0.0
        self._rows = 0
        self._last_lr = math.nan
        self._val_logits: list[torch.Tensor] = []

    @property
    def evaluated_model(self) -> HeadModel:
        """The weights that are validated, selected and saved: the EMA copy when EMA is on."""
        return self.ema if self.ema is not None else self.model

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured training loss (mean over the batch, class-weighted when weights are set)."""
        if self.cfg.loss == "ce":
            return F.cross_entropy(
                logits.float(), labels, weight=self.class_weight, label_smoothing=self.cfg.label_smoothing
            )
        return focal_loss(
            logits,
            labels,
            gamma=self.cfg.focal_gamma,
            weight=self.class_weight,
            label_smoothing=self.cfg.label_smoothing,
        )

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups, each with its peak ``lr``: here one group, the head at ``cfg.lr``.

        Subclasses that train more than the head (:mod:`roadwork.train.finetune`) override it; every schedule
        scales each group's own peak lr.
        """
        return [{"params": list(self.model.parameters()), "lr": self.cfg.lr}]

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        params = self.param_groups()
        if cfg.optimizer == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=cfg.lr, weight_decay=cfg.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(
                params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
        total = self.steps_per_epoch * cfg.max_epochs
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if cfg.schedule == "onecycle":
            if not 2 <= warmup < total:
                raise ValueError(
                    f"HeadTrainConfig.warmup_epochs={cfg.warmup_epochs} gives {warmup} warmup steps out of "
                    f"{total} ({self.steps_per_epoch} per epoch); schedule 'onecycle' needs between 2 and "
                    f"{total - 1}: change warmup_epochs or batch_size."
                )
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[group["lr"] for group in params],
                total_steps=total,
                pct_start=warmup / total,
                cycle_momentum=False,
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg.schedule, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._rows = 0.0, 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, labels = batch
        loss = self.loss(self.model(features), labels)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training loss is {value} at epoch {self.current_epoch}, batch {batch_idx}; "
                "lower HeadTrainConfig.lr or set gradient_clip_val."
            )
        self._loss_sum += value * len(labels)
        self._rows += len(labels)
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self._last_lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step(closure=optimizer_closure)
        if self.ema is not None:
            with torch.no_grad():
                for ema_p, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                    ema_p.lerp_(p, 1.0 - self.cfg.ema_decay)

    def on_validation_epoch_start(self) -> None:
        self._val_logits = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        with torch.autocast("cpu", enabled=False):
            self._val_logits.append(self.evaluated_model(batch[0]).float())

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits)
        margins = (logits[:, 1] - logits[:, 0]).numpy()
        row = {
            "epoch": float(self.current_epoch),
            "train_loss": self._loss_sum / self._rows,
            "val_loss": float(F.cross_entropy(logits, self._val_targets)),
            "val_mcc": mcc(self.val_labels, (margins > 0).astype(np.int64)),
            "val_best_mcc": float(best_mcc_threshold(self.val_labels, margins)[1]),
            "lr": self._last_lr,
        }
        self.history.append(row)
        for logger in self.metric_loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=self.current_epoch)
        metric = row["val_mcc" if self.cfg.selection_metric == "mcc" else "val_best_mcc"]
        if metric > self.best_metric:
            self.best_metric, self.best_epoch = metric, self.current_epoch
            self.best_state = {k: v.detach().clone() for k, v in self.evaluated_model.state_dict().items()}
            self._epochs_without_improvement = 0
        else:
            self._epochs_without_improvement += 1
            if self._epochs_without_improvement >= self.cfg.early_stopping_patience:
                self.trainer.should_stop = True


def _lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step ``s`` (0-based) for ``cosine`` and ``constant``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ------------------------------------------------------------------------------------------------- public


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_head` produced.

    Attributes:
        model: the selected head in eval mode (EMA weights when EMA is on), equal to ``head.safetensors``.
        history: one row per epoch run, columns :data:`HISTORY_COLUMNS` (``epoch`` as int, from 0).
        best_epoch: epoch of the selected weights.
        best_metric: the selection metric on val_select at ``best_epoch``.
        epochs_run: epochs trained (< ``max_epochs`` when early stopping fired).
        optimizer_steps: optimizer steps taken over all epochs.
        head_path, config_path, history_path: the files written.
    """

    model: HeadModel
    history: pd.DataFrame
    best_epoch: int
    best_metric: float
    epochs_run: int
    optimizer_steps: int
    head_path: Path
    config_path: Path
    history_path: Path


def _check_splits(train: FeatureSet, val_select: FeatureSet) -> None:
    for name, value in (("train", train), ("val_select", val_select)):
        if not isinstance(value, FeatureSet):
            raise TypeError(f"{name} must be a FeatureSet, got {type(value).__name__}.")
        missing = sorted({0, 1} - set(np.unique(value.labels).tolist()))
        if missing:
            raise ValueError(
                f"{name}.labels has no example of class {missing[0]}; head training and its MCC-based "
                "selection need both classes in train and val_select."
            )
    if val_select.features.shape[1:] != train.features.shape[1:]:
        raise ValueError(
            f"val_select.features has views x dims {val_select.features.shape[1:]} but train has "
            f"{train.features.shape[1:]}; embed both splits with the same backbone and views."
        )
    if np.unique(val_select.ids).size != val_select.ids.size:
        raise ValueError("val_select.ids has repeated ids; validation items must have one copy each.")
    leaked = np.intersect1d(train.ids, val_select.ids)
    if leaked.size:
        raise ValueError(
            f"{leaked.size} image ids occur in both train and val_select (first: {leaked[:3].tolist()}); "
            "splits must be disjoint."
        )


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def fit_head(
    train: FeatureSet,
    val_select: FeatureSet,
    cfg: HeadTrainConfig,
    *,
    out_dir: Path,
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[pl.Callback] = (),
    show_progress: bool = True,
) -> FitResult:
    """Train a head on ``train``, select and stop early on ``val_select``, and save it in ``out_dir``.

    Every epoch evaluates the whole of ``val_select`` and logs the history row (without ``epoch``) to each
    of ``loggers`` with ``step=epoch``; the loggers are not finalised, so the caller owns their runs.
    ``callbacks`` are extra Lightning callbacks (e.g. timers or probes). Deterministic for a fixed
    ``cfg.seed`` on one machine; the caller's global torch RNG state is left untouched.

    Raises TypeError/ValueError naming the argument when the splits are not FeatureSets, lack a class,
    disagree in views or dims, share image ids, or val_select repeats an id; FloatingPointError when the
    training loss becomes non-finite.
    """
    _check_splits(train, val_select)
    if not isinstance(cfg, HeadTrainConfig):
        raise TypeError(f"cfg must be a HeadTrainConfig, got {type(cfg).__name__}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    num_views, feature_dim = train.num_views, train.feature_dim
    class_weight = (
        torch.tensor(inverse_frequency_weights(train.labels), dtype=torch.float32)
        if cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(
        len(train.labels), cfg.batch_size, cfg.accumulate_grad_batches
    )
    with torch.random.fork_rng(devices=[]):
        # Dropout draws from the global generator; forking confines the seed to this call.
        torch.manual_seed(cfg.seed)
        model = HeadModel.from_config(cfg, feature_dim=feature_dim, num_views=num_views)
        module = HeadModule(
            model,
            cfg,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            val_labels=val_select.labels,
            loggers=loggers,
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=cfg.max_epochs,
            precision=cfg.precision,
            accumulate_grad_batches=cfg.accumulate_grad_batches,
            gradient_clip_val=cfg.gradient_clip_val or None,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=show_progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=list(callbacks),
        )
        data = FeatureDataModule(train, val_select, batch_size=cfg.batch_size, seed=cfg.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(module, datamodule=data)
        best = HeadModel.from_config(cfg, feature_dim=feature_dim, num_views=num_views)
    best.load_state_dict(module.best_state)
    best.eval()
    history = pd.DataFrame(module.history, columns=list(HISTORY_COLUMNS)).astype({"epoch": int})
    head_path, config_path, history_path = save_head(
        out_dir,
        best,
        cfg,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        optimizer_steps=int(trainer.global_step),
    )
    for logger in loggers:
        logger.save()
    return FitResult(
        model=best,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        epochs_run=len(module.history),
        optimizer_steps=int(trainer.global_step),
        head_path=head_path,
        config_path=config_path,
        history_path=history_path,
    )


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
    _write_atomic(head_path, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
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
    _write_atomic(config_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    _write_atomic(history_path, lambda p: history.to_csv(p, index=False))
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
    x = torch.from_numpy(_check_features(features, model))
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
