"""ExPLoRA (arXiv 2406.10973): continue the backbone's self-supervised pretraining on the target domain.

:func:`adapt_backbone` trains the :class:`~roadwork.adapt.ssl.ExploraSSL` student/teacher pair on the
given images (the caller passes train-split images, plus any unlabeled pool; never validation splits),
merges the student's adapters, checks the merge and saves the adapted backbone. The head is then trained on
the adapted backbone's features exactly as on the base backbone's.

One optimiser step (:func:`ssl_step`), in order: teacher forward (no gradients) on the 2 global crops; student
forward on the iBOT-masked global crops and the local crops; DINO + ``ibot_weight`` * iBOT +
``koleo_weight`` * KoLeo; backward; global gradient-norm clipping; the head's last-layer gradients dropped
during the first ``freeze_last_layer_steps`` steps; AdamW at the step's learning rate (linear warm-up,
cosine decay); EMA update of the teacher with a momentum on a cosine schedule from ``teacher_momentum`` to 1.

Reproducibility and resumption: initialisation is seeded by ``cfg.seed``; crops by (seed, epoch, image);
masks and adapter dropout by (seed, step); the image order by (seed, epoch). So a run is a function of its
inputs on CPU, and a resumed run continues exactly where the checkpoint left off. Checkpoints
(``checkpoint_dir``) are written at every epoch end, every ``checkpoint_every_steps`` steps and after the
last step, as ``explora-<step>.safetensors`` (trainable student weights, their teacher copies, both heads,
the teacher centres and the AdamW state) plus ``explora-<step>.json`` (step, epochs done, config,
base-backbone fingerprint, image-list digest, history so far); only the newest is kept. No RNG state is
needed: every random draw is seeded from (seed, epoch, image) or (seed, step). A run finds the newest complete
checkpoint and resumes from it; one from a different config, backbone or image list is an error.

``out_dir`` receives ``backbone/`` (:meth:`Backbone.save`, so ``load_backbone(str(out_dir / "backbone"))``
rebuilds it with the same family and preprocessing), ``history.csv`` (one row per step) and ``adapt.json``
(settings, layout, parameter counts, losses, fingerprints, the merge check's difference): all three are
functions of the inputs, so a resumed run writes the same files as an uninterrupted one (where it resumed is
in :class:`AdaptResult` only).

Several processes (``devices > 1``, strategy ``ddp``, as :func:`roadwork.train.head.fit_head`): Lightning
Fabric starts the calling script again for ranks 1.. (or joins the processes torchrun started) and sets up
the process group (gloo on CPU, NCCL on GPUs); the loop stays this module's own. ``cfg.batch_size`` is the
global batch: every process walks the same image order and takes its contiguous share of
``batch_size / devices`` images of each global batch; iBOT masks are drawn for the whole global batch from
(seed, step) and sliced the same way (adapter dropout draws from (seed, step, rank)). Each process computes
the objective on its share; the gradients of the trainable weights are averaged over the processes after
backward (before clipping), so every process takes the same optimiser step and the models stay identical;
the teacher centres move with the global batch mean (see :mod:`roadwork.adapt.ssl`); the logged values are
averages over the processes. Without dropout and with ``koleo_weight == 0`` a run therefore equals the
one-process run up to float summation order. KoLeo, a nearest-neighbour term within a batch, is computed on
each process's share (0 where a share has one image), so with ``koleo_weight > 0`` it is a different
(smaller-batch) regulariser. Only global rank 0 writes (checkpoints, ``out_dir``) and calls the loggers;
every process resumes from the checkpoint rank 0 finds and returns an :class:`AdaptResult` (with its
``global_rank``). Checkpoints do not record the number of processes: the computation is the same up to the
above, so a run may resume with another ``devices``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.layout import AdapterLayout
from roadwork.adapt.merge import MERGE_TOLERANCE, backbone_features, merge_check, merge_student
from roadwork.adapt.ssl import (
    ExploraSSL,
    MultiCropDataset,
    ResumableEpochSampler,
    _process_count,
    block_masks,
    cosine_lr,
    multi_crop_transform,
    seeded,
    teacher_temperature,
)
from roadwork.atomic import atomic_write, atomic_write_text
from roadwork.data.images import open_image, pillow_pixel_limit
from roadwork.data.preprocess import to_tensor_batch
from roadwork.distributed import ACCELERATORS, STRATEGIES, check_processes
from roadwork.models.backbone import Backbone
from roadwork.progress import progress_bar

if TYPE_CHECKING:  # importing lightning costs seconds; only its Logger interface is used
    from lightning.pytorch.loggers import Logger

__all__ = [
    "ACCELERATORS",
    "ADAPT_META",
    "BACKBONE_DIR",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "STRATEGIES",
    "AdaptResult",
    "adapt_backbone",
    "latest_checkpoint",
    "make_optimizer",
    "ssl_step",
]

BACKBONE_DIR = "backbone"
ADAPT_META = "adapt.json"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_dino",
    "loss_ibot",
    "loss_koleo",
    "agreement",
    "lr",
    "teacher_temp",
    "teacher_momentum",
)
CHECKPOINT_FORMAT_VERSION = 1
_CHECKPOINT_PREFIX = "explora-"
_CHECK_BATCH_SIZE = 8
# RNG stream tags for seeded(): crops use 1 (in MultiCropDataset), steps 2, initialisation 0
_INIT_STREAM, _STEP_STREAM = 0, 2


@dataclass(frozen=True)
class AdaptResult:
    """What :func:`adapt_backbone` produced.

    Attributes:
        backbone: the merged, frozen backbone (eval mode, CPU), equal to what ``backbone_dir`` holds.
        history: one row per optimiser step, columns :data:`HISTORY_COLUMNS` (``step`` counts from 1).
        trainable_params: student backbone parameters trained (adapters, last blocks, norms).
        total_params: all parameters of the adapted student backbone (base weights plus adapters).
        trainable_pct: ``100 * trainable_params / total_params``.
        loss_start, loss_end: total SSL loss of the first and of the last step.
        agreement_end: teacher-student agreement of the last step.
        merge_max_abs_diff: the merge check's max |merged - unmerged| feature difference.
        steps: optimiser steps of the whole run (resumed ones included).
        resumed_from_step: the checkpoint step the run resumed from (0: a fresh start).
        layout: which weights trained how.
        backbone_dir, history_path, meta_path: what was written in ``out_dir`` (by global rank 0).
        global_rank: this process's rank (0 in a one-process run); only rank 0 wrote files and logged.
    """

    backbone: Backbone
    history: pd.DataFrame
    trainable_params: int
    total_params: int
    trainable_pct: float
    loss_start: float
    loss_end: float
    agreement_end: float
    merge_max_abs_diff: float
    steps: int
    resumed_from_step: int
    layout: AdapterLayout
    backbone_dir: Path
    history_path: Path
    meta_path: Path
    global_rank: int = 0


# ---------------------------------------------------------------------------------------- optimisation


def make_optimizer(model: ExploraSSL, cfg: AdaptConfig) -> torch.optim.AdamW:
    """AdamW over :meth:`ExploraSSL.trainable_parameters`: weight decay on tensors of rank >= 2 only."""
    params = [p for _, p in model.trainable_parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


def _momentum(step: int, total_steps: int, cfg: AdaptConfig) -> float:
    from lightly.utils.scheduler import cosine_schedule

    return cosine_schedule(step, max(1, total_steps), cfg.teacher_momentum, 1.0)


def ssl_step(
    model: ExploraSSL,
    optimizer: torch.optim.Optimizer,
    crops: Sequence[Tensor],
    *,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """One ExPLoRA optimiser step on one batch (see the module docstring); returns its metrics.

    Args:
        model: the student/teacher pair, in training mode.
        optimizer: from :func:`make_optimizer`.
        crops: ``2 + n_local_crops`` tensors ``[B, 3, s, s]`` (global crops first), e.g. a collated batch of
            :class:`~roadwork.adapt.ssl.MultiCropDataset`; with several processes, this process's share
            (images ``rank * B`` to ``(rank + 1) * B - 1`` of the global batch of ``world_size * B``).
        step: 0-based index of this step in the run; total_steps: steps of the run (schedules);
        steps_per_epoch: steps of one epoch (teacher-temperature warm-up).
        rank, world_size: this process's rank and the number of processes (``torch.distributed``
            initialised when ``world_size > 1``; every process must call this with the same step).

    Masks draw from RNGs seeded by ``(cfg.seed, step)`` (for the whole global batch, then sliced), adapter
    dropout from ``(cfg.seed, step)`` in one process and ``(cfg.seed, step, rank)`` in several.
    With several processes the gradients are averaged over them before clipping and the returned values
    are averages over them (the same on every process).
    Returns the :data:`HISTORY_COLUMNS` values but ``step`` and ``epoch``.
    """
    cfg = model.cfg
    device = next(model.student_head.parameters()).device
    lr = cosine_lr(step, total_steps, cfg)
    temp = teacher_temperature(step, steps_per_epoch, cfg)
    momentum = _momentum(step, total_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    global_crops = torch.cat([c.to(device, non_blocking=True) for c in crops[:2]])
    local = [c.to(device, non_blocking=True) for c in crops[2:]]
    local_crops = torch.cat(local) if local else None
    with seeded(cfg.seed, _STEP_STREAM, step):
        masks = None
        if model.is_vit and cfg.ibot_weight > 0:
            grid = model.patch_grid(int(global_crops.shape[-1]))
            masks = block_masks(int(global_crops.shape[0]) * world_size, grid, cfg)
            if world_size > 1:
                masks = _mask_share(masks, rank, world_size)
            masks = None if masks is None else masks.to(device)
        bf16 = cfg.precision == "bf16-mixed"
        per_rank = seeded(cfg.seed, _STEP_STREAM, step, rank) if world_size > 1 else contextlib.nullcontext()
        with per_rank, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model.losses(global_crops, local_crops, masks, teacher_temp=temp)
    loss = out["loss"]
    values = {
        "loss": loss.detach(),
        "loss_dino": out["dino"],
        "loss_ibot": out["ibot"],
        "loss_koleo": out["koleo"],
        "agreement": out["agreement"],
    }
    if world_size > 1:  # before the finiteness check, so that every process raises or none does
        values = _mean_over_processes(values, world_size)
    if not torch.isfinite(values["loss"]):
        raise FloatingPointError(
            f"the ExPLoRA loss became non-finite ({float(values['loss'])}) at step {step}."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for _, p in model.trainable_parameters()]
    if world_size > 1:
        _average_gradients(params, world_size)
    if cfg.gradient_clip_val > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.gradient_clip_val)
    model.cancel_last_layer_gradients(step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(momentum)
    return {
        **{key: float(value) for key, value in values.items()},
        "lr": lr,
        "teacher_temp": temp,
        "teacher_momentum": momentum,
    }


# -------------------------------------------------------------------------------------- several processes


def _mask_share(masks: Tensor, rank: int, world_size: int) -> Tensor | None:
    """This process's rows of the global batch's ``[2 * B, h, w]`` masks (None: no crop of the batch masked).

    The global crops are ordered (first crop of every image, then the second), and process ``rank`` holds
    images ``rank * b .. (rank + 1) * b - 1``, ``b = B / world_size``. None for every process when no crop of
    the global batch is masked (as one process skips iBOT then).
    """
    if not bool(masks.any()):
        return None
    first, second = masks.chunk(2)
    share = first.shape[0] // world_size
    rows = slice(rank * share, (rank + 1) * share)
    return torch.cat([first[rows], second[rows]])


def _mean_over_processes(values: dict[str, Tensor], world_size: int) -> dict[str, Tensor]:
    """Scalar tensors averaged over the processes (one all-reduce), as float32."""
    import torch.distributed as dist

    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    stacked = stacked / world_size
    return dict(zip(values, stacked.unbind(), strict=True))


def _average_gradients(params: Sequence[Tensor], world_size: int) -> None:
    """Replace every gradient by its mean over the processes (one flat all-reduce per dtype and device).

    Every process runs the same graph, so the same parameters have gradients everywhere.
    """
    import torch.distributed as dist

    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


class _GlobalBatchShare(Sampler[int]):
    """Process ``rank``'s contiguous share of every complete global batch of ``sampler``'s indices.

    The global batches are ``batch_size`` consecutive indices; the share is ``batch_size // world_size`` of
    them, positions ``rank * share ..``. An incomplete last global batch is dropped for every process.
    """

    def __init__(self, sampler: Sampler[int], *, batch_size: int, rank: int, world_size: int) -> None:
        self._sampler, self._batch, self._rank = sampler, batch_size, rank
        self._share = batch_size // world_size

    def __len__(self) -> int:
        return len(self._sampler) // self._batch * self._share  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        indices = list(self._sampler)
        first = self._rank * self._share
        for start in range(0, len(indices) - self._batch + 1, self._batch):
            yield from indices[start + first : start + first + self._share]


class _Processes:
    """Rank, size and the few collectives :func:`adapt_backbone` needs (all no-ops in one process)."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def from_zero(self, value: Any) -> Any:
        """Rank 0's ``value`` (pickled and broadcast), on every process."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, name: str, value: Any) -> None:
        """Raise ValueError on every process unless all passed the same (JSON-able) ``value``."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, digest)
        if len(set(gathered)) > 1:
            raise ValueError(
                f"the {self.world_size} processes were given different {name}; every process must call "
                "adapt_backbone with the same arguments."
            )


def _environment_world_size() -> int:
    """``WORLD_SIZE`` of the environment (set by torchrun and by Lightning's launcher), else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _join_processes(accelerator: str, devices: int) -> tuple[_Processes, torch.device]:
    """Start (Lightning's ``ddp`` launcher: this script again for ranks 1..) or join the processes."""
    import torch.distributed as dist
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp", num_nodes=1)
    fabric.launch()  # starts the other ranks unless they exist already; sets up the process group
    if not dist.is_initialized() or dist.get_world_size() != devices:
        found = dist.get_world_size() if dist.is_initialized() else 1
        raise RuntimeError(f"expected a process group of {devices} processes after launching, found {found}.")
    return _Processes(dist.get_rank(), devices), fabric.device


# ------------------------------------------------------------------------------------------ checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensor = value if isinstance(value, Tensor) else torch.tensor(value)
            out[f"optimizer/{index}/{key}"] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def _load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = tensor
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest complete checkpoint's JSON file in ``checkpoint_dir`` (None when there is none)."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    complete = [
        p
        for p in checkpoint_dir.glob(f"{_CHECKPOINT_PREFIX}*.json")
        if p.with_suffix(".safetensors").is_file()
    ]
    return max(complete, key=lambda p: p.stem) if complete else None


def _save_checkpoint(
    checkpoint_dir: Path,
    step: int,
    model: ExploraSSL,
    optimizer: torch.optim.Optimizer,
    identity: dict[str, Any],
    history: list[dict[str, float]],
    steps_per_epoch: int,
) -> Path:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{_CHECKPOINT_PREFIX}{step:09d}"
    tensors = {**model.state_tensors(), **_optimizer_tensors(optimizer)}
    atomic_write(checkpoint_dir / f"{stem}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    meta = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": step,
        "epochs_done": step / steps_per_epoch,
        **identity,
        "history": history,
    }
    meta_path = checkpoint_dir / f"{stem}.json"
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")  # written last: marks completeness
    for old in checkpoint_dir.glob(f"{_CHECKPOINT_PREFIX}*"):
        if old.stem != stem:
            old.unlink(missing_ok=True)
    return meta_path


def _load_checkpoint(
    meta_path: Path, model: ExploraSSL, optimizer: torch.optim.Optimizer, identity: dict[str, Any]
) -> tuple[int, list[dict[str, float]]]:
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unknown checkpoint format {meta.get('format_version')!r}.")
    for key, value in identity.items():
        if meta.get(key) != value:
            raise ValueError(
                f"{meta_path} belongs to a different run ({key} differs); delete {meta_path.parent} to start "
                "afresh, or restore the settings it was written with."
            )
    tensors = load_file(str(meta_path.with_suffix(".safetensors")))
    optim = {k: v for k, v in tensors.items() if k.startswith("optimizer/")}
    model.load_state_tensors({k: v for k, v in tensors.items() if not k.startswith("optimizer/")})
    _load_optimizer_tensors(optimizer, optim)
    return int(meta["step"]), list(meta["history"])


# ---------------------------------------------------------------------------------------------- inputs


def _check_images(images: Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        raise TypeError(f"images must be a sequence of image file paths, got {type(images).__name__}.")
    if len(images) == 0:
        raise ValueError("images is empty; ExPLoRA needs at least one training image.")
    paths = []
    for k, item in enumerate(images):
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"images[{k}] must be a path, got {type(item).__name__}.")
        if not Path(item).is_file():
            raise FileNotFoundError(f"images[{k}]: {item} is not a file.")
        paths.append(Path(item))
    return paths


def _load_image(path: Path) -> Image.Image:
    limit = pillow_pixel_limit()
    return open_image(path, max_pixels=limit if limit is not None else 1 << 40)


def _images_digest(paths: Sequence[Path]) -> str:
    return hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()


def _device(accelerator: str) -> torch.device:
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("accelerator='gpu' but no CUDA device is available.")
    if accelerator in ("auto", "gpu") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_processes(accelerator: str, devices: int, strategy: str, cfg: AdaptConfig, n_images: int) -> None:
    check_processes(
        accelerator, devices, strategy, batch_size=cfg.batch_size, batch_key="AdaptConfig.batch_size"
    )
    if n_images < cfg.batch_size and n_images % devices:
        raise ValueError(
            f"the {n_images} images make one global batch of {n_images} (fewer than AdaptConfig.batch_size="
            f"{cfg.batch_size}), which must be divisible by devices={devices}."
        )
    world = max(_environment_world_size(), _process_count())
    if devices == 1 and world > 1:
        raise ValueError(
            f"this process is one of {world} (WORLD_SIZE / torch.distributed, e.g. torchrun or Lightning's "
            f"launcher) but devices=1: every process would train alone and write the same outputs; pass "
            f"devices={world}."
        )
    if devices > 1 and world > 1 and world != devices:
        raise ValueError(
            f"devices={devices} but this process is one of {world} (WORLD_SIZE / torch.distributed); pass "
            f"devices={world}."
        )


# ---------------------------------------------------------------------------------------------- public


def adapt_backbone(
    backbone: Backbone,
    images: Sequence[str | os.PathLike],
    cfg: AdaptConfig,
    *,
    out_dir: Path,
    checkpoint_dir: Path | None = None,
    checkpoint_every_steps: int = 0,
    loggers: Sequence[Logger] = (),
    show_progress: bool = True,
    accelerator: str = "auto",
    num_workers: int = 0,
    devices: int = 1,
    strategy: str = "auto",
) -> AdaptResult:
    """ExPLoRA-adapt ``backbone`` on ``images``; merge, check and save it under ``out_dir``.

    Args:
        backbone: a plain frozen :class:`Backbone` (``tiny``, a DINOv2/v3 ViT or ``efficientnet_lite0``); it
            is copied, never modified.
        images: image file paths (decoded with Pillow, converted to RGB): the train split and any unlabeled
            pool. Never pass validation or test images.
        cfg: the settings.
        out_dir: output folder (created); see the module docstring.
        checkpoint_dir: where checkpoints go and are resumed from; None: no checkpoints.
        checkpoint_every_steps: also checkpoint every this many steps (>= 0; 0: at epoch ends only).
        loggers: Lightning loggers; each step's metrics (``ssl_loss``, ``ssl_loss_dino``, ``ssl_loss_ibot``,
            ``ssl_loss_koleo``, ``agreement``, ``lr``, ``teacher_temp``, ``teacher_momentum``) with
            ``step`` = steps done, per epoch ``epoch_ssl_loss`` and ``epoch_agreement``, at the start
            ``trainable_params``, ``total_params``, ``trainable_pct``, and at the end
            ``merge_max_abs_diff``. A resumed run logs only the steps it runs (``history`` holds them all).
            The loggers are not finalised (the caller owns their runs).
        show_progress: a progress bar over the steps (global rank 0 only, where :mod:`roadwork.progress`
            allows one).
        accelerator: ``auto`` (a GPU when there is one), ``cpu`` or ``gpu``.
        num_workers: DataLoader worker processes for decoding and cropping (0: in-process), per process.
        devices: number of processes (one per device; an int >= 1). ``cfg.batch_size`` is the global batch
            and must be divisible by it (and so must the number of images when there are fewer than
            ``cfg.batch_size``).
        strategy: ``auto`` or ``ddp``, which mean the same here: this process alone when ``devices == 1``,
            else ``ddp``: Lightning starts the calling script (``sys.argv``) again for ranks 1.. with
            ``LOCAL_RANK`` etc. set, and each of those processes must call :func:`adapt_backbone` with the
            same arguments (checked; torchrun-style launchers that start every rank themselves work too,
            with ``devices`` equal to their ``WORLD_SIZE``; ``devices=1`` in such a process is an error).
            Spawn/fork strategies are refused: they train in child processes whose state never comes back to
            this call. Only global rank 0 writes files and checkpoints and calls the loggers; every rank
            returns an :class:`AdaptResult` with the same backbone and history. See the module docstring for
            what is computed per process.

    Returns:
        :class:`AdaptResult`.

    Raises:
        TypeError/ValueError naming the argument for bad inputs; FloatingPointError when the loss becomes
        non-finite; :class:`~roadwork.adapt.merge.MergeCheckError` when the merged backbone's features differ
        from the unmerged student's by more than ``1e-4`` (nothing is saved then).
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if not isinstance(cfg, AdaptConfig):
        raise TypeError(f"cfg must be an AdaptConfig, got {type(cfg).__name__}.")
    paths = _check_images(images)
    for name, value in (("num_workers", num_workers), ("checkpoint_every_steps", checkpoint_every_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    _check_processes(accelerator, devices, strategy, cfg, len(paths))
    out_dir = Path(out_dir)
    backbone_dir = out_dir / BACKBONE_DIR
    device = _device(accelerator)
    procs = _Processes()
    if devices > 1:
        procs, device = _join_processes(accelerator, devices)
    if not procs.is_zero:
        loggers, show_progress = (), False

    n = len(paths)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    base_fingerprint = backbone.fingerprint()
    identity = {
        "config": cfg.to_dict(),
        "base_backbone_fingerprint": base_fingerprint,
        "images_digest": _images_digest(paths),
        "total_steps": total_steps,
    }
    procs.check_same("inputs (config, backbone or image list)", identity)

    with seeded(cfg.seed, _INIT_STREAM):
        model = ExploraSSL(backbone, cfg)
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    trainable, total = model.backbone_parameter_counts()
    pct = 100.0 * trainable / total
    history: list[dict[str, float]] = []
    start = 0
    if checkpoint_dir is not None:
        found = procs.from_zero(latest_checkpoint(Path(checkpoint_dir)) if procs.is_zero else None)
        if found is not None:
            start, history = _load_checkpoint(found, model, optimizer, identity)
        procs.barrier()  # every process has read the checkpoint before rank 0 may replace it
    for logger in loggers:
        logger.log_metrics(
            {"trainable_params": float(trainable), "total_params": float(total), "trainable_pct": pct}, step=0
        )

    transform = multi_crop_transform(backbone, cfg)
    dataset = MultiCropDataset(paths, _load_image, transform, seed=cfg.seed)
    model.train()
    step = start
    with progress_bar(total=total_steps, initial=start, desc="explora", show=show_progress) as bar:
        while step < total_steps:
            epoch, done_in_epoch = divmod(step, steps_per_epoch)
            sampler: Sampler[int] = ResumableEpochSampler(
                n, seed=cfg.seed, epoch=epoch, start=done_in_epoch * batch_size
            )
            if procs.world_size > 1:
                sampler = _GlobalBatchShare(
                    sampler, batch_size=batch_size, rank=procs.rank, world_size=procs.world_size
                )
            loader = DataLoader(
                dataset,
                batch_size=batch_size // procs.world_size,
                sampler=sampler,
                drop_last=True,
                num_workers=num_workers,
                generator=torch.Generator().manual_seed(cfg.seed),
                pin_memory=device.type == "cuda",
            )
            epoch_rows = []
            for crops in loader:
                row = ssl_step(
                    model,
                    optimizer,
                    crops,
                    step=step,
                    total_steps=total_steps,
                    steps_per_epoch=steps_per_epoch,
                    rank=procs.rank,
                    world_size=procs.world_size,
                )
                step += 1
                row = {"step": step, "epoch": epoch, **row}
                history.append(row)
                epoch_rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", agree=f"{row['agreement']:.2f}")
                metrics = {("ssl_" + k if k.startswith("loss") else k): float(v) for k, v in row.items()}
                metrics.pop("step")
                for logger in loggers:
                    logger.log_metrics(metrics, step=step)
                epoch_end = step % steps_per_epoch == 0 or step == total_steps
                periodic = checkpoint_every_steps and step % checkpoint_every_steps == 0
                if checkpoint_dir is not None and (epoch_end or periodic):
                    if procs.is_zero:
                        _save_checkpoint(
                            Path(checkpoint_dir), step, model, optimizer, identity, history, steps_per_epoch
                        )
                    procs.barrier()  # no process runs ahead of a checkpoint being written
                if epoch_end:
                    summary = {
                        "epoch_ssl_loss": sum(r["loss"] for r in epoch_rows) / len(epoch_rows),
                        "epoch_agreement": sum(r["agreement"] for r in epoch_rows) / len(epoch_rows),
                    }
                    for logger in loggers:
                        logger.log_metrics(summary, step=step)
                if step >= total_steps:
                    break

    # every process merges and checks its (identical) student, so a failing check raises everywhere
    model.eval()
    student, layout = model.student, model.layout
    del model, optimizer
    check_batch = to_tensor_batch([_load_image(p) for p in paths[:_CHECK_BATCH_SIZE]], backbone.preprocess)
    reference = backbone_features(student, check_batch)
    merged = merge_student(student, backbone_id=str(backbone_dir))
    diff = merge_check(reference, merged, check_batch, tol=MERGE_TOLERANCE)
    merged.cpu()
    for logger in loggers:
        logger.log_metrics({"merge_max_abs_diff": diff}, step=step)

    frame = pd.DataFrame(history, columns=list(HISTORY_COLUMNS)).astype({"step": int, "epoch": int})
    history_path = out_dir / HISTORY_FILE
    meta_path = out_dir / ADAPT_META
    loss_start = float(history[0]["loss"]) if history else math.nan
    loss_end = float(history[-1]["loss"]) if history else math.nan
    agreement_end = float(history[-1]["agreement"]) if history else math.nan
    failure = None
    if procs.is_zero:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            merged.save(backbone_dir)
            frame.to_csv(history_path, index=False)
            meta = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "config": cfg.to_dict(),
                "layout": {
                    "lora_targets": list(layout.lora_targets),
                    "unfrozen_blocks": list(layout.unfrozen_blocks),
                    "unfrozen_modules": list(layout.unfrozen_modules),
                    "norm_layers": len(layout.norm_layers),
                },
                "trainable_params": trainable,
                "total_params": total,
                "trainable_pct": pct,
                "images": n,
                "steps": step,
                "steps_per_epoch": steps_per_epoch,
                "loss_start": loss_start,
                "loss_end": loss_end,
                "agreement_end": agreement_end,
                "merge_max_abs_diff": diff,
                "base_backbone": {
                    "id": backbone.backbone_id,
                    "family": backbone.family,
                    "fingerprint": base_fingerprint,
                },
                "backbone_fingerprint": merged.fingerprint(),
            }
            atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
            for logger in loggers:
                logger.save()
        except BaseException as exc:
            if procs.world_size == 1:
                raise
            failure = f"{type(exc).__name__}: {exc}"
            procs.from_zero(failure)  # release the other processes before raising
            raise
    failure = procs.from_zero(failure)  # doubles as the barrier: rank 0's outputs are complete
    if failure is not None:
        raise RuntimeError(f"global rank 0 failed to write the outputs in {out_dir}: {failure}")
    return AdaptResult(
        backbone=merged,
        history=frame,
        trainable_params=trainable,
        total_params=total,
        trainable_pct=pct,
        loss_start=loss_start,
        loss_end=loss_end,
        agreement_end=agreement_end,
        merge_max_abs_diff=diff,
        steps=step,
        resumed_from_step=start,
        layout=layout,
        backbone_dir=backbone_dir,
        history_path=history_path,
        meta_path=meta_path,
        global_rank=procs.rank,
    )
