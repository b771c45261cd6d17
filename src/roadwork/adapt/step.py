"""One ExPLoRA optimiser step (:func:`ssl_step`) and its optimiser, with the collectives of several processes.

See :mod:`roadwork.adapt.explora` for the step's place in the run and for what is computed per process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.ssl import ExploraSSL, block_masks, cosine_lr, seeded, teacher_temperature
from roadwork.vocab import autocasts_bf16

__all__ = ["INIT_STREAM", "STEP_STREAM", "make_optimizer", "ssl_step"]

# RNG stream tags for seeded(): crops use 1 (in MultiCropDataset), steps 2, initialisation 0
INIT_STREAM, STEP_STREAM = 0, 2


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
    """One ExPLoRA optimiser step on one batch (see :mod:`roadwork.adapt.explora`); returns its metrics.

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
    Returns the :data:`~roadwork.adapt.explora.HISTORY_COLUMNS` values but ``step`` and ``epoch``.
    """
    cfg = model.cfg
    lr = cosine_lr(step, total_steps, cfg)
    temp = teacher_temperature(step, steps_per_epoch, cfg)
    momentum = _momentum(step, total_steps, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    out = _losses(model, crops, step=step, temp=temp, rank=rank, world_size=world_size)
    values = {
        "loss": out["loss"].detach(),
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
    _update(model, optimizer, out["loss"], step=step, momentum=momentum, world_size=world_size)
    return {
        **{key: float(value) for key, value in values.items()},
        "lr": lr,
        "teacher_temp": temp,
        "teacher_momentum": momentum,
    }


def _losses(
    model: ExploraSSL, crops: Sequence[Tensor], *, step: int, temp: float, rank: int, world_size: int
) -> dict[str, Tensor]:
    """The forward pass of :func:`ssl_step`: masks, then :meth:`ExploraSSL.losses`, seeded by the step."""
    cfg = model.cfg
    device = next(model.student_head.parameters()).device
    global_crops = torch.cat([c.to(device, non_blocking=True) for c in crops[:2]])
    local = [c.to(device, non_blocking=True) for c in crops[2:]]
    local_crops = torch.cat(local) if local else None
    with seeded(cfg.seed, STEP_STREAM, step):
        masks = None
        if model.is_vit and cfg.ibot_weight > 0:
            grid = model.patch_grid(int(global_crops.shape[-1]))
            masks = block_masks(int(global_crops.shape[0]) * world_size, grid, cfg)
            if world_size > 1:
                masks = _mask_share(masks, rank, world_size)
            masks = None if masks is None else masks.to(device)
        bf16 = autocasts_bf16(cfg.precision)
        per_rank = seeded(cfg.seed, STEP_STREAM, step, rank) if world_size > 1 else contextlib.nullcontext()
        with per_rank, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.losses(global_crops, local_crops, masks, teacher_temp=temp)


def _update(
    model: ExploraSSL,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    *,
    step: int,
    momentum: float,
    world_size: int,
) -> None:
    """Backward, gradient averaging and clipping, the optimiser step and the teacher's EMA update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for _, p in model.trainable_parameters()]
    if world_size > 1:
        _average_gradients(params, world_size)
    if model.cfg.gradient_clip_val > 0:
        torch.nn.utils.clip_grad_norm_(params, model.cfg.gradient_clip_val)
    model.cancel_last_layer_gradients(step)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(momentum)


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
