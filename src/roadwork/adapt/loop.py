"""The steps of one :func:`~roadwork.adapt.explora.adapt_backbone` run: its state, checkpoint and loop.

:class:`AdaptRun` is what the steps share; :func:`resume` and :func:`save_checkpoint` read and write the
run's checkpoint (:mod:`roadwork.train.checkpoint`'s format); :func:`train_steps` is the loop: history, logs
and checkpoints as it goes. See :mod:`roadwork.adapt.explora` for what is checkpointed, when, and by whom.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Sampler

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.processes import GlobalBatchShare, Processes
from roadwork.adapt.ssl import ExploraSSL, MultiCropDataset, ResumableEpochSampler
from roadwork.adapt.step import ssl_step
from roadwork.progress import progress_bar
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, load_resume_state, write_checkpoint

if TYPE_CHECKING:  # importing lightning costs seconds; only its Logger interface is used
    from lightning.pytorch.loggers import Logger

__all__ = ["AdaptRun", "resume", "save_checkpoint", "train_steps"]


@dataclass
class AdaptRun:
    """What the steps of one run share: its plan, where it runs, where it reports, and how far it is.

    Attributes:
        cfg, paths: the settings and the training images.
        procs, device: this process's place among the processes, and its device.
        batch_size, steps_per_epoch, total_steps: the global batch (at most the image count) and step counts.
        identity: what the checkpoint must match (config, base-backbone fingerprint, image digest, steps).
        checkpoint: the checkpoint file (None: no checkpoints); checkpoint_every_steps: as in adapt_backbone.
        num_workers: DataLoader workers; loggers, show_progress: empty and False off global rank 0.
        trainable, total: student backbone parameter counts.
        history: one row per step done; start: the step resumed from; step: steps done.
    """

    cfg: AdaptConfig
    paths: list[Path]
    procs: Processes
    device: torch.device
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    identity: dict[str, Any]
    checkpoint: Path | None = None
    checkpoint_every_steps: int = 0
    num_workers: int = 0
    loggers: Sequence[Logger] = ()
    show_progress: bool = False
    trainable: int = 0
    total: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    start: int = 0
    step: int = 0

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable / self.total


# ---------------------------------------------------------------------------------------- checkpoint


def save_checkpoint(run: AdaptRun, model: ExploraSSL, optimizer: torch.optim.Optimizer) -> None:
    """Replace the run's checkpoint with the state after ``run.step`` steps (global rank 0 calls this)."""
    assert run.checkpoint is not None
    write_checkpoint(
        run.checkpoint,
        {
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "fingerprint": run.identity,
            "step": run.step,
            "epochs_done": run.step / run.steps_per_epoch,
            "history": run.history,
            "model": model.state_tensors(),
            "optimizer": optimizer.state_dict(),
        },
    )


def resume(run: AdaptRun, model: ExploraSSL, optimizer: torch.optim.Optimizer) -> None:
    """Continue from the run's checkpoint if rank 0 finds one; one of another run is a ValueError."""
    if run.checkpoint is None:
        return
    if run.procs.from_zero(run.checkpoint.is_file() if run.procs.is_zero else None):
        state = load_resume_state(run.checkpoint, run.identity, strict=True)
        assert state is not None  # the file exists, and strict raised on anything else
        model.load_state_tensors(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.start = run.step = int(state["step"])
        run.history = list(state["history"])
    run.procs.barrier()  # every process has read the checkpoint before rank 0 may replace it


# ------------------------------------------------------------------------------------------------ loop


def _epoch_loader(run: AdaptRun, dataset: MultiCropDataset) -> DataLoader:
    """This process's batches of the epoch ``run.step`` is in, from the step after the last one done."""
    epoch, done_in_epoch = divmod(run.step, run.steps_per_epoch)
    sampler: Sampler[int] = ResumableEpochSampler(
        len(run.paths), seed=run.cfg.seed, epoch=epoch, start=done_in_epoch * run.batch_size
    )
    procs = run.procs
    if procs.world_size > 1:
        sampler = GlobalBatchShare(
            sampler, batch_size=run.batch_size, rank=procs.rank, world_size=procs.world_size
        )
    return DataLoader(
        dataset,
        batch_size=run.batch_size // procs.world_size,
        sampler=sampler,
        drop_last=True,
        num_workers=run.num_workers,
        generator=torch.Generator().manual_seed(run.cfg.seed),
        pin_memory=run.device.type == "cuda",
    )


def _step(run: AdaptRun, model: ExploraSSL, optimizer: torch.optim.Optimizer, crops: Any) -> dict[str, float]:
    """One optimiser step; its history row (appended to ``run.history``), logged."""
    values = ssl_step(
        model,
        optimizer,
        crops,
        step=run.step,
        total_steps=run.total_steps,
        steps_per_epoch=run.steps_per_epoch,
        rank=run.procs.rank,
        world_size=run.procs.world_size,
    )
    run.step += 1
    row = {"step": run.step, "epoch": (run.step - 1) // run.steps_per_epoch, **values}
    run.history.append(row)
    metrics = {("ssl_" + k if k.startswith("loss") else k): float(v) for k, v in row.items()}
    metrics.pop("step")
    for logger in run.loggers:
        logger.log_metrics(metrics, step=run.step)
    return row


def _end_of_step(
    run: AdaptRun, model: ExploraSSL, optimizer: torch.optim.Optimizer, epoch_rows: list[dict[str, float]]
) -> None:
    """The checkpoint (at epoch ends, every ``checkpoint_every_steps``, the last step); the epoch summary."""
    epoch_end = run.step % run.steps_per_epoch == 0 or run.step == run.total_steps
    periodic = run.checkpoint_every_steps and run.step % run.checkpoint_every_steps == 0
    if run.checkpoint is not None and (epoch_end or periodic):
        if run.procs.is_zero:
            save_checkpoint(run, model, optimizer)
        run.procs.barrier()  # no process runs ahead of a checkpoint being written
    if epoch_end:
        summary = {
            "epoch_ssl_loss": sum(r["loss"] for r in epoch_rows) / len(epoch_rows),
            "epoch_agreement": sum(r["agreement"] for r in epoch_rows) / len(epoch_rows),
        }
        for logger in run.loggers:
            logger.log_metrics(summary, step=run.step)


def train_steps(
    run: AdaptRun, model: ExploraSSL, optimizer: torch.optim.Optimizer, dataset: MultiCropDataset
) -> None:
    """Steps from ``run.step`` to ``run.total_steps``, with a progress bar where one is shown."""
    model.train()
    bar = progress_bar(total=run.total_steps, initial=run.start, desc="explora", show=run.show_progress)
    with bar:
        while run.step < run.total_steps:
            epoch_rows: list[dict[str, float]] = []
            for crops in _epoch_loader(run, dataset):
                row = _step(run, model, optimizer, crops)
                epoch_rows.append(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", agree=f"{row['agreement']:.2f}")
                _end_of_step(run, model, optimizer, epoch_rows)
                if run.step >= run.total_steps:
                    break
