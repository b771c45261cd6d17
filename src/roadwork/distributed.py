"""Argument rules shared by the multi-process trainers (head training and ExPLoRA): one home for them."""

from __future__ import annotations

__all__ = ["ACCELERATORS", "STRATEGIES", "check_processes"]

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
