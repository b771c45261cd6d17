"""Head training on cached backbone features: the fit loop and its crash-safe resume.

A frozen backbone has been run once per image and per view; :func:`fit_head` trains a small head
(:class:`roadwork.models.head.HeadModel`) on those arrays (:class:`~roadwork.train.head_data.FeatureSet`)
with :class:`~roadwork.train.head_module.HeadLightningModule`. Views, aggregation and the saved format are
described in :mod:`roadwork.models.head`.

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

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray

from roadwork.distributed import check_processes
from roadwork.models.head import HEAD_CONFIG, HEAD_WEIGHTS, HISTORY, HeadModel, save_head
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, load_resume_state
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureDataModule, FeatureSet, optimizer_steps_per_epoch
from roadwork.train.head_module import HISTORY_COLUMNS, HeadLightningModule
from roadwork.train.losses import inverse_frequency_weights
from roadwork.train.trainer import EpochCheckpoint, head_trainer, library_versions, quiet_fit, replay_history

CHECKPOINT_FILE = "head-checkpoint.safetensors"


# --------------------------------------------------------------------------------------- resume checkpoints


def _hash_split(h: Any, split: FeatureSet) -> None:
    for array in (split.features, split.labels):
        h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    h.update("\n".join(split.ids.tolist()).encode())


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
    loss_settings = _loss_settings(train, cfg)
    resume = _open_resume(cfg, train, val_select, checkpoint_dir, devices, sample_weights)
    with torch.random.fork_rng(devices=_rng_devices(accelerator)):
        # Dropout draws from the global generator; forking confines the seed to this call.
        torch.manual_seed(cfg.seed)
        module, data = _set_up(train, val_select, cfg, loggers, resume, loss_settings, sample_weights)
        trainer = head_trainer(
            cfg,
            max_epochs=max(1, cfg.max_epochs - module.epoch_offset),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            show_progress=show_progress,
            callbacks=[*resume.callbacks(data.generator), *callbacks],
        )
        optimizer_steps = resume.optimizer_steps + _train(trainer, module, data, cfg, Path(out_dir), loggers)
        best = HeadModel.from_config(cfg, feature_dim=train.feature_dim, num_views=train.num_views)
    return _outputs(best, module, cfg, trainer, Path(out_dir), loggers, optimizer_steps, resume)


@dataclass(frozen=True)
class _Resume:
    """Where :func:`fit_head`'s resume checkpoint lives (None: no checkpointing), the fingerprint it carries
    and the state it held at the start (None: a fresh run)."""

    path: Path | None = None
    fingerprint: str = ""
    state: dict[str, Any] | None = None

    @property
    def epochs_done(self) -> int:
        return 0 if self.state is None else int(self.state["epochs_done"])

    @property
    def optimizer_steps(self) -> int:
        return 0 if self.state is None else int(self.state["optimizer_steps"])

    def callbacks(self, generator: torch.Generator) -> list[pl.Callback]:
        """The :class:`EpochCheckpoint` that writes (and restores) this checkpoint, if there is one."""
        if self.path is None:
            return []
        return [EpochCheckpoint(self.path, self.fingerprint, generator=generator, resume=self.state)]


def _open_resume(
    cfg: HeadTrainConfig,
    train: FeatureSet,
    val_select: FeatureSet,
    checkpoint_dir: Path | None,
    devices: int,
    sample_weights: NDArray[np.float64] | None,
) -> _Resume:
    if checkpoint_dir is None:
        return _Resume()
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    fingerprint = head_fingerprint(cfg, train, val_select, devices, sample_weights)
    return _Resume(path, fingerprint, load_resume_state(path, fingerprint))


def _loss_settings(train: FeatureSet, cfg: HeadTrainConfig) -> dict[str, Any]:
    """The class weights (``class_weights: auto``) and optimizer steps per epoch a HeadLightningModule
    takes."""
    class_weight = (
        torch.tensor(inverse_frequency_weights(train.labels), dtype=torch.float32)
        if cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(
        len(train.labels), cfg.batch_size, cfg.accumulate_grad_batches
    )
    return {"class_weight": class_weight, "steps_per_epoch": steps_per_epoch}


def _rng_devices(accelerator: str) -> list[int]:
    """The CUDA devices whose generators :func:`fit_head` forks (none on CPU)."""
    return (
        list(range(torch.cuda.device_count())) if accelerator != "cpu" and torch.cuda.is_available() else []
    )


def _set_up(
    train: FeatureSet,
    val_select: FeatureSet,
    cfg: HeadTrainConfig,
    loggers: Sequence[Logger],
    resume: _Resume,
    loss_settings: dict[str, Any],
    sample_weights: NDArray[np.float64] | None,
) -> tuple[HeadLightningModule, FeatureDataModule]:
    """A new head (drawn from the global generator, which the caller has seeded) in its HeadLightningModule,
    with the resumed state restored, and the data module."""
    model = HeadModel.from_config(cfg, feature_dim=train.feature_dim, num_views=train.num_views)
    module = HeadLightningModule(model, cfg, val_labels=val_select.labels, loggers=loggers, **loss_settings)
    if resume.state is not None:
        module.load_checkpoint_state(resume.state["module"])
        if module.epoch_offset != resume.epochs_done:
            raise ValueError(f"{resume.path}: history rows and epochs_done disagree.")
    data = FeatureDataModule(
        train, val_select, batch_size=cfg.batch_size, seed=cfg.seed, sample_weights=sample_weights
    )
    return module, data


def _train(
    trainer: pl.Trainer,
    module: HeadLightningModule,
    data: FeatureDataModule,
    cfg: HeadTrainConfig,
    out_dir: Path,
    loggers: Sequence[Logger],
) -> int:
    """Replay the restored history to the loggers (global rank 0), then run the epochs left, unless early
    stopping already ended training; the optimizer steps this call took."""
    if trainer.is_global_zero:
        out_dir.mkdir(parents=True, exist_ok=True)
        replay_history(module.history, loggers)
    if cfg.max_epochs - module.epoch_offset <= 0 or module.early_stopped:
        return 0
    with quiet_fit():
        trainer.fit(module, datamodule=data)
    return int(trainer.global_step)


def _outputs(
    best: HeadModel,
    module: HeadLightningModule,
    cfg: HeadTrainConfig,
    trainer: pl.Trainer,
    out_dir: Path,
    loggers: Sequence[Logger],
    optimizer_steps: int,
    resume: _Resume,
) -> FitResult:
    """Load the selected weights into ``best``, save the head (global rank 0) and say what was done."""
    best.load_state_dict(module.best_state)
    best.eval()
    history = pd.DataFrame(module.history, columns=list(HISTORY_COLUMNS)).astype({"epoch": int})
    if trainer.is_global_zero:
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
        head_path=out_dir / HEAD_WEIGHTS,
        config_path=out_dir / HEAD_CONFIG,
        history_path=out_dir / HISTORY,
        resumed_epochs=resume.epochs_done,
        checkpoint_path=resume.path,
        global_rank=int(trainer.global_rank),
    )
