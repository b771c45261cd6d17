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

Crash-safe resume (``fit_head(..., checkpoint_dir=...)``): after every epoch (after its validation) the whole
training state is written, atomically (temporary file, fsync, ``os.replace``), to ``checkpoint_dir /
"head-checkpoint.safetensors"`` (:data:`CHECKPOINT_FILE`): one safetensors file whose tensors are the weights,
the EMA weights, the best state so far, the optimizer's state tensors and the RNG states (torch's global CPU
generator, the shuffling generator; the CUDA generator on GPU), and whose metadata holds everything else as
JSON (history rows, best epoch and metric, early-stopping counter, epochs and optimizer steps done, the
optimizer's and LR scheduler's other state; tensors nested in those appear in the JSON as references to
safetensors keys). Nothing is pickled. The checkpoint carries a fingerprint of its inputs (the
:class:`HeadTrainConfig`, the world size, the torch/Lightning versions and the shapes and SHA-256 of both
splits' features, labels and ids; not roadwork's own code); a later call with the same inputs continues after
the checkpoint's epoch, and its outputs are byte-identical to an uninterrupted run's on CPU. A checkpoint with
another fingerprint, an unreadable one or another format is ignored and overwritten by the first new epoch.
The checkpoint is kept after training (a repeated call then only rewrites the outputs); nothing is deleted.

Several processes (``devices > 1``, ``strategy="ddp"``; on CPU the gloo backend): every process runs
:func:`fit_head` on the same arrays. ``HeadTrainConfig.batch_size`` stays the *global* batch: each process
takes ``batch_size / devices`` rows of every batch of the single-process order (same shuffling generator,
rows dealt out in turn; the row count is padded to a multiple of ``devices`` by repeating the epoch's
first rows, as ``DistributedSampler`` does). Validation is sharded the same way and the logits are gathered
(padding dropped), so every process computes the metrics of every val_select item exactly once and takes
the same selection and early-stopping decisions. Only global rank 0 writes files and checkpoints and calls
the loggers. With Lightning's ``ddp`` launcher the calling script is started again for the other ranks
(see :func:`fit_head`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
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
from torch.utils.data import DataLoader, Sampler, TensorDataset

from roadwork.atomic import atomic_write
from roadwork.distributed import check_processes
from roadwork.metrics import mcc
from roadwork.policy.threshold import best_mcc_threshold
from roadwork.progress import progress_enabled
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, load_resume_state, write_checkpoint
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.losses import focal_loss, inverse_frequency_weights

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
HISTORY = "history.csv"
HEAD_FORMAT_VERSION = 1
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mcc", "val_best_mcc", "lr")
ID2LABEL = {0: "None", 1: "Roadwork"}
CHECKPOINT_FILE = "head-checkpoint.safetensors"


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
        if feature_transform == "sqrt_l2":
            self.classifier.insert(0, SignedSqrtL2())
        elif feature_transform != "none":
            raise ValueError(f"feature_transform must be 'none' or 'sqrt_l2', got {feature_transform!r}.")
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


def _tensors(
    features: NDArray[np.float32], labels: NDArray[np.int64], *, index: bool = False
) -> TensorDataset:
    # np.require copies only arrays torch cannot share (read-only or non-contiguous ones).
    tensors = [
        torch.from_numpy(np.require(features, requirements=["C", "W"])),
        torch.from_numpy(np.require(labels, requirements=["C", "W"])),
    ]
    if index:
        tensors.append(torch.arange(len(labels)))
    return TensorDataset(*tensors)


class ShardSampler(Sampler[int]):
    """Row order of one of ``world_size`` processes: every ``world_size``-th row of the epoch's order.

    The epoch's order is ``torch.randperm(n, generator=generator)`` (a new permutation per pass, the
    generator's state carrying over) or ``0..n-1`` without a generator. It is padded to a multiple of
    ``world_size`` by repeating its first rows (as ``torch.utils.data.DistributedSampler`` pads), then
    process ``rank`` takes positions ``rank, rank + world_size, ...``; so with a per-process batch of
    ``B / world_size`` the processes' k-th batches together hold exactly the rows of the single-process
    k-th batch of size ``B``. With ``world_size == 1`` and a generator it yields, and draws from the
    generator, exactly what ``RandomSampler(generator=generator)`` does, so single-process training is
    unchanged by it.
    """

    def __init__(
        self, n: int, *, rank: int = 0, world_size: int = 1, generator: torch.Generator | None = None
    ) -> None:
        if n < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need n >= 1 and 0 <= rank < world_size, got {n}, {rank}, {world_size}.")
        self.n, self.rank, self.world_size, self.generator = n, rank, world_size, generator
        self.num_samples = math.ceil(n / world_size)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n)) if self.generator is None else self.epoch_order()
        total = self.num_samples * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        yield from order[self.rank :: self.world_size]
        if self.generator is not None:
            # RandomSampler draws one more permutation (and yields none of it) when it is exhausted; doing
            # the same keeps the generator's stream, hence every later epoch's order, identical to it.
            torch.randperm(self.n, generator=self.generator)

    def epoch_order(self) -> list[int]:
        """One pass's rows (a subclass may draw them otherwise: :mod:`roadwork.train.sampling`)."""
        return torch.randperm(self.n, generator=self.generator).tolist()


class FeatureDataModule(pl.LightningDataModule):
    """Batches of ``(features [B, V, D], labels [B])`` from in-memory feature sets; no worker processes.

    Training batches are reshuffled every epoch by :attr:`generator`, seeded once with ``seed`` (its state
    is part of a resume checkpoint); validation batches
    ``(features, labels, row index)`` keep row order. Under a multi-process strategy each process gets its
    :class:`ShardSampler` shard and ``batch_size / world_size`` rows per batch (``batch_size`` is the
    global batch; it must be divisible by the world size).
    """

    def __init__(
        self,
        train: FeatureSet,
        val_select: FeatureSet,
        *,
        batch_size: int,
        seed: int,
        sample_weights: NDArray[np.float64] | None = None,
    ) -> None:
        super().__init__()
        self._weights = sample_weights  # None: a permutation per epoch; else weighted draws
        self._train = _tensors(train.features, train.labels)
        self._val = _tensors(val_select.features, val_select.labels, index=True)
        self._batch_size = batch_size
        self._seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _shard(self) -> tuple[int, int, int]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self._batch_size % world:
            raise ValueError(
                f"HeadTrainConfig.batch_size={self._batch_size} is the global batch and must be divisible "
                f"by the number of processes ({world})."
            )
        return rank, world, self._batch_size // world

    def train_dataloader(self) -> DataLoader:
        rank, world, batch_size = self._shard()
        sampler = ShardSampler(len(self._train), rank=rank, world_size=world, generator=self.generator)
        if self._weights is not None:
            from roadwork.train.sampling import WeightedShardSampler  # it subclasses ShardSampler

            sampler = WeightedShardSampler(
                self._weights, rank=rank, world_size=world, generator=self.generator
            )
        # The loader draws its (unused, no workers) base seed from the same generator, as shuffle=True does.
        return DataLoader(self._train, batch_size=batch_size, sampler=sampler, generator=self.generator)

    def val_dataloader(self) -> DataLoader:
        rank, world, batch_size = self._shard()
        sampler = ShardSampler(len(self._val), rank=rank, world_size=world)
        return DataLoader(self._val, batch_size=batch_size, sampler=sampler)


class HeadModule(pl.LightningModule):
    """Trains a :class:`HeadModel`; evaluates val_select each epoch, keeps the best weights and stops early.

    Per epoch it appends a row to :attr:`history` (see :data:`HISTORY_COLUMNS`): ``train_loss`` is the
    configured loss averaged over the epoch's rows (batch means weighted by batch size); ``val_loss`` is the
    plain (unweighted, unsmoothed) cross-entropy on val_select, comparable across loss settings;
    ``val_mcc`` is the MCC of ``margin > 0``; ``val_best_mcc`` the MCC at the best threshold; ``lr`` the
    learning rate of the epoch's last optimizer step. Epochs count from 0 (:attr:`epoch`, which on a resumed
    run continues the checkpoint's count while Lightning's ``current_epoch`` restarts at 0). Validation runs
    in float32 on the evaluated weights (EMA when on) whatever ``precision`` says, as :func:`predict_logits`
    does.

    Under a multi-process strategy the validation batches carry row indices (see
    :class:`FeatureDataModule`); the logits of all processes are gathered and put back in row order, and the
    training loss is summed over processes, so every process records the same history row and takes the same
    selection and stopping decisions; only global rank 0 calls ``loggers``.
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
        self.epoch_offset = 0
        self._epochs_without_improvement = 0
        self._loss_sum = 0.0
        self._rows = 0
        self._last_lr = math.nan
        self._val_logits: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []

    @property
    def epoch(self) -> int:
        """The epoch being run, counted from 0 over the whole training (resumed runs included)."""
        return self.epoch_offset + self.current_epoch

    @property
    def early_stopped(self) -> bool:
        """Whether early stopping has fired: ``early_stopping_patience`` epochs without improvement."""
        return self._epochs_without_improvement >= self.cfg.early_stopping_patience

    def checkpoint_state(self) -> dict[str, Any]:
        """The module's part of a resume checkpoint after the current epoch: weights and selection state.

        Tensors and JSON-compatible values only; :meth:`load_checkpoint_state` restores it. Subclasses that
        hold more (or less) state override both.
        """
        return {
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "best_state": self.best_state,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "epochs_without_improvement": self._epochs_without_improvement,
        }

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state`; training then continues with epoch ``len(history)``."""
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best_state = {k: v.clone() for k, v in state["best_state"].items()}
        self.history = [dict(row) for row in state["history"]]
        self.best_epoch = int(state["best_epoch"])
        self.best_metric = float(state["best_metric"])
        self._epochs_without_improvement = int(state["epochs_without_improvement"])
        self.epoch_offset = len(self.history)

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
                f"training loss is {value} at epoch {self.epoch}, batch {batch_idx}; "
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

    def on_fit_start(self) -> None:
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(self.device)

    def on_validation_epoch_start(self) -> None:
        self._val_logits, self._val_index = [], []

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        with torch.autocast(self.device.type, enabled=False):
            self._val_logits.append(self.evaluated_model(batch[0]).float())
        if len(batch) > 2:
            self._val_index.append(batch[2])

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def validation_logits(self) -> torch.Tensor:
        """This epoch's val_select logits ``[N, 2]`` (float32, CPU), in row order, each row exactly once.

        With several processes each holds a :class:`ShardSampler` shard: position ``j`` of process ``r`` is
        position ``j * world_size + r`` of the padded order, so interleaving the gathered shards and cutting
        at ``N`` restores the rows in order without the padding; the gathered row indices are checked.
        """
        logits = torch.cat(self._val_logits)
        world = self._world_size()
        if world == 1:
            return logits.cpu()
        if not self._val_index:
            raise RuntimeError("multi-process validation needs batches (features, labels, row index).")
        n = len(self.val_labels)
        gathered = self.all_gather(logits).transpose(0, 1).reshape(-1, 2)[:n]
        index = self.all_gather(torch.cat(self._val_index)).transpose(0, 1).reshape(-1)[:n]
        if not torch.equal(index.cpu(), torch.arange(n)):
            raise RuntimeError("gathered validation rows are not val_select's rows 0..N-1 once each.")
        return gathered.cpu()

    def _train_loss(self) -> float:
        if self._world_size() == 1:
            return self._loss_sum / self._rows
        totals = torch.tensor([self._loss_sum, float(self._rows)], dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        return float(totals[0] / totals[1])

    def on_validation_epoch_end(self) -> None:
        logits = self.validation_logits()
        margins = (logits[:, 1] - logits[:, 0]).numpy()
        row = {
            "epoch": float(self.epoch),
            "train_loss": self._train_loss(),
            "val_loss": float(F.cross_entropy(logits, self._val_targets)),
            "val_mcc": mcc(self.val_labels, (margins > 0).astype(np.int64)),
            "val_best_mcc": float(best_mcc_threshold(self.val_labels, margins)[1]),
            "lr": self._last_lr,
        }
        self.history.append(row)
        if self.trainer.is_global_zero:
            for logger in self.metric_loggers:
                logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=self.epoch)
        metric = row["val_best_mcc" if self.cfg.selection_metric == "best_mcc" else "val_mcc"]
        if metric > self.best_metric or self.cfg.selection_metric == "last":
            self.best_metric, self.best_epoch = metric, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.evaluated_model.state_dict().items()}
            self._epochs_without_improvement = 0
        else:
            self._epochs_without_improvement += 1
            if self.early_stopped:
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


# --------------------------------------------------------------------------------------- resume checkpoints


def _hash_split(h: Any, split: FeatureSet) -> None:
    for array in (split.features, split.labels):
        h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    h.update("\n".join(split.ids.tolist()).encode())


def library_versions() -> dict[str, str]:
    """torch and Lightning versions: part of every checkpoint fingerprint (their numerics may change)."""
    return {"torch": torch.__version__, "lightning": pl.__version__}


def head_fingerprint(
    cfg: HeadTrainConfig, train: FeatureSet, val_select: FeatureSet, world_size: int, weights: Any = None
) -> str:
    """SHA-256 (hex) tying a :func:`fit_head` checkpoint to its inputs.

    Covers the checkpoint format, every :class:`HeadTrainConfig` field, the number of processes, the torch
    and Lightning versions and both splits' shapes and bytes (features, labels, ids); not the loggers,
    callbacks or progress bar, and not roadwork's own code: delete the checkpoint after changing it.
    """
    h = hashlib.sha256()
    header = {
        "kind": "roadwork.fit_head",
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": asdict(cfg),
        "world_size": int(world_size),
        "versions": library_versions(),
        "shapes": {
            "train": list(train.features.shape),
            "val_select": list(val_select.features.shape),
        },
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    _hash_split(h, train)
    _hash_split(h, val_select)
    if weights is not None:  # fit_head's sample_weights
        h.update(np.ascontiguousarray(weights, dtype=np.float64).data)
    return h.hexdigest()


def _rng_state(device: torch.device, generator: torch.Generator | None) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loader": None if generator is None else generator.get_state(),
    }


class EpochCheckpoint(pl.Callback):
    """Writes a resume checkpoint after every epoch and restores a loaded one when fitting starts.

    At the end of every training epoch (after its validation), global rank 0 writes, with
    :func:`write_checkpoint` to ``path``: the module's :meth:`HeadModule.checkpoint_state`, every optimizer's
    and LR scheduler's ``state_dict()``, the RNG states (torch's global CPU generator, the CUDA generator of
    the module's device, ``generator`` when given), ``epochs_done``, ``optimizer_steps`` (over the whole
    training) and ``fingerprint``. With ``resume`` (such a state, whose module part the caller has already
    restored with :meth:`HeadModule.load_checkpoint_state`), ``on_fit_start`` restores the optimizers,
    schedulers and RNG states: after the optimizers exist and before the first training batch is drawn.
    """

    def __init__(
        self,
        path: Path,
        fingerprint: str,
        *,
        generator: torch.Generator | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.generator = generator
        self.resume = resume
        self.steps_before = int(resume["optimizer_steps"]) if resume is not None else 0
        self.epochs_written = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.resume is None:
            return
        optimizers, schedulers = self.resume["optimizers"], self.resume["schedulers"]
        if len(optimizers) != len(trainer.optimizers) or len(schedulers) != len(trainer.lr_scheduler_configs):
            raise RuntimeError(f"{self.path}: optimizers or schedulers differ from the checkpoint's.")
        for optimizer, state in zip(trainer.optimizers, optimizers, strict=True):
            optimizer.load_state_dict(state)
        for config, state in zip(trainer.lr_scheduler_configs, schedulers, strict=True):
            config.scheduler.load_state_dict(state)
        rng = self.resume["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], pl_module.device)
        if rng["loader"] is not None and self.generator is not None:
            self.generator.set_state(rng["loader"])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        assert isinstance(pl_module, HeadModule)
        state = {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "epochs_done": pl_module.epoch + 1,
            "optimizer_steps": self.steps_before + int(trainer.global_step),
            "module": pl_module.checkpoint_state(),
            "optimizers": [optimizer.state_dict() for optimizer in trainer.optimizers],
            "schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
            "rng": _rng_state(pl_module.device, self.generator),
        }
        write_checkpoint(self.path, state)
        self.epochs_written += 1


# ------------------------------------------------------------------------------------------------- public


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_head` produced.

    Attributes:
        model: the selected head in eval mode (EMA weights when EMA is on), equal to ``head.safetensors``.
        history: one row per epoch run, columns :data:`HISTORY_COLUMNS` (``epoch`` as int, from 0).
        best_epoch: epoch of the selected weights.
        best_metric: the selection metric on val_select at ``best_epoch``.
        epochs_run: epochs trained (< ``max_epochs`` when early stopping fired), resumed ones included.
        optimizer_steps: optimizer steps taken over all epochs.
        head_path, config_path, history_path: the files written (by global rank 0 only).
        resumed_epochs: epochs restored from a checkpoint instead of being run by this call (0: fresh).
        checkpoint_path: the resume checkpoint (None without ``checkpoint_dir``).
        global_rank: this process's rank (0 unless several processes trained).
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
    resumed_epochs: int = 0
    checkpoint_path: Path | None = None
    global_rank: int = 0


def _check_splits(train: FeatureSet, val_select: FeatureSet, *, may_overlap: bool = False) -> None:
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
    leaked = np.intersect1d(train.ids, val_select.ids)
    if leaked.size and not may_overlap:
        raise ValueError(
            f"{leaked.size} image ids occur in both train and val_select (first: {leaked[:3].tolist()}); "
            "splits must be disjoint (only selection_metric='last' allows it: val_select chooses nothing)."
        )


def replay_history(history: Sequence[dict[str, float]], loggers: Sequence[Logger]) -> None:
    """Log the history rows of epochs restored from a checkpoint (``step`` = epoch), so a resumed run's
    loggers hold the whole curve."""
    for row in history:
        for logger in loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


# Lightning's messages that tell a roadwork user nothing: its hints and the deprecations inside its own calls
# into torch (warnings: message regex, category), and its chatter on stderr (log lines starting so). The
# features sit in memory, so more loader workers would not help; the stage summary says how training ended.
_FIT_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*does not have many workers", UserWarning),
    (r"torch\.distributed\.nn\.functional\.all_gather is deprecated", FutureWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
)
_LIGHTNING_CHATTER = ("💡 Tip:", "TPU available:", "`Trainer.fit` stopped:")
_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropLightningChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_LIGHTNING_CHATTER)


_DROP_CHATTER = _DropLightningChatter()


@contextlib.contextmanager
def quiet_fit(*extra: tuple[str, type[Warning]]) -> Iterator[None]:
    """Around ``trainer.fit``: Lightning's warnings in :data:`_FIT_WARNINGS` and ``extra`` (message regex,
    category) are not shown."""
    with warnings.catch_warnings():
        for message, category in (*_FIT_WARNINGS, *extra):
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def head_trainer(
    cfg: HeadTrainConfig,
    *,
    max_epochs: int,
    accelerator: str = "cpu",
    devices: int = 1,
    strategy: str = "auto",
    show_progress: bool = True,
    callbacks: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    """The Lightning Trainer of every head training (:func:`fit_head`, finetuning, the benchmarks).

    ``cfg``'s precision, gradient accumulation and clipping (0 = off); ``ddp`` whenever ``devices > 1``.
    Lightning's own logging, checkpointing, sanity validation and distributed sampler wrapping are off: the
    callers log to their loggers, checkpoint with :class:`EpochCheckpoint`, validate every epoch and shard
    with their own samplers.
    """
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_DROP_CHATTER)  # the same filter once, however many trainers
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy="ddp" if devices > 1 else strategy,
        max_epochs=max_epochs,
        precision=cfg.precision,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val or None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=show_progress and progress_enabled(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
    )


def fit_head(
    train: FeatureSet,
    val_select: FeatureSet,
    cfg: HeadTrainConfig,
    *,
    out_dir: Path,
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[pl.Callback] = (),
    show_progress: bool = True,
    checkpoint_dir: Path | None = None,
    accelerator: str = "cpu",
    devices: int = 1,
    strategy: str = "auto",
    sample_weights: NDArray[np.float64] | None = None,
) -> FitResult:
    """Train a head on ``train``, select and stop early on ``val_select``, and save it in ``out_dir``.

    Every epoch evaluates the whole of ``val_select`` and logs the history row (without ``epoch``) to each
    of ``loggers`` with ``step=epoch``; the loggers are not finalised, so the caller owns their runs.
    ``callbacks`` are extra Lightning callbacks (e.g. timers or probes). Deterministic for a fixed
    ``cfg.seed`` on one machine; the caller's global torch RNG state is left untouched.

    Args:
        checkpoint_dir: where the resume checkpoint :data:`CHECKPOINT_FILE` is written after every epoch
            and looked for at the start (see the module docstring). When it holds a checkpoint of the same
            inputs, training continues after its epoch (the restored history rows are first replayed to
            ``loggers``), and the outputs equal an uninterrupted run's byte for byte on CPU; a finished
            checkpoint only rewrites the outputs. None (default): no checkpoint is read or written. Use one
            folder per training job, outside anything the caller deletes before a rerun (e.g. outside a DVC
            stage's ``outs``).
        accelerator: Lightning accelerator, ``cpu`` (default), ``gpu`` or ``auto``. Hardware settings are
            not part of :class:`HeadTrainConfig`; results are bit-reproducible on CPU.
        devices: number of processes (one per device); ``HeadTrainConfig.batch_size`` is the global batch
            and must be divisible by it.
        strategy: ``auto`` (one process) or ``ddp`` (the default when ``devices > 1``): Lightning starts the
            calling script (``sys.argv``) again for ranks 1.. with ``LOCAL_RANK`` etc. set, and each of
            those processes must call :func:`fit_head` with the same arguments (torchrun-style launchers
            that start every rank themselves work too). Spawn/fork strategies are refused: they train in
            child processes whose state never comes back to this call. Only global rank 0 writes files and
            checkpoints and calls the loggers; every rank returns the same :class:`FitResult`.
        sample_weights: one weight per ``train`` row; each epoch then draws as many rows with replacement,
            row ``i`` with probability ``w_i / sum(w)`` (:mod:`roadwork.train.sampling`). None: a shuffle.

    Raises TypeError/ValueError naming the argument when the splits are not FeatureSets, lack a class,
    disagree in views or dims, share image ids, or val_select repeats an id, or when a hardware argument is
    invalid; FloatingPointError when the training loss becomes non-finite.
    """
    if not isinstance(cfg, HeadTrainConfig):
        raise TypeError(f"cfg must be a HeadTrainConfig, got {type(cfg).__name__}.")
    _check_splits(train, val_select, may_overlap=cfg.selection_metric == "last")
    check_processes(
        accelerator, devices, strategy, batch_size=cfg.batch_size, batch_key="HeadTrainConfig.batch_size"
    )
    out_dir = Path(out_dir)
    num_views, feature_dim = train.num_views, train.feature_dim
    class_weight = (
        torch.tensor(inverse_frequency_weights(train.labels), dtype=torch.float32)
        if cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(
        len(train.labels), cfg.batch_size, cfg.accumulate_grad_batches
    )
    checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    resume = None
    if checkpoint_path is not None:
        fingerprint = head_fingerprint(cfg, train, val_select, devices, sample_weights)
        resume = load_resume_state(checkpoint_path, fingerprint)
    rng_devices = (
        list(range(torch.cuda.device_count())) if accelerator != "cpu" and torch.cuda.is_available() else []
    )
    with torch.random.fork_rng(devices=rng_devices):
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
        if resume is not None:
            module.load_checkpoint_state(resume["module"])
            if module.epoch_offset != int(resume["epochs_done"]):
                raise ValueError(f"{checkpoint_path}: history rows and epochs_done disagree.")
        remaining = cfg.max_epochs - module.epoch_offset
        data = FeatureDataModule(
            train, val_select, batch_size=cfg.batch_size, seed=cfg.seed, sample_weights=sample_weights
        )
        checkpoint = (
            None
            if checkpoint_path is None
            else EpochCheckpoint(checkpoint_path, fingerprint, generator=data.generator, resume=resume)
        )
        trainer = head_trainer(
            cfg,
            max_epochs=max(1, remaining),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            show_progress=show_progress,
            callbacks=[*([checkpoint] if checkpoint is not None else []), *callbacks],
        )
        is_zero = trainer.is_global_zero
        if is_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            replay_history(module.history, loggers)
        optimizer_steps = 0 if resume is None else int(resume["optimizer_steps"])
        if remaining > 0 and not module.early_stopped:
            with quiet_fit():
                trainer.fit(module, datamodule=data)
            optimizer_steps += int(trainer.global_step)
        best = HeadModel.from_config(cfg, feature_dim=feature_dim, num_views=num_views)
    best.load_state_dict(module.best_state)
    best.eval()
    history = pd.DataFrame(module.history, columns=list(HISTORY_COLUMNS)).astype({"epoch": int})
    head_path, config_path, history_path = out_dir / HEAD_WEIGHTS, out_dir / HEAD_CONFIG, out_dir / HISTORY
    if is_zero:
        save_head(
            out_dir,
            best,
            cfg,
            history=history,
            best_epoch=module.best_epoch,
            best_metric=module.best_metric,
            optimizer_steps=optimizer_steps,
        )
        for logger in loggers:
            logger.save()
    return FitResult(
        model=best,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        epochs_run=len(module.history),
        optimizer_steps=optimizer_steps,
        head_path=head_path,
        config_path=config_path,
        history_path=history_path,
        resumed_epochs=0 if resume is None else int(resume["epochs_done"]),
        checkpoint_path=checkpoint_path,
        global_rank=int(trainer.global_rank),
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
    atomic_write(config_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
    atomic_write(history_path, lambda p: history.to_csv(p, index=False))
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
