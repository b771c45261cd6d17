"""What every Lightning fit of a head shares (:func:`~roadwork.train.head.fit_head`, finetuning, the
benchmarks): the Trainer, the per-epoch resume checkpoint, the replay of restored history, a quieter fit."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger

from roadwork.progress import progress_enabled
from roadwork.train.checkpoint import CHECKPOINT_FORMAT_VERSION, write_checkpoint
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_module import HeadLightningModule


def library_versions() -> dict[str, str]:
    """torch and Lightning versions: part of every checkpoint fingerprint (their numerics may change)."""
    return {"torch": torch.__version__, "lightning": pl.__version__}


def _rng_state(device: torch.device, generator: torch.Generator | None) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loader": None if generator is None else generator.get_state(),
    }


class EpochCheckpoint(pl.Callback):
    """Writes a resume checkpoint after every epoch and restores a loaded one when fitting starts.

    At the end of every training epoch (after its validation), global rank 0 writes, with
    :func:`write_checkpoint` to ``path``: the module's :meth:`HeadLightningModule.checkpoint_state`, every
    optimizer's and LR scheduler's ``state_dict()``, the RNG states (torch's global CPU generator, the CUDA
    generator of the module's device, ``generator`` when given), ``epochs_done``, ``optimizer_steps`` (over
    the whole training) and ``fingerprint``. With ``resume`` (such a state, whose module part the caller has
    already restored with :meth:`HeadLightningModule.load_checkpoint_state`), ``on_fit_start`` restores the
    optimizers, schedulers and RNG states: after the optimizers exist and before the first training batch is
    drawn.
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
        assert isinstance(pl_module, HeadLightningModule)
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
