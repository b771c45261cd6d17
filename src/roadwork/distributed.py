"""Where a multi-process trainer runs: argument rules and rank detection, one home for both.

Shared by head training, finetuning, ExPLoRA and tracking. Rank and world size are read in two ways, each
for its moment: from the environment the launchers set (before any process group exists: torchrun, SLURM,
Lightning's ``ddp`` launcher), and from the initialised ``torch.distributed`` process group. torch is
imported lazily: tracking calls :func:`is_rank_zero` without paying for it.
"""

from __future__ import annotations

import os

from roadwork.vocab import ACCELERATORS, STRATEGIES

__all__ = [
    "ACCELERATORS",
    "STRATEGIES",
    "check_processes",
    "environment_world_size",
    "is_rank_zero",
    "process_group_size",
]


def check_processes(
    accelerator: str, devices: int, strategy: str, *, batch_size: int, batch_key: str
) -> None:
    """Validate where a trainer runs.

    Args:
        accelerator: one of :data:`ACCELERATORS`.
        devices: processes, one per device: an int >= 1 (bool refused).
        strategy: one of :data:`STRATEGIES`.
        batch_size: the trainer's *global* batch, which every rank takes an equal share of.
        batch_key: how the caller names ``batch_size`` in messages (e.g. ``HeadTrainConfig.batch_size``).

    Raises:
        ValueError naming the argument and the allowed values.
    """
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}.")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be an int >= 1, got {devices!r}.")
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy must be one of {STRATEGIES}, got {strategy!r}; spawn/fork strategies train in child "
            "processes whose results never reach this call."
        )
    if batch_size % devices:
        raise ValueError(
            f"{batch_key}={batch_size} is the global batch and must be divisible by devices={devices}."
        )


def is_rank_zero() -> bool:
    """Whether this process is global rank 0 as the launchers announce it (True when nothing launched it).

    torchrun and SLURM set ``RANK`` / ``SLURM_PROCID``; Lightning's ``ddp`` launcher starts ranks 1.. with
    ``LOCAL_RANK`` and ``NODE_RANK`` set (rank 0 is the process the user started, before it launches).
    """
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name]) == 0
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in ("LOCAL_RANK", "NODE_RANK"))


def environment_world_size() -> int:
    """``WORLD_SIZE`` of the environment (set by torchrun and by Lightning's launcher), else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def process_group_size() -> int:
    """Processes of the initialised default ``torch.distributed`` group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
