"""End-to-end finetuning (``train.mode: finetune``): LoRA adapters on the backbone plus the head, on images.

Where :func:`roadwork.train.head.fit_head` trains a head on cached features, :func:`finetune` runs the
backbone on every training image every epoch (no feature cache) and trains low-rank adapters
(:mod:`roadwork.models.lora`; DoRA optional) together with the head. It is meant for GPU boxes and runs on
CPU too (the tests use the ``tiny`` backbone for a few steps).

What is shared with head training, so the two modes differ only where they must: the head architecture
(:class:`~roadwork.train.head.HeadModel` on a single view), the loss, class weights, optimizer, schedule,
warmup, gradient accumulation and clipping, precision, EMA, early stopping and the epoch selection on
val_select (:class:`~roadwork.train.head.HeadModule`), all set by the same
:class:`~roadwork.train.head.HeadTrainConfig`; the adapters get their own peak learning rate
(:attr:`FinetuneConfig.backbone_lr`) in a second optimizer parameter group under the same schedule.

Train/eval behaviour is explicit: the backbone's own network stays in eval mode throughout (its dropout and
drop-path are off and batch-norm layers of timm backbones use and keep their running statistics, exactly as
when features are cached), while the adapters' input dropout (``lora_dropout``) and the head's dropout are
active during training steps only. The base weights never change; only adapter and head parameters have
gradients.

After training, the selected epoch's adapters (the EMA weights when EMA is on) are merged into the base
weights (``merge_and_unload``) and the merge is checked: the merged backbone and the head must reproduce the
selected model's val_select logits (max abs difference <= ``1e-3 * max(1, max |logit|)``), else
RuntimeError. ``out_dir`` then holds:

* ``backbone/``: the merged backbone (:meth:`Backbone.save`), so ``load_backbone(out_dir / "backbone")``
  rebuilds it as a plain frozen backbone (a new fingerprint, so its features get their own cache entries);
* ``head.safetensors``, ``head.json``, ``history.csv``: the head in :func:`fit_head`'s format
  (``num_views == 1``), so :func:`~roadwork.train.head.load_head` reads it;
* ``finetune.json``: the LoRA settings, targets, trainable parameter count, the base and merged backbone
  fingerprints and the merge check's difference.

Crash-safe resume (``checkpoint_dir``): as :func:`~roadwork.train.head.fit_head` does, after every epoch the
training state goes atomically into ``checkpoint_dir / "finetune-checkpoint.safetensors"``
(:data:`FINETUNE_CHECKPOINT_FILE`, same format, see :mod:`roadwork.train.head`), holding of the network only
its trainable tensors (adapters and head; the frozen base weights never change) plus the selected epoch's
val_select logits. It is tied to a fingerprint of the configs, the base backbone's fingerprint, the images
(in-memory images by their pixels, files by path, size and modification time), the labels, the augmentation
(its ``repr``, or its qualified name for a function), the device type and the torch/Lightning versions; a call
with the same inputs continues after the checkpoint's epoch with outputs identical to an uninterrupted run's
on CPU.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import Logger
from numpy.typing import NDArray
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from roadwork.atomic import atomic_write_text
from roadwork.data.images import open_image, pillow_pixel_limit
from roadwork.data.preprocess import PreprocessConfig, to_tensor_batch
from roadwork.distributed import ACCELERATORS
from roadwork.models.backbone import Backbone
from roadwork.models.lora import apply_lora, lora_target_modules, merge_lora
from roadwork.train.head import (
    CHECKPOINT_FORMAT_VERSION,
    HISTORY_COLUMNS,
    EpochCheckpoint,
    HeadModel,
    HeadModule,
    HeadTrainConfig,
    head_trainer,
    library_versions,
    load_resume_state,
    optimizer_steps_per_epoch,
    quiet_fit,
    replay_history,
    save_head,
)
from roadwork.train.losses import inverse_frequency_weights

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
# Merged vs. adapter forward: same math in a different order, so float32 rounding only.
MERGE_TOLERANCE = 1e-3

ImageInput = Image.Image | str | os.PathLike
"""A training or validation image: an RGB ``PIL.Image.Image`` in memory, or the path of an image file
(decoded on every access with :func:`roadwork.data.images.open_image`, converted to RGB)."""


# ------------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class FinetuneConfig:
    """The LoRA knobs of ``train.mode: finetune``; every other knob is in :class:`HeadTrainConfig`.

    Attributes:
        lora_rank: adapter rank ``r`` (>= 1).
        lora_alpha: adapter scale numerator (> 0); the update is ``(lora_alpha / lora_rank) * B @ A``.
        lora_dropout: dropout probability in [0, 1) on the adapters' input, during training steps only.
        use_dora: DoRA (weight-decomposed LoRA: adds a trainable magnitude per output unit) instead of LoRA.
        backbone_lr: peak learning rate (> 0) of the adapter parameters; the head uses
            ``HeadTrainConfig.lr``. Both follow ``HeadTrainConfig.schedule`` and its warmup.
    """

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False
    backbone_lr: float = 1e-4

    _RANGES: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {
        "lora_rank": (lambda v: v >= 1, ">= 1"),
        "lora_alpha": (lambda v: 0 < v < math.inf, "finite and > 0"),
        "lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "backbone_lr": (lambda v: 0 < v < math.inf, "finite and > 0"),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(value, (bool, np.bool_)):
                    raise TypeError(f"FinetuneConfig.{f.name} must be true or false, got {value!r}.")
                object.__setattr__(self, f.name, bool(value))
            elif f.type == "int":
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                    raise TypeError(f"FinetuneConfig.{f.name} must be an integer, got {value!r}.")
                object.__setattr__(self, f.name, int(value))
            elif f.type == "float":
                if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)
                ):
                    raise TypeError(f"FinetuneConfig.{f.name} must be a number, got {value!r}.")
                object.__setattr__(self, f.name, float(value))
        for name, (ok, expected) in self._RANGES.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"FinetuneConfig.{name} is {getattr(self, name)!r}; it must be {expected}.")


# --------------------------------------------------------------------------------------------------- data


def _load_image(item: ImageInput) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    limit = pillow_pixel_limit()
    return open_image(Path(item), max_pixels=limit if limit is not None else 1 << 40)


class _ImageDataset(Dataset):
    """``(pixels [3, S, S] float32, label int64)`` per image; training copies are augmented per epoch.

    Index ``k`` stands for image ``k % N`` in epoch ``k // N`` (see :class:`_EpochSampler`); the augmentation
    draws from ``np.random.default_rng([seed, epoch, image])``, so it is reproducible and independent of
    batch order and of which worker process loads the item.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        labels: NDArray[np.int64],
        preprocess: PreprocessConfig,
        *,
        augment: Callable[[Image.Image, np.random.Generator], Image.Image] | None,
        seed: int,
    ) -> None:
        self._images = list(images)
        self._labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self._preprocess = preprocess
        self._augment = augment
        self._seed = seed

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(int(key), len(self._images))
        image = _load_image(self._images[index])
        if self._augment is not None:
            image = self._augment(image, np.random.default_rng([self._seed, epoch, index]))
            if not isinstance(image, Image.Image) or image.mode != "RGB":
                raise TypeError(
                    f"augment must return an RGB PIL image, got {type(image).__name__} "
                    f"{getattr(image, 'mode', '')!s} for image {index}."
                )
        return to_tensor_batch([image], self._preprocess)[0], self._labels[index]


class _EpochSampler(Sampler[int]):
    """Yields ``epoch * N + i`` over the images ``i``; shuffled by ``default_rng([seed, epoch])`` if asked.

    Lightning calls :meth:`set_epoch` at the start of every training epoch with its own count, which restarts
    at 0 on a resumed run; ``epoch_offset`` (the epochs restored from a checkpoint) is added to it.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool) -> None:
        self._n, self._seed, self._shuffle = n, seed, shuffle
        self.epoch = 0
        self.epoch_offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.epoch_offset + int(epoch)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        order = (
            np.random.default_rng([self._seed, self.epoch]).permutation(self._n)
            if self._shuffle
            else np.arange(self._n)
        )
        return iter((self.epoch * self._n + order).tolist())


def _check_images(images: Sequence[ImageInput], name: str) -> None:
    if isinstance(images, (str, os.PathLike, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(
            f"{name} must be a sequence of PIL images or image paths, got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"{name} is empty.")
    for k, item in enumerate(images):
        if isinstance(item, Image.Image):
            if item.mode != "RGB":
                raise ValueError(
                    f"{name}[{k}] has mode {item.mode!r}; expected 'RGB' (decode with "
                    "roadwork.data.images.open_image, which converts every mode to RGB)."
                )
        elif isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                raise FileNotFoundError(f"{name}[{k}]: {item} is not a file.")
        else:
            raise TypeError(f"{name}[{k}] must be a PIL image or a path, got {type(item).__name__}.")


def _check_labels(labels: Any, n: int, name: str) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its images, got {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{name} must hold integers 0/1, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be 0 or 1, found {sorted(set(array.tolist()) - {0, 1})[:5]}.")
    missing = sorted({0, 1} - set(array.tolist()))
    if missing:
        raise ValueError(
            f"{name} has no example of class {missing[0]}; training and its MCC-based selection need both "
            "classes in train and val_select."
        )
    return array


# -------------------------------------------------------------------------------------------------- model


class FinetuneNet(nn.Module):
    """Pixels ``[B, 3, S, S]`` -> logits ``[B, 2]``: an adapted :class:`Backbone` feeding a single-view head.

    ``train(True)`` puts the head and the adapted layers (peft ``LoraLayer``: adapters, their
    ``lora_dropout`` and the wrapped ``nn.Linear``/``nn.Conv2d``, which behave the same in both modes) in
    training mode, while the rest of the backbone network stays in eval mode (:meth:`Backbone.train` enforces
    that); see the module docstring.
    """

    def __init__(self, backbone: Backbone, head: HeadModel) -> None:
        super().__init__()
        if head.num_views != 1 or head.feature_dim != backbone.feature_dim:
            raise ValueError(
                f"head must take 1 view of {backbone.feature_dim} features, got {head.num_views} views of "
                f"{head.feature_dim}."
            )
        self.backbone = backbone
        self.head = head

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)  # the Backbone child forces its whole subtree to eval mode
        from peft.tuners.lora import LoraLayer

        for module in self.backbone.modules():
            if isinstance(module, LoraLayer):
                # the whole adapted layer, not only lora_dropout: peft's DoRA skips its dropout (and may
                # cache weights) when the layer itself is in eval mode; its base Linear/Conv2d has no modes
                module.train(mode)
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values).unsqueeze(1))


class FinetuneModule(HeadModule):
    """:class:`HeadModule` (loss, schedule, EMA, selection, history, early stop) on a :class:`FinetuneNet`.

    Differences: two optimizer parameter groups (head at ``HeadTrainConfig.lr``, adapters at
    ``FinetuneConfig.backbone_lr``; ``history.lr`` is the head's), EMA over the trainable parameters only,
    device-agnostic float32 validation, and :attr:`best_val_logits` (val_select logits of the selected epoch).
    """

    def __init__(
        self,
        net: FinetuneNet,
        cfg: HeadTrainConfig,
        ft_cfg: FinetuneConfig,
        *,
        class_weight: torch.Tensor | None,
        steps_per_epoch: int,
        val_labels: NDArray[np.int64],
        loggers: Sequence[Logger] = (),
    ) -> None:
        super().__init__(
            net,  # type: ignore[arg-type]  # HeadModule only calls the model and iterates its parameters
            cfg,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            val_labels=val_labels,
            loggers=loggers,
        )
        self.ft_cfg = ft_cfg
        self.trainable_names = tuple(n for n, p in net.named_parameters() if p.requires_grad)
        self.best_val_logits: NDArray[np.float32] | None = None

    def param_groups(self) -> list[dict[str, Any]]:
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        adapters = [p for p in self.model.backbone.parameters() if p.requires_grad]
        return [
            {"params": head, "lr": self.cfg.lr},
            {"params": adapters, "lr": self.ft_cfg.backbone_lr},
        ]

    def on_fit_start(self) -> None:
        if self.class_weight is not None:
            self.class_weight = self.class_weight.to(self.device)

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self.model.train()

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self._last_lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step(closure=optimizer_closure)
        if self.ema is not None:
            ema_params = dict(self.ema.named_parameters())
            model_params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name in self.trainable_names:
                    ema_params[name].lerp_(model_params[name], 1.0 - self.cfg.ema_decay)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        with torch.autocast(self.device.type, enabled=False):
            self._val_logits.append(self.evaluated_model(batch[0]).float().cpu())

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat(self._val_logits).numpy().copy()
        super().on_validation_epoch_end()
        if self.best_epoch == self.epoch:
            self.best_val_logits = logits

    def checkpoint_state(self) -> dict[str, Any]:
        """:meth:`HeadModule.checkpoint_state` with only the trainable tensors, plus ``best_val_logits``."""
        state = super().checkpoint_state()
        keep = set(self.trainable_names)
        for key in ("model", "ema", "best_state"):
            if state[key] is not None:
                state[key] = {k: v for k, v in state[key].items() if k in keep}
        logits = self.best_val_logits
        state["best_val_logits"] = None if logits is None else torch.from_numpy(logits)
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` onto this module's (unchanged) frozen weights."""
        keep = set(self.trainable_names)
        for key in ("model", "ema", "best_state"):
            if state[key] is not None and set(state[key]) != keep:
                raise ValueError(f"checkpoint {key!r} does not hold exactly the trainable tensors.")
        full = dict(state)
        full["model"] = {**self.model.state_dict(), **state["model"]}
        if self.ema is not None:
            full["ema"] = {**self.ema.state_dict(), **state["ema"]}
        full["best_state"] = {**self.evaluated_model.state_dict(), **state["best_state"]}
        super().load_checkpoint_state(full)
        logits = state["best_val_logits"]
        self.best_val_logits = None if logits is None else logits.numpy().copy()


# ------------------------------------------------------------------------------------------------- public


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


def _describe(augment: Callable[..., Any] | None) -> str | None:
    """A stable description of ``augment`` for the checkpoint fingerprint (never a memory address)."""
    if augment is None:
        return None
    if inspect.isfunction(augment) or inspect.ismethod(augment):
        return f"{augment.__module__}.{augment.__qualname__}"
    text = repr(augment)
    if " at 0x" in text:
        kind = type(augment)
        return f"{kind.__module__}.{kind.__qualname__}"
    return text


def _hash_images(h: Any, images: Sequence[ImageInput]) -> None:
    for item in images:
        if isinstance(item, Image.Image):
            h.update(f"image|{item.mode}|{item.size}|".encode())
            h.update(item.tobytes())
        else:
            path = Path(item).resolve()
            stat = path.stat()
            h.update(f"file|{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())


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
        "augment": _describe(augment),
        "device_type": device_type,
        "versions": library_versions(),
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for images, labels in ((train_images, train_labels), (val_images, val_labels)):
        h.update(f"|{len(images)}|".encode())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        _hash_images(h, images)
    return h.hexdigest()


def _logits(
    backbone: Backbone, head: HeadModel, loader: DataLoader, device: torch.device
) -> NDArray[np.float32]:
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        for pixels, _ in loader:
            out.append(head(backbone(pixels.to(device)).unsqueeze(1)).float().cpu())
    return torch.cat(out).numpy()


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
        head_cfg: head, loss, optimizer, schedule, epochs, batch size, precision, EMA, early stopping,
            selection and seed, as for :func:`~roadwork.train.head.fit_head` (the aggregation fields are
            inactive: one view per image).
        ft_cfg: the LoRA settings.
        out_dir: output folder (created); see the module docstring for its contents.
        augment: optional ``augment(image, rng) -> image`` (e.g.
            :class:`~roadwork.data.preprocess.TrainAugment`) applied to training images only, before
            preprocessing, with a fresh ``rng`` per (seed, epoch, image).
        loggers: receive each epoch's history row (not finalised: the caller owns their runs).
        callbacks: extra Lightning callbacks. show_progress: Lightning's progress bar.
        accelerator: Lightning accelerator, one device: ``auto`` (a GPU if there is one), ``cpu``, ``gpu``.
        num_workers: DataLoader worker processes for decoding, augmenting and preprocessing (0: in-process).
        checkpoint_dir: where the resume checkpoint :data:`FINETUNE_CHECKPOINT_FILE` is written after every
            epoch and looked for at the start (see the module docstring); None (default): none. A matching
            checkpoint continues training after its epoch (its history rows are first replayed to
            ``loggers``); use one folder per job, outside anything deleted before a rerun.

    Deterministic for a fixed ``head_cfg.seed`` on CPU; the caller's global torch RNG state is left
    untouched. Raises TypeError/ValueError naming the argument for bad inputs, FloatingPointError when the
    training loss becomes non-finite and RuntimeError when the merged model fails the merge check.
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if not isinstance(head_cfg, HeadTrainConfig):
        raise TypeError(f"head_cfg must be a HeadTrainConfig, got {type(head_cfg).__name__}.")
    if not isinstance(ft_cfg, FinetuneConfig):
        raise TypeError(f"ft_cfg must be a FinetuneConfig, got {type(ft_cfg).__name__}.")
    _check_images(train_images, "train_images")
    _check_images(val_images, "val_images")
    train_y = _check_labels(train_labels, len(train_images), "train_labels")
    val_y = _check_labels(val_labels, len(val_images), "val_labels")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment must be callable as augment(image, rng), got {type(augment).__name__}.")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}.")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}.")
    targets = lora_target_modules(backbone)  # also rejects a backbone that already carries adapters
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    backbone_dir = out_dir / BACKBONE_DIR

    class_weight = (
        torch.tensor(inverse_frequency_weights(train_y), dtype=torch.float32)
        if head_cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(
        len(train_y), head_cfg.batch_size, head_cfg.accumulate_grad_batches
    )
    train_loader = DataLoader(
        _ImageDataset(train_images, train_y, backbone.preprocess, augment=augment, seed=head_cfg.seed),
        batch_size=head_cfg.batch_size,
        sampler=_EpochSampler(len(train_y), seed=head_cfg.seed, shuffle=True),
        num_workers=num_workers,
    )
    val_loader = DataLoader(
        _ImageDataset(val_images, val_y, backbone.preprocess, augment=None, seed=head_cfg.seed),
        batch_size=head_cfg.batch_size,
        sampler=_EpochSampler(len(val_y), seed=head_cfg.seed, shuffle=False),
        num_workers=num_workers,
    )
    checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / FINETUNE_CHECKPOINT_FILE
    resume = None
    if checkpoint_path is not None:
        use_gpu = accelerator in ("gpu", "auto") and torch.cuda.is_available()
        fingerprint = finetune_fingerprint(
            backbone,
            train_images,
            train_y,
            val_images,
            val_y,
            head_cfg,
            ft_cfg,
            augment=augment,
            device_type="cuda" if use_gpu else "cpu",
        )
        resume = load_resume_state(checkpoint_path, fingerprint)
    rng_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=rng_devices):
        # Head first, so that for one seed it starts from the weights fit_head would give it; then lora_A.
        torch.manual_seed(head_cfg.seed)
        head = HeadModel.from_config(head_cfg, feature_dim=backbone.feature_dim, num_views=1)
        work = copy.deepcopy(backbone)
        work.model = apply_lora(
            work.model,
            rank=ft_cfg.lora_rank,
            alpha=ft_cfg.lora_alpha,
            dropout=ft_cfg.lora_dropout,
            use_dora=ft_cfg.use_dora,
            targets=targets,
        )
        net = FinetuneNet(work, head).train()
        module = FinetuneModule(
            net,
            head_cfg,
            ft_cfg,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            val_labels=val_y,
            loggers=loggers,
        )
        if resume is not None:
            module.load_checkpoint_state(resume["module"])
            if module.epoch_offset != int(resume["epochs_done"]):
                raise ValueError(f"{checkpoint_path}: history rows and epochs_done disagree.")
            train_loader.sampler.epoch_offset = module.epoch_offset  # type: ignore[attr-defined]
        remaining = head_cfg.max_epochs - module.epoch_offset
        checkpoint = (
            None if checkpoint_path is None else EpochCheckpoint(checkpoint_path, fingerprint, resume=resume)
        )
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
                trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
            optimizer_steps += int(trainer.global_step)
    device = trainer.strategy.root_device
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)

    selected = module.evaluated_model
    selected.load_state_dict(module.best_state)
    selected.eval().to(device)
    merged = selected.backbone
    merged.model = merge_lora(merged.model)
    merged.model.requires_grad_(False)
    merged.backbone_id = str(backbone_dir)
    head = selected.head.eval()
    if module.best_val_logits is None:
        raise RuntimeError("no epoch was selected; training ran no validation.")
    check = _logits(merged, head, val_loader, device)
    diff = float(np.abs(check - module.best_val_logits).max())
    tolerance = MERGE_TOLERANCE * max(1.0, float(np.abs(module.best_val_logits).max()))
    if not diff <= tolerance:
        raise RuntimeError(
            f"merge check failed: merged backbone + head differ from the selected model's val_select logits "
            f"by {diff:.3g} (tolerance {tolerance:.3g})."
        )
    merged.cpu()
    head.cpu()

    merged.save(backbone_dir)
    history = pd.DataFrame(module.history, columns=list(HISTORY_COLUMNS)).astype({"epoch": int})
    head_path, config_path, history_path = save_head(
        out_dir,
        head,
        head_cfg,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        optimizer_steps=optimizer_steps,
    )
    meta = {
        "format_version": FINETUNE_FORMAT_VERSION,
        "finetune": asdict(ft_cfg),
        "lora_targets": list(targets),
        "trainable_parameters": trainable,
        "base_backbone": {
            "id": backbone.backbone_id,
            "family": backbone.family,
            "fingerprint": backbone.fingerprint(),
        },
        "backbone_fingerprint": merged.fingerprint(),
        "merge_max_abs_diff": diff,
        "best_epoch": module.best_epoch,
    }
    finetune_path = atomic_write_text(out_dir / FINETUNE_CONFIG, json.dumps(meta, indent=2) + "\n")
    for logger in loggers:
        logger.save()
    return FinetuneResult(
        backbone=merged,
        head=head,
        history=history,
        best_epoch=module.best_epoch,
        best_metric=module.best_metric,
        epochs_run=len(module.history),
        optimizer_steps=optimizer_steps,
        val_logits=module.best_val_logits,
        merge_max_abs_diff=diff,
        lora_targets=tuple(targets),
        trainable_parameters=trainable,
        backbone_dir=backbone_dir,
        head_path=head_path,
        config_path=config_path,
        history_path=history_path,
        finetune_path=finetune_path,
        resumed_epochs=0 if resume is None else int(resume["epochs_done"]),
        checkpoint_path=checkpoint_path,
    )
