"""Head training on cached backbone features: the fit loop and its crash-safe resume.

A frozen backbone has been run once per image and per view; :func:`fit_head` trains a small head
(:class:`roadwork.models.head.HeadModel`) on those arrays (:class:`~roadwork.train.head_data.FeatureSet`)
with :class:`~roadwork.train.head_module.HeadModule`. Views, aggregation and the saved format are
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

import contextlib
import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
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
from roadwork.progress import progress_enabled
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, load_resume_state, write_checkpoint
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureDataModule, FeatureSet, optimizer_steps_per_epoch
from roadwork.train.head_module import HISTORY_COLUMNS, HeadModule
from roadwork.train.losses import inverse_frequency_weights

CHECKPOINT_FILE = "head-checkpoint.safetensors"


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
