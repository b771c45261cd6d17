"""Where :func:`~roadwork.adapt.explora.adapt_backbone` runs: its device, its processes and their shares.

One process, or several started (or joined) with Lightning Fabric's ``ddp`` launcher; see
:mod:`roadwork.adapt.explora` for what each process computes. Rank detection is :mod:`roadwork.distributed`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from roadwork.adapt.config import AdaptConfig
from roadwork.distributed import check_processes, environment_world_size, process_group_size

__all__ = ["GlobalBatchShare", "Processes", "check_adapt_processes", "start_processes"]


class GlobalBatchShare(Sampler[int]):
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


class Processes:
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


def _device(accelerator: str) -> torch.device:
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("accelerator='gpu' but no CUDA device is available.")
    if accelerator in ("auto", "gpu") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def start_processes(accelerator: str, devices: int) -> tuple[Processes, torch.device]:
    """This process's place and device: alone when ``devices == 1``; else Lightning's ``ddp`` launcher
    starts this script again for ranks 1.. (or joins the processes torchrun started)."""
    device = _device(accelerator)
    if devices == 1:
        return Processes(), device
    import torch.distributed as dist
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=accelerator, devices=devices, strategy="ddp", num_nodes=1)
    fabric.launch()  # starts the other ranks unless they exist already; sets up the process group
    if not dist.is_initialized() or dist.get_world_size() != devices:
        found = dist.get_world_size() if dist.is_initialized() else 1
        raise RuntimeError(f"expected a process group of {devices} processes after launching, found {found}.")
    return Processes(dist.get_rank(), devices), fabric.device


def check_adapt_processes(
    accelerator: str, devices: int, strategy: str, cfg: AdaptConfig, n_images: int
) -> None:
    """:func:`~roadwork.distributed.check_processes`, plus the image count and the launched world."""
    check_processes(
        accelerator, devices, strategy, batch_size=cfg.batch_size, batch_key="AdaptConfig.batch_size"
    )
    if n_images < cfg.batch_size and n_images % devices:
        raise ValueError(
            f"the {n_images} images make one global batch of {n_images} (fewer than AdaptConfig.batch_size="
            f"{cfg.batch_size}), which must be divisible by devices={devices}."
        )
    world = max(environment_world_size(), process_group_size())
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
