"""The LightningModule of head training: loss, optimizer and schedule, per-epoch validation on val_select,
EMA, best-epoch selection and early stopping (see :mod:`roadwork.train.head`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray

from roadwork.metrics import mcc
from roadwork.models.head import HeadModel
from roadwork.policy.threshold import best_mcc_threshold
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.losses import focal_loss

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_mcc", "val_best_mcc", "lr")


class HeadLightningModule(pl.LightningModule):
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
