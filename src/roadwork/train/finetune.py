"""End-to-end finetuning (``train.mode: finetune``): LoRA adapters on the backbone plus the head, on images.

Where :func:`roadwork.train.head.fit_head` trains a head on cached features, :func:`finetune` runs the
backbone on every training image every epoch (no feature cache) and trains low-rank adapters
(:mod:`roadwork.models.lora`; DoRA optional) together with the head. It is meant for GPU boxes and runs on
CPU too (the tests use the ``tiny`` backbone for a few steps).

What is shared with head training, so the two modes differ only where they must: the head architecture
(:class:`~roadwork.train.head.HeadModel` on a single view), the loss, class weights, optimizer, schedule,
warmup, gradient accumulation and clipping, precision, EMA, early stopping and the epoch selection on
val_select (:class:`~roadwork.train.head.HeadLightningModule`), all set by the same
:class:`~roadwork.train.head.HeadTrainConfig`; the adapters get their own peak learning rate
(:attr:`FinetuneConfig.backbone_lr`) in a second optimizer parameter group under the same schedule.

Train/eval behaviour is explicit: the backbone's own network stays in eval mode throughout (its dropout and
drop-path are off and batch-norm layers of timm backbones use and keep their running statistics, exactly as
when features are cached), while the adapters' input dropout (``lora_dropout``) and the head's dropout are
active during training steps only. The base weights never change; only adapter and head parameters have
gradients.

After training, the selected epoch's adapters (the EMA weights when EMA is on) are merged into the base
weights (``merge_and_unload``) and the merge is checked as ExPLoRA's is (:mod:`roadwork.models.merge`): the
merged backbone and the head must reproduce the unmerged selected model's val_select logits, both computed in
exact float32, to within :data:`~roadwork.models.merge.MERGE_TOLERANCE` (max abs difference), else
:class:`~roadwork.models.merge.MergeCheckError` (a RuntimeError). ``out_dir`` then holds:

* ``backbone/``: the merged backbone (:meth:`Backbone.save`), so ``load_backbone(out_dir / "backbone")``
  rebuilds it as a plain frozen backbone (a new fingerprint, so its features get their own cache entries);
* ``head.safetensors``, ``head.json``, ``history.csv``: the head in :func:`fit_head`'s format
  (``num_views == 1``), so :func:`~roadwork.train.head.load_head` reads it;
* ``finetune.json``: the LoRA settings, targets, trainable parameter count, the base and merged backbone
  fingerprints and the merge check's difference.

Crash-safe resume (``checkpoint_dir``): as :func:`~roadwork.train.head.fit_head` does, after every epoch the
training state goes atomically into ``checkpoint_dir / "finetune-checkpoint.safetensors"``
(:data:`FINETUNE_CHECKPOINT_FILE`, in :mod:`roadwork.train.checkpoint`'s format), holding of the network only
its trainable tensors (adapters and head; the frozen base weights never change) plus the selected epoch's
val_select logits. It is tied to a fingerprint of the configs, the base backbone's fingerprint, the images
(in-memory images by their pixels, files by path, size and modification time), the labels, the augmentation
(its ``repr``, or its qualified name for a function), the device type and the torch/Lightning versions; a
call with the same inputs continues after the checkpoint's epoch with outputs identical to an uninterrupted
run's on CPU.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import DataLoader

from roadwork.atomic import atomic_write_json
from roadwork.distributed import ACCELERATORS
from roadwork.models.backbone import Backbone
from roadwork.models.head import HeadModel, save_head
from roadwork.models.lora import adapted_copy, lora_target_modules
from roadwork.models.merge import check_merged, exact_float32, merge_adapters
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, load_resume_state
from roadwork.train.finetune_config import FinetuneConfig
from roadwork.train.finetune_data import (
    EpochSampler,
    ImageDataset,
    ImageInput,
    check_images,
    check_labels,
    describe_augment,
    hash_images,
)
from roadwork.train.finetune_model import FinetuneModule, FinetuneNet
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import optimizer_steps_per_epoch
from roadwork.train.head_module import HISTORY_COLUMNS
from roadwork.train.losses import inverse_frequency_weights
from roadwork.train.trainer import EpochCheckpoint, head_trainer, library_versions, quiet_fit, replay_history

__all__ = [
    "BACKBONE_DIR",
    "FINETUNE_CHECKPOINT_FILE",
    "FINETUNE_CONFIG",
    "FinetuneConfig",
    "FinetuneModule",
    "FinetuneNet",
    "FinetuneResult",
    "ImageInput",
    "finetune",
]

BACKBONE_DIR = "backbone"
FINETUNE_CONFIG = "finetune.json"
FINETUNE_CHECKPOINT_FILE = "finetune-checkpoint.safetensors"
FINETUNE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` produced.

    Attributes:
        backbone: the merged backbone (frozen, eval mode, on CPU), equal to ``backbone_dir``.
        head: the selected head (eval mode, on CPU), equal to ``head_path``.
        history: one row per epoch run, columns :data:`~roadwork.train.head.HISTORY_COLUMNS`.
        best_epoch: epoch of the selected weights; best_metric: its selection metric on val_select.
        epochs_run: epochs trained; optimizer_steps: optimizer steps over all epochs.
        val_logits: ``[N_val, 2]`` float32 logits the selected (unmerged) model gave on val_select.
        merge_max_abs_diff: max abs difference between those and the merged backbone + head's logits.
        lora_targets: the adapted modules (names inside ``Backbone.model``).
        trainable_parameters: adapter plus head parameter count.
        backbone_dir, head_path, config_path, history_path, finetune_path: what was written.
        resumed_epochs: epochs restored from a checkpoint instead of being run by this call (0: fresh).
        checkpoint_path: the resume checkpoint (None without ``checkpoint_dir``).
    """

    backbone: Backbone
    head: HeadModel
    history: pd.DataFrame
    best_epoch: int
    best_metric: float
    epochs_run: int
    optimizer_steps: int
    val_logits: NDArray[np.float32]
    merge_max_abs_diff: float
    lora_targets: tuple[str, ...]
    trainable_parameters: int
    backbone_dir: Path
    head_path: Path
    config_path: Path
    history_path: Path
    finetune_path: Path
    resumed_epochs: int = 0
    checkpoint_path: Path | None = None


def finetune_fingerprint(
    backbone: Backbone,
    train_images: Sequence[ImageInput],
    train_labels: NDArray[np.int64],
    val_images: Sequence[ImageInput],
    val_labels: NDArray[np.int64],
    head_cfg: HeadTrainConfig,
    ft_cfg: FinetuneConfig,
    *,
    augment: Callable[..., Any] | None,
    device_type: str,
) -> str:
    """SHA-256 (hex) tying a :func:`finetune` checkpoint to its inputs (see the module docstring)."""
    h = hashlib.sha256()
    header = {
        "kind": "roadwork.finetune",
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "head": asdict(head_cfg),
        "finetune": asdict(ft_cfg),
        "backbone": backbone.fingerprint(),
        "augment": describe_augment(augment),
        "device_type": device_type,
        "versions": library_versions(),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for images, labels in ((train_images, train_labels), (val_images, val_labels)):
        h.update(f"|{len(images)}|".encode())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        hash_images(h, images)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class _Job:
    """:func:`finetune`'s checked inputs: labels as int64, and the LoRA targets."""

    backbone: Backbone
    train_images: Sequence[ImageInput]
    train_y: NDArray[np.int64]
    val_images: Sequence[ImageInput]
    val_y: NDArray[np.int64]
    head_cfg: HeadTrainConfig
    ft_cfg: FinetuneConfig
    augment: Callable[[Image.Image, np.random.Generator], Image.Image] | None
    targets: list[str]


def _check_arguments(
    backbone: Backbone,
    train_images: Sequence[ImageInput],
    train_labels: Any,
    val_images: Sequence[ImageInput],
    val_labels: Any,
    head_cfg: HeadTrainConfig,
    ft_cfg: FinetuneConfig,
    augment: Any,
    accelerator: str,
    num_workers: int,
) -> _Job:
    """:func:`finetune`'s arguments checked (errors name the argument)."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if not isinstance(head_cfg, HeadTrainConfig):
        raise TypeError(f"head_cfg must be a HeadTrainConfig, got {type(head_cfg).__name__}.")
    if not isinstance(ft_cfg, FinetuneConfig):
        raise TypeError(f"ft_cfg must be a FinetuneConfig, got {type(ft_cfg).__name__}.")
    check_images(train_images, "train_images")
    check_images(val_images, "val_images")
    train_y = check_labels(train_labels, len(train_images), "train_labels")
    val_y = check_labels(val_labels, len(val_images), "val_labels")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be callable as augment(image, rng), got {type(augment).__name__}.")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}.")
    targets = lora_target_modules(backbone)  # also rejects a backbone that already carries adapters
    return _Job(backbone, train_images, train_y, val_images, val_y, head_cfg, ft_cfg, augment, targets)


def _loaders(job: _Job, num_workers: int) -> tuple[DataLoader, DataLoader]:
    """Training batches (augmented, shuffled per epoch) and val_select batches (in order)."""
    cfg, preprocess = job.head_cfg, job.backbone.preprocess
    train = ImageDataset(job.train_images, job.train_y, preprocess, augment=job.augment, seed=cfg.seed)
    val = ImageDataset(job.val_images, job.val_y, preprocess, augment=None, seed=cfg.seed)
    return (
        DataLoader(
            train,
            batch_size=cfg.batch_size,
            sampler=EpochSampler(len(job.train_y), seed=cfg.seed, shuffle=True),
            num_workers=num_workers,
        ),
        DataLoader(
            val,
            batch_size=cfg.batch_size,
            sampler=EpochSampler(len(job.val_y), seed=cfg.seed, shuffle=False),
            num_workers=num_workers,
        ),
    )


def _checkpoint(job: _Job, checkpoint_dir: Path, accelerator: str) -> EpochCheckpoint:
    """The per-epoch checkpoint callback, holding the matching checkpoint found there (if any)."""
    path = checkpoint_dir / FINETUNE_CHECKPOINT_FILE
    use_gpu = accelerator in ("gpu", "auto") and torch.cuda.is_available()
    fingerprint = finetune_fingerprint(
        job.backbone,
        job.train_images,
        job.train_y,
        job.val_images,
        job.val_y,
        job.head_cfg,
        job.ft_cfg,
        augment=job.augment,
        device_type="cuda" if use_gpu else "cpu",
    )
    return EpochCheckpoint(path, fingerprint, resume=load_resume_state(path, fingerprint))


def _build(job: _Job, loggers: Sequence[Logger]) -> FinetuneModule:
    """The module around a fresh head and adapted backbone copy (draws from torch's global RNG)."""
    cfg = job.head_cfg
    # Head first, so that for one seed it starts from the weights fit_head would give it; then lora_A.
    torch.manual_seed(cfg.seed)
    head = HeadModel.from_config(cfg, feature_dim=job.backbone.feature_dim, num_views=1)
    net = FinetuneNet(adapted_copy(job.backbone, job.ft_cfg, job.targets), head).train()
    class_weight = (
        torch.tensor(inverse_frequency_weights(job.train_y), dtype=torch.float32)
        if cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(len(job.train_y), cfg.batch_size, cfg.accumulate_grad_batches)
    return FinetuneModule(
        net,
        cfg,
        job.ft_cfg,
        class_weight=class_weight,
        steps_per_epoch=steps_per_epoch,
        val_labels=job.val_y,
        loggers=loggers,
    )


def _fit(
    module: FinetuneModule,
    head_cfg: HeadTrainConfig,
    loaders: tuple[DataLoader, DataLoader],
    checkpoint: EpochCheckpoint | None,
    loggers: Sequence[Logger],
    callbacks: Sequence[pl.Callback],
    show_progress: bool,
    accelerator: str,
) -> tuple[pl.Trainer, int]:
    """Train the epochs a resumed checkpoint has not done; the trainer, and optimizer steps of all epochs."""
    resume = None
    if checkpoint is not None and checkpoint.resume is not None:
        resume = checkpoint.resume
        module.load_checkpoint_state(resume["module"])
        if module.epoch_offset != int(resume["epochs_done"]):
            raise ValueError(f"{checkpoint.path}: history rows and epochs_done disagree.")
        loaders[0].sampler.epoch_offset = module.epoch_offset  # type: ignore[attr-defined]
    remaining = head_cfg.max_epochs - module.epoch_offset
    trainer = head_trainer(
        head_cfg,
        max_epochs=max(1, remaining),
        accelerator=accelerator,
        show_progress=show_progress,
        callbacks=[*([checkpoint] if checkpoint is not None else []), *callbacks],
    )
    replay_history(module.history, loggers)
    optimizer_steps = 0 if resume is None else int(resume["optimizer_steps"])
    if remaining > 0 and not module.early_stopped:
        # intended: the backbone network stays in eval mode (see the module docstring)
        with quiet_fit((r".*module\(s\) in eval mode at the start of training", UserWarning)):
            trainer.fit(module, train_dataloaders=loaders[0], val_dataloaders=loaders[1])
        optimizer_steps += int(trainer.global_step)
    return trainer, optimizer_steps


def _logits(net: FinetuneNet, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """``net``'s float32 logits on ``loader``'s images, as the merge check computes them on both sides."""
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False), exact_float32():
        for pixels, _ in loader:
            out.append(net(pixels.to(device)).float().cpu())
    return torch.cat(out)


def _merge_and_check(
    module: FinetuneModule, val_loader: DataLoader, device: torch.device, backbone_dir: Path
) -> tuple[Backbone, HeadModel, float]:
    """The selected epoch's adapters folded into the backbone, the head, and the merge check's difference."""
    if module.best_val_logits is None:
        raise RuntimeError("no epoch was selected; training ran no validation.")
    selected = module.evaluated_model
    selected.load_state_dict(module.best_state)
    selected.eval().to(device)
    reference = _logits(selected, val_loader, device)
    merged = merge_adapters(selected.backbone, backbone_id=str(backbone_dir))  # in place: selected is merged
    diff = check_merged(
        reference, _logits(selected, val_loader, device), what="backbone + head val_select logits"
    )
    return merged.cpu(), selected.head.eval().cpu(), diff


def _save(
    job: _Job,
    out_dir: Path,
    module: FinetuneModule,
    merged: Backbone,
    head: HeadModel,
    diff: float,
    optimizer_steps: int,
    trainable: int,
    checkpoint: EpochCheckpoint | None,
) -> FinetuneResult:
    """Write the merged backbone, the head (:func:`~roadwork.train.head.fit_head`'s format) and
    ``finetune.json``; what :func:`finetune` returns."""
    merged.save(out_dir / BACKBONE_DIR)
    history = pd.DataFrame(module.history, columns=list(HISTORY_COLUMNS)).astype({"epoch": int})
    head_path, config_path, history_path = save_head(
        out_dir,
        head,
        job.head_cfg,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        optimizer_steps=optimizer_steps,
    )
    meta = {
        "format_version": FINETUNE_FORMAT_VERSION,
        "finetune": asdict(job.ft_cfg),
        "lora_targets": list(job.targets),
        "trainable_parameters": trainable,
        "base_backbone": {
            "id": job.backbone.backbone_id,
            "family": job.backbone.family,
            "fingerprint": job.backbone.fingerprint(),
        },
        "backbone_fingerprint": merged.fingerprint(),
        "merge_max_abs_diff": diff,
        "best_epoch": module.best_epoch,
    }
    finetune_path = atomic_write_json(out_dir / FINETUNE_CONFIG, meta, sort_keys=False)
    resume = None if checkpoint is None else checkpoint.resume
    return FinetuneResult(
        backbone=merged,
        head=head,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        epochs_run=len(module.history),
        optimizer_steps=optimizer_steps,
        val_logits=module.best_val_logits,  # type: ignore[arg-type]  # _merge_and_check: not None
        merge_max_abs_diff=diff,
        lora_targets=tuple(job.targets),
        trainable_parameters=trainable,
        backbone_dir=out_dir / BACKBONE_DIR,
        head_path=head_path,
        config_path=config_path,
        history_path=history_path,
        finetune_path=finetune_path,
        resumed_epochs=0 if resume is None else int(resume["epochs_done"]),
        checkpoint_path=None if checkpoint is None else checkpoint.path,
    )


# ------------------------------------------------------------------------------------------------- public


def finetune(
    backbone: Backbone,
    train_images: Sequence[ImageInput],
    train_labels: Sequence[int] | NDArray[np.integer],
    val_images: Sequence[ImageInput],
    val_labels: Sequence[int] | NDArray[np.integer],
    head_cfg: HeadTrainConfig,
    ft_cfg: FinetuneConfig,
    *,
    out_dir: Path,
    augment: Callable[[Image.Image, np.random.Generator], Image.Image] | None = None,
    loggers: Sequence[Logger] = (),
    callbacks: Sequence[pl.Callback] = (),
    show_progress: bool = True,
    accelerator: str = "auto",
    num_workers: int = 0,
    checkpoint_dir: Path | None = None,
) -> FinetuneResult:
    """Train LoRA adapters and a head end-to-end on images; select on val_select; merge; save in ``out_dir``.

    Args:
        backbone: a plain frozen :class:`Backbone`; it is copied, never modified.
        train_images, val_images: RGB PIL images or image file paths (see :data:`ImageInput`); preprocessed
            with :func:`~roadwork.data.preprocess.to_tensor_batch` and the backbone's preprocessing.
        train_labels, val_labels: 0/1 per image (1 = roadwork); both classes must occur in each split.
        head_cfg: everything but the LoRA settings, as for :func:`~roadwork.train.head.fit_head` (the
            aggregation fields are inactive: one view per image).
        ft_cfg: the LoRA settings.
        out_dir: output folder (created); see the module docstring for its contents.
        augment: optional ``augment(image, rng) -> image`` for training images, before preprocessing (e.g.
            :class:`~roadwork.data.preprocess.TrainAugment`), with a fresh ``rng`` per (seed, epoch, image).
        loggers: receive each epoch's history row (not finalised: the caller owns their runs).
        callbacks: extra Lightning callbacks. show_progress: Lightning's progress bar.
        accelerator: Lightning accelerator, one device: ``auto`` (a GPU if there is one), ``cpu``, ``gpu``.
        num_workers: DataLoader worker processes for decoding, augmenting and preprocessing (0: in-process).
        checkpoint_dir: where :data:`FINETUNE_CHECKPOINT_FILE` is written after every epoch and resumed from
            (see the module docstring; its history rows are first replayed to ``loggers``); None: none. Use
            one folder per job, outside anything deleted before a rerun.

    Deterministic for a fixed ``head_cfg.seed`` on CPU; the caller's global torch RNG state is left
    untouched. Raises TypeError/ValueError naming the argument for bad inputs, FloatingPointError when the
    training loss becomes non-finite and :class:`~roadwork.models.merge.MergeCheckError` (a RuntimeError)
    when the merged model fails the merge check.
    """
    job = _check_arguments(
        backbone,
        train_images,
        train_labels,
        val_images,
        val_labels,
        head_cfg,
        ft_cfg,
        augment,
        accelerator,
        num_workers,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaders = _loaders(job, num_workers)
    checkpoint = None if checkpoint_dir is None else _checkpoint(job, Path(checkpoint_dir), accelerator)
    rng_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=rng_devices):
        module = _build(job, loggers)
        trainer, optimizer_steps = _fit(
            module, head_cfg, loaders, checkpoint, loggers, callbacks, show_progress, accelerator
        )
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)  # before merging
    merged, head, diff = _merge_and_check(
        module, loaders[1], trainer.strategy.root_device, out_dir / BACKBONE_DIR
    )
    result = _save(job, out_dir, module, merged, head, diff, optimizer_steps, trainable, checkpoint)
    for logger in loggers:
        logger.save()
    return result
