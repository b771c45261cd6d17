"""Where a multi-process trainer runs: argument rules and rank detection, one home for both.

Shared by head training, finetuning and ExPLoRA. The world size is read in two ways, each for its moment:
from the environment the launchers set (before any process group exists: torchrun, Lightning's ``ddp``
launcher), and from the initialised ``torch.distributed`` process group. torch is imported lazily.
"""

from __future__ import annotations

import os

__all__ = [
    "ACCELERATORS",
    "STRATEGIES",
    "check_processes",
    "environment_world_size",
    "process_group_size",
]

ACCELERATORS = ("auto", "cpu", "gpu")
# ddp starts the calling command again per rank (or joins torchrun/SLURM ranks); spawn/fork strategies train
# in child processes whose state never returns to the caller, so they are refused.
STRATEGIES = ("auto", "ddp")


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
