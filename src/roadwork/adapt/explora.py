"""ExPLoRA (arXiv 2406.10973): continue the backbone's self-supervised pretraining on the target domain.

:func:`adapt_backbone` trains the :class:`~roadwork.adapt.ssl.ExploraSSL` student/teacher pair on the
given images (the caller passes train-split images, plus any unlabeled pool; never validation splits),
merges the student's adapters, checks the merge and saves the adapted backbone. The head is then trained on
the adapted backbone's features exactly as on the base backbone's.

One optimiser step (:func:`~roadwork.adapt.step.ssl_step`), in order: teacher forward (no gradients) on the
2 global crops; student forward on the iBOT-masked global crops and the local crops; DINO + ``ibot_weight`` *
iBOT + ``koleo_weight`` * KoLeo; backward; global gradient-norm clipping; the head's last-layer gradients
dropped during the first ``freeze_last_layer_steps`` steps; AdamW at the step's learning rate (linear
warm-up, cosine decay); EMA update of the teacher with a momentum on a cosine schedule from
``teacher_momentum`` to 1.

Reproducibility and resumption: initialisation is seeded by ``cfg.seed``; crops by (seed, epoch, image);
masks and adapter dropout by (seed, step); the image order by (seed, epoch). So a run is a function of its
inputs on CPU, and a resumed run continues exactly where the checkpoint left off. The checkpoint
(``checkpoint_dir / "explora-checkpoint.safetensors"``, :data:`CHECKPOINT_FILE`, in the format of every
trainer's checkpoint, :mod:`roadwork.train.checkpoint`) is replaced atomically at every epoch end, every
``checkpoint_every_steps`` steps and after the last step; it holds the trainable student weights, their
teacher copies, both heads, the teacher centres, the AdamW state, the step, the epochs done, the history so
far and the run's identity (config, base-backbone fingerprint, image-list digest, total steps). No RNG state
is needed: every random draw is seeded from (seed, epoch, image) or (seed, step). A run resumes from the
checkpoint it finds; one from a different config, backbone or image list is an error.

``out_dir`` receives ``backbone/`` (:meth:`Backbone.save`, so ``load_backbone(str(out_dir / "backbone"))``
rebuilds it with the same family and preprocessing), ``history.csv`` (one row per step) and ``adapt.json``
(settings, layout, parameter counts, losses, fingerprints, the merge check's difference): all three are
functions of the inputs, so a resumed run writes the same files as an uninterrupted one (where it resumed is
in :class:`AdaptResult` only).

Loggers (Lightning ``Logger``s; not finalised: the caller owns their runs) receive at step 0
``trainable_params``, ``total_params`` and ``trainable_pct``; each step's metrics (``ssl_loss``,
``ssl_loss_dino``, ``ssl_loss_ibot``, ``ssl_loss_koleo``, ``agreement``, ``lr``, ``teacher_temp``,
``teacher_momentum``) with ``step`` = steps done; per epoch ``epoch_ssl_loss`` and ``epoch_agreement``; at the
end ``merge_max_abs_diff``. A resumed run logs only the steps it runs (``history`` holds them all).

Several processes (``devices > 1``, strategy ``ddp``, as :func:`roadwork.train.head.fit_head`): Lightning
Fabric starts the calling script (``sys.argv``) again for ranks 1.. with ``LOCAL_RANK`` etc. set, and each of
those processes must call :func:`adapt_backbone` with the same arguments (checked); torchrun-style launchers
that start every rank themselves work too, with ``devices`` equal to their ``WORLD_SIZE`` (``devices=1`` in
such a process is an error). Spawn/fork strategies are refused: they train in child processes whose state
never comes back to the call. Fabric sets up the process group (gloo on CPU, NCCL on GPUs); the loop stays
this module's own. ``cfg.batch_size`` is the
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

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from PIL import Image

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.layout import AdapterLayout
from roadwork.adapt.loop import AdaptRun, resume, train_steps
from roadwork.adapt.processes import Processes, check_adapt_processes, start_processes
from roadwork.adapt.ssl import ExploraSSL, MultiCropDataset, multi_crop_transform, seeded
from roadwork.adapt.step import INIT_STREAM, make_optimizer
from roadwork.atomic import atomic_write_csv, atomic_write_json
from roadwork.data.images import open_image, pillow_pixel_limit
from roadwork.data.preprocess import to_tensor_batch
from roadwork.distributed import ACCELERATORS, STRATEGIES
from roadwork.models.backbone import Backbone
from roadwork.models.merge import MERGE_TOLERANCE, backbone_features, merge_adapters, merge_check

if TYPE_CHECKING:  # importing lightning costs seconds; only its Logger interface is used
    from lightning.pytorch.loggers import Logger

__all__ = [
    "ACCELERATORS",
    "ADAPT_META",
    "BACKBONE_DIR",
    "CHECKPOINT_FILE",
    "HISTORY_COLUMNS",
    "HISTORY_FILE",
    "STRATEGIES",
    "AdaptResult",
    "adapt_backbone",
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
CHECKPOINT_FILE = "explora-checkpoint.safetensors"
ADAPT_FORMAT_VERSION = 1
_CHECK_BATCH_SIZE = 8


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


def _check_arguments(
    backbone: Backbone, images: Sequence[str | os.PathLike], cfg: AdaptConfig, **counts: int
) -> list[Path]:
    """The image paths, after checking :func:`adapt_backbone`'s arguments (``counts``: ints >= 0)."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    if not isinstance(cfg, AdaptConfig):
        raise TypeError(f"cfg must be an AdaptConfig, got {type(cfg).__name__}.")
    paths = _check_images(images)
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    return paths


def _load_image(path: Path) -> Image.Image:
    limit = pillow_pixel_limit()
    return open_image(path, max_pixels=limit if limit is not None else 1 << 40)


def _images_digest(paths: Sequence[Path]) -> str:
    return hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------- setup


def _plan(
    backbone: Backbone, paths: list[Path], cfg: AdaptConfig, procs: Processes, **options: Any
) -> AdaptRun:
    """Batch size, step counts and the run's identity (what a checkpoint must match), the same everywhere;
    ``options`` are :class:`AdaptRun`'s loop settings."""
    n = len(paths)
    batch_size = min(cfg.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    identity = {
        "config": cfg.to_dict(),
        "base_backbone_fingerprint": backbone.fingerprint(),
        "images_digest": _images_digest(paths),
        "total_steps": total_steps,
    }
    procs.check_same("inputs (config, backbone or image list)", identity)
    return AdaptRun(
        cfg,
        paths,
        procs,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        identity=identity,
        **options,
    )


def _build(run: AdaptRun, backbone: Backbone) -> tuple[ExploraSSL, torch.optim.AdamW]:
    """The student/teacher pair (initialised from ``cfg.seed``) on the run's device, and its optimiser."""
    with seeded(run.cfg.seed, INIT_STREAM):
        model = ExploraSSL(backbone, run.cfg)
    model.to(run.device)
    run.trainable, run.total = model.backbone_parameter_counts()
    return model, make_optimizer(model, run.cfg)


# --------------------------------------------------------------------------------------- merge, outputs


def _merge(
    student: Backbone, backbone: Backbone, paths: list[Path], backbone_dir: Path
) -> tuple[Backbone, float]:
    """Fold the student's adapters in and check the fold on the first images (merged backbone on CPU)."""
    check_batch = to_tensor_batch([_load_image(p) for p in paths[:_CHECK_BATCH_SIZE]], backbone.preprocess)
    reference = backbone_features(student, check_batch)
    merged = merge_adapters(student, backbone_id=str(backbone_dir))
    diff = merge_check(reference, merged, check_batch, tol=MERGE_TOLERANCE)
    return merged.cpu(), diff


def _meta(
    run: AdaptRun, backbone: Backbone, merged: Backbone, layout: AdapterLayout, diff: float
) -> dict[str, Any]:
    """``adapt.json``: settings, layout, parameter counts, losses, fingerprints, the merge check."""
    return {
        "format_version": ADAPT_FORMAT_VERSION,
        "config": run.cfg.to_dict(),
        "layout": {
            "lora_targets": list(layout.lora_targets),
            "unfrozen_blocks": list(layout.unfrozen_blocks),
            "unfrozen_modules": list(layout.unfrozen_modules),
            "norm_layers": len(layout.norm_layers),
        },
        "trainable_params": run.trainable,
        "total_params": run.total,
        "trainable_pct": run.trainable_pct,
        "images": len(run.paths),
        "steps": run.step,
        "steps_per_epoch": run.steps_per_epoch,
        **_summary(run.history),
        "merge_max_abs_diff": diff,
        "base_backbone": {
            "id": backbone.backbone_id,
            "family": backbone.family,
            "fingerprint": run.identity["base_backbone_fingerprint"],
        },
        "backbone_fingerprint": merged.fingerprint(),
    }


def _summary(history: list[dict[str, float]]) -> dict[str, float]:
    """First and last loss, last agreement (NaN for a run of no step)."""
    return {
        "loss_start": float(history[0]["loss"]) if history else math.nan,
        "loss_end": float(history[-1]["loss"]) if history else math.nan,
        "agreement_end": float(history[-1]["agreement"]) if history else math.nan,
    }


def _write_outputs(
    run: AdaptRun, out_dir: Path, merged: Backbone, frame: pd.DataFrame, meta: dict[str, Any]
) -> None:
    """Rank 0 writes ``out_dir``; every process returns once it is complete, or raises if rank 0 failed."""
    failure = None
    if run.procs.is_zero:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            merged.save(out_dir / BACKBONE_DIR)
            atomic_write_csv(out_dir / HISTORY_FILE, frame)
            atomic_write_json(out_dir / ADAPT_META, meta, sort_keys=False)
            for logger in run.loggers:
                logger.save()
        except BaseException as exc:
            if run.procs.world_size == 1:
                raise
            failure = f"{type(exc).__name__}: {exc}"
            run.procs.from_zero(failure)  # release the other processes before raising
            raise
    failure = run.procs.from_zero(failure)  # doubles as the barrier: rank 0's outputs are complete
    if failure is not None:
        raise RuntimeError(f"global rank 0 failed to write the outputs in {out_dir}: {failure}")


def _result(
    run: AdaptRun, merged: Backbone, frame: pd.DataFrame, layout: AdapterLayout, diff: float, out_dir: Path
) -> AdaptResult:
    return AdaptResult(
        backbone=merged,
        history=frame,
        trainable_params=run.trainable,
        total_params=run.total,
        trainable_pct=run.trainable_pct,
        **_summary(run.history),
        merge_max_abs_diff=diff,
        steps=run.step,
        resumed_from_step=run.start,
        layout=layout,
        backbone_dir=out_dir / BACKBONE_DIR,
        history_path=out_dir / HISTORY_FILE,
        meta_path=out_dir / ADAPT_META,
        global_rank=run.procs.rank,
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
    """ExPLoRA-adapt ``backbone`` on ``images``; merge, check and save it in ``out_dir``: an AdaptResult.

    Args:
        backbone: a plain frozen :class:`Backbone` (``tiny``, a DINOv2/v3 ViT or ``efficientnet_lite0``); it
            is copied, never modified.
        images: image file paths (decoded with Pillow, converted to RGB): the train split and any unlabeled
            pool. Never pass validation or test images.
        cfg: the settings.
        out_dir: output folder (created); see the module docstring.
        checkpoint_dir: where the checkpoint goes and is resumed from; None: no checkpoints.
        checkpoint_every_steps: also checkpoint every this many steps (>= 0; 0: at epoch ends only).
        loggers: Lightning loggers, called by global rank 0 as the module docstring says.
        show_progress: a progress bar over the steps (global rank 0 only, where :mod:`roadwork.progress`
            allows one).
        accelerator: ``auto`` (a GPU when there is one), ``cpu`` or ``gpu``.
        num_workers: DataLoader worker processes for decoding and cropping (0: in-process), per process.
        devices: number of processes (one per device; an int >= 1). ``cfg.batch_size`` is the global batch
            and must be divisible by it (and so must the number of images when there are fewer than
            ``cfg.batch_size``).
        strategy: ``auto`` or ``ddp``, which mean the same here: this process alone when ``devices == 1``,
            else ``ddp`` (see the module docstring; every rank returns an :class:`AdaptResult` with the same
            backbone and history).

    Raises:
        TypeError/ValueError naming the argument for bad inputs; FloatingPointError when the loss becomes
        non-finite; :class:`~roadwork.models.merge.MergeCheckError` when the merged backbone's features
        differ from the unmerged student's by more than :data:`~roadwork.models.merge.MERGE_TOLERANCE`
        (nothing is saved then).
    """
    counts = {"num_workers": num_workers, "checkpoint_every_steps": checkpoint_every_steps}
    paths = _check_arguments(backbone, images, cfg, **counts)
    check_adapt_processes(accelerator, devices, strategy, cfg, len(paths))
    out_dir = Path(out_dir)
    procs, device = start_processes(accelerator, devices)
    run = _plan(
        backbone,
        paths,
        cfg,
        procs,
        device=device,
        checkpoint=None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE,
        checkpoint_every_steps=checkpoint_every_steps,
        num_workers=num_workers,
        loggers=loggers if procs.is_zero else (),
        show_progress=show_progress and procs.is_zero,
    )
    model, optimizer = _build(run, backbone)
    resume(run, model, optimizer)
    counted = {"trainable_params": float(run.trainable), "total_params": float(run.total)}
    for logger in run.loggers:
        logger.log_metrics({**counted, "trainable_pct": run.trainable_pct}, step=0)
    dataset = MultiCropDataset(paths, _load_image, multi_crop_transform(backbone, cfg), seed=cfg.seed)
    train_steps(run, model, optimizer, dataset)
    # every process merges and checks its (identical) student, so a failing check raises everywhere
    model.eval()
    student, layout = model.student, model.layout
    del model, optimizer
    merged, diff = _merge(student, backbone, paths, out_dir / BACKBONE_DIR)
    for logger in run.loggers:
        logger.log_metrics({"merge_max_abs_diff": diff}, step=run.step)
    frame = pd.DataFrame(run.history, columns=list(HISTORY_COLUMNS)).astype({"step": int, "epoch": int})
    _write_outputs(run, out_dir, merged, frame, _meta(run, backbone, merged, layout, diff))
    return _result(run, merged, frame, layout, diff, out_dir)
