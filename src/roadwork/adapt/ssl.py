"""ExPLoRA's self-supervised objective: DINO self-distillation (+ iBOT for ViTs) with an EMA teacher.

:class:`ExploraSSL` holds

* the **student**: an adapted copy of the backbone (:func:`~roadwork.adapt.layout.build_student`) and a
  freshly initialised DINO projection head (lightly's ``DINOProjectionHead``: 3-layer MLP, L2-normalised
  bottleneck, weight-normalised last layer with its norm fixed, whose gradients are cancelled for the first
  ``freeze_last_layer_steps`` steps);
* the **teacher**: a copy of the student, adapters included, and a second head built the same way and loaded
  with the student head's state (``copy.deepcopy`` of a weight-normalised layer fails). The teacher never
  requires gradients and is updated only by :meth:`ExploraSSL.update_teacher`, an exponential moving average
  of the student's *trainable* weights (frozen weights are shared values and are left untouched);
* the losses: lightly's ``DINOLoss`` on the class token (2 teacher global crops vs. all student crops, same
  crop pairs excluded, teacher centring), ``IBOTPatchLoss`` on the patch tokens the student saw masked
  (``bool_masked_pos``; ViTs only) and ``KoLeoLoss`` on the student's global-crop class tokens.

Several processes (``torch.distributed`` initialised, each process holding its shard of the global batch):
the teacher centres move with the *global* batch mean. lightly's DINO centre already all-reduces (the mean
of the per-process means, which is the global mean because every shard has the same number of crops); the
iBOT centre is a mean over the masked patch tokens, whose number differs between shards, so
:meth:`ExploraSSL.losses` replaces lightly's update by an all-reduced sum and count. Every process then runs
the iBOT branch whenever it is given masks (even all-False ones), so that all take part in the same
collectives. KoLeo, a within-batch nearest-neighbour term, is computed on each process's shard.

For ViTs the embedding fed to the head is the class token after the final norm (``pooler_output``), the
patch tokens are ``last_hidden_state[:, 1 + registers:]``; for EfficientNets it is the pooled feature vector.

:class:`MultiCropDataset` makes the crops with lightly's ``DINOTransform`` normalised with the backbone's own
statistics, seeded per (seed, epoch, image) so runs are reproducible and resumable.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.layout import build_student
from roadwork.distributed import process_group_size
from roadwork.models.backbone import Backbone
from roadwork.models.lora import set_adapter_mode

__all__ = [
    "LOCAL_CROP_MIN_SCALE",
    "ExploraSSL",
    "MultiCropDataset",
    "ResumableEpochSampler",
    "block_masks",
    "cosine_lr",
    "multi_crop_transform",
    "seeded",
    "teacher_temperature",
]

LOCAL_CROP_MIN_SCALE = 0.05
_VIT_FAMILIES = ("dinov2", "dinov2_with_registers", "dinov3")


@contextlib.contextmanager
def _center_update_disabled(center: nn.Module) -> Iterator[None]:
    """Make lightly's ``Center.update`` a no-op (an instance attribute shadowing the method) for a while."""
    center.update = lambda x: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del center.update


# ------------------------------------------------------------------------------------------ randomness


def _seed_words(*words: int) -> tuple[int, int, int]:
    state = [int(v) for v in np.random.SeedSequence([int(w) for w in words]).generate_state(4, np.uint32)]
    return state[0] << 32 | state[1], state[2], state[3]


@contextlib.contextmanager
def seeded(*words: int, cuda: bool = True) -> Iterator[None]:
    """Seed torch (CPU; CUDA too with ``cuda``), numpy and Python global RNGs from ``words``; restore after.

    lightly's transforms and masks draw from those global generators, so this is how they are made
    reproducible per (seed, epoch, image) or (seed, step) without disturbing the caller's streams.
    """
    torch_seed, numpy_seed, python_seed = _seed_words(*words)
    cuda = cuda and torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch_seed)
        np.random.seed(numpy_seed)
        random.seed(python_seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


# ------------------------------------------------------------------------------------------------- data


def multi_crop_transform(backbone: Backbone, cfg: AdaptConfig) -> Callable[[Image.Image], list[Tensor]]:
    """lightly's ``DINOTransform``: 2 global crops of ``preprocess.image_size`` and ``n_local_crops`` local.

    DINO's augmentations (flip, colour jitter, grey scale, blur, solarisation on the second global crop),
    then normalisation with the backbone's own ``preprocess.mean``/``std``. Crops are resized bicubically
    (lightly's fixed choice) whatever ``preprocess.interpolation`` says.
    """
    from lightly.transforms import DINOTransform

    pre = backbone.preprocess
    return DINOTransform(
        global_crop_size=pre.image_size,
        global_crop_scale=(cfg.global_crop_min_scale, 1.0),
        local_crop_size=cfg.local_crop_size,
        local_crop_scale=(LOCAL_CROP_MIN_SCALE, cfg.global_crop_min_scale),
        n_local_views=cfg.n_local_crops,
        normalize={"mean": list(pre.mean), "std": list(pre.std)},
    )


class MultiCropDataset(Dataset):
    """Index ``k`` = image ``k % N`` in epoch ``k // N``: its list of ``2 + n_local_crops`` crop tensors.

    ``load`` turns an entry of ``images`` into an RGB PIL image; the crops are drawn under
    :func:`seeded` ``(seed, epoch, image)``, so they do not depend on batch order or worker processes.
    """

    def __init__(
        self,
        images: Sequence[Any],
        load: Callable[[Any], Image.Image],
        transform: Callable[[Image.Image], list[Tensor]],
        *,
        seed: int,
    ) -> None:
        self._images = list(images)
        self._load = load
        self._transform = transform
        self._seed = seed

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, key: int) -> list[Tensor]:
        epoch, index = divmod(int(key), len(self._images))
        image = self._load(self._images[index])
        with seeded(self._seed, 1, epoch, index, cuda=False):  # CPU-only transforms
            return list(self._transform(image))


class ResumableEpochSampler(Sampler[int]):
    """Yields ``epoch * N + i`` over a ``default_rng([seed, epoch])`` permutation of the ``N`` images.

    ``start`` skips the first ``start`` indices of the epoch (a resumed run skips the batches it already
    trained on without loading them).
    """

    def __init__(self, n: int, *, seed: int, epoch: int, start: int = 0) -> None:
        self._n, self._seed, self._epoch, self._start = n, seed, epoch, start

    def __len__(self) -> int:
        return self._n - self._start

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self._seed, self._epoch]).permutation(self._n)
        return iter((self._epoch * self._n + order[self._start :]).tolist())


def block_masks(n: int, grid: tuple[int, int], cfg: AdaptConfig) -> Tensor:
    """``[n, h, w]`` boolean iBOT masks (True = masked patch), lightly's DINOv2-style block masking.

    ``round(n * mask_probability)`` of the ``n`` crops are masked, with fractions spread over
    ``[mask_ratio_min, mask_ratio_max]``; draws from the global RNGs (wrap in :func:`seeded`).
    """
    from lightly.models.utils import random_block_mask

    h, w = grid
    if n == 0 or cfg.mask_probability == 0 or cfg.mask_ratio_max == 0:
        return torch.zeros((n, h, w), dtype=torch.bool)
    # lightly masks int(n * ratio) crops; round first so that e.g. 0.5 of 3 crops masks 2, not 1
    share = round(n * cfg.mask_probability) / n
    return random_block_mask(
        size=(n, h, w),
        batch_mask_ratio=share + 1e-9,
        min_image_mask_ratio=cfg.mask_ratio_min,
        max_image_mask_ratio=cfg.mask_ratio_max,
    )


def teacher_temperature(step: int, steps_per_epoch: int, cfg: AdaptConfig) -> float:
    """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_epochs``."""
    epochs = step / max(1, steps_per_epoch)
    if epochs >= cfg.warmup_teacher_temp_epochs:
        return cfg.teacher_temp
    fraction = epochs / cfg.warmup_teacher_temp_epochs
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * fraction


# ------------------------------------------------------------------------------------------------ model


def _make_head(in_dim: int, cfg: AdaptConfig) -> nn.Module:
    from lightly.models.modules import DINOProjectionHead

    with warnings.catch_warnings():
        # lightly builds the last layer with the deprecated torch.nn.utils.weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*weight_norm.*", category=UserWarning)
        return DINOProjectionHead(
            input_dim=in_dim,
            hidden_dim=cfg.head_hidden_dim,
            bottleneck_dim=cfg.head_bottleneck_dim,
            output_dim=cfg.out_dim,
            batch_norm=False,
            freeze_last_layer=cfg.freeze_last_layer_steps,
            norm_last_layer=True,
        )


class ExploraSSL(nn.Module):
    """Student, teacher, projection heads and losses of ExPLoRA; see the module docstring.

    Build it under a seeded RNG (adapter ``lora_A`` and the head are drawn from torch's global RNG).

    Attributes:
        student, teacher: adapted copies of the backbone (:class:`Backbone` whose ``model`` is a peft model).
        student_head, teacher_head: DINO projection heads.
        layout: the :class:`~roadwork.adapt.layout.AdapterLayout`.
        is_vit: ViT family (iBOT and masking apply); patch_size: ViT patch side (0 for CNNs).
    """

    def __init__(self, backbone: Backbone, cfg: AdaptConfig) -> None:
        super().__init__()
        if not isinstance(backbone, Backbone):
            raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
        if not isinstance(cfg, AdaptConfig):
            raise TypeError(f"cfg must be an AdaptConfig, got {type(cfg).__name__}.")
        from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss

        self.cfg = cfg
        self.is_vit = backbone.family in _VIT_FAMILIES
        self.num_register_tokens = backbone.num_register_tokens
        if self.is_vit:
            config = backbone.model.config
            self.patch_size = int(config.patch_size)
            embed_dim = int(config.hidden_size)
            if cfg.local_crop_size < self.patch_size:
                raise ValueError(
                    f"AdaptConfig.local_crop_size is {cfg.local_crop_size}; it must be >= the backbone's "
                    f"patch size {self.patch_size} (a multiple of it is best)."
                )
        else:
            self.patch_size = 0
            embed_dim = backbone.feature_dim
        self.student, self.layout = build_student(backbone, cfg)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        set_adapter_mode(self.teacher.model, False)
        self.student_head = _make_head(embed_dim, cfg)
        self.teacher_head = _make_head(embed_dim, cfg)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.teacher_head.requires_grad_(False)
        self.dino_loss = DINOLoss(
            output_dim=cfg.out_dim,
            warmup_teacher_temp=cfg.warmup_teacher_temp,
            teacher_temp=cfg.teacher_temp,
            warmup_teacher_temp_epochs=0,  # the warm-up is per step, see teacher_temperature
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
        )
        self.ibot_loss = IBOTPatchLoss(
            output_dim=cfg.out_dim,
            teacher_temp=cfg.teacher_temp,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
        )
        self.koleo_loss = KoLeoLoss()
        self.ema_names = tuple(n for n, p in self.student.model.named_parameters() if p.requires_grad)

    # ---- modes and parameters

    def train(self, mode: bool = True) -> ExploraSSL:
        """Heads follow ``mode``; of the backbones only the student's adapter layers do (teacher: eval)."""
        super().train(mode)  # Backbone children force their networks to eval mode
        set_adapter_mode(self.student.model, mode)
        set_adapter_mode(self.teacher.model, False)
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of everything the optimiser updates: student backbone and student head."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def backbone_parameter_counts(self) -> tuple[int, int]:
        """``(trainable, total)`` parameters of the adapted student backbone (adapters included in total)."""
        params = list(self.student.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student`` on the student's trainable weights."""
        student = dict(self.student.model.named_parameters())
        teacher = dict(self.teacher.model.named_parameters())
        s_head = {n: p for n, p in self.student_head.named_parameters() if p.requires_grad}
        t_head = dict(self.teacher_head.named_parameters())
        targets = [teacher[n] for n in self.ema_names] + [t_head[n] for n in s_head]
        sources = [student[n] for n in self.ema_names] + list(s_head.values())
        torch._foreach_mul_(targets, momentum)
        torch._foreach_add_(targets, sources, alpha=1.0 - momentum)

    def cancel_last_layer_gradients(self, step: int) -> None:
        """Drop the head's last-layer gradients while ``step < freeze_last_layer_steps``."""
        self.student_head.cancel_last_layer_gradients(step)

    # ---- forward

    def patch_grid(self, size: int) -> tuple[int, int]:
        """``(h, w)`` patch grid of a square ``size`` crop (ViTs)."""
        return size // self.patch_size, size // self.patch_size

    def _encode(self, net: Backbone, pixels: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self.is_vit:
            return net.model(pixels.contiguous(memory_format=torch.channels_last)), None
        kwargs = {} if mask is None else {"bool_masked_pos": mask.flatten(1)}
        hidden = net.model(pixel_values=pixels, **kwargs).last_hidden_state
        return hidden[:, 0], hidden[:, 1 + self.num_register_tokens :]

    def losses(
        self,
        global_crops: Tensor,
        local_crops: Tensor | None,
        masks: Tensor | None,
        *,
        teacher_temp: float,
        update_centers: bool = True,
    ) -> dict[str, Tensor]:
        """The ExPLoRA objective on one batch.

        Args:
            global_crops: ``[2 * B, 3, S, S]``, first global crop of every image, then the second.
            local_crops: ``[M * B, 3, s, s]`` ordered the same way, or None when ``M == 0``.
            masks: ``[2 * B, h, w]`` iBOT masks of the student's global crops (ViTs, ``ibot_weight > 0``;
                ignored otherwise), or None.
            teacher_temp: teacher temperature of this step.
            update_centers: move the teacher centres (training); False leaves every buffer unchanged.

        With ``torch.distributed`` initialised, every process calls this on its shard (see the module
        docstring); the returned values are the shard's, to be averaged over processes by the caller.

        Returns:
            ``loss`` (with gradients) and the detached parts ``dino``, ``ibot``, ``koleo`` and
            ``agreement`` (fraction of global crops where the student's and the centred teacher's
            prototype argmax agree).
        """
        cfg = self.cfg
        n_global = global_crops.shape[0]
        if n_global % 2:
            raise ValueError(f"global_crops must hold 2 crops per image, got {n_global} crops.")
        batch = n_global // 2
        processes = process_group_size()
        # several processes: all run the iBOT branch when given masks, so all join its centre all-reduce
        use_ibot = (
            self.is_vit and cfg.ibot_weight > 0 and masks is not None and (processes > 1 or bool(masks.any()))
        )
        saved = (
            None if update_centers else (self.dino_loss.center.clone(), self.ibot_loss.center.center.clone())
        )
        with torch.no_grad():
            t_cls, t_patches = self._encode(self.teacher, global_crops, None)
            t_cls_out = self.teacher_head(t_cls).float()
        # the student sees masked global crops only when the iBOT loss uses them
        s_cls, s_patches = self._encode(self.student, global_crops, masks if use_ibot else None)
        s_global_out = self.student_head(s_cls).float()
        student_views = list(s_global_out.chunk(2))
        if local_crops is not None and local_crops.shape[0]:
            s_local, _ = self._encode(self.student, local_crops, None)
            student_views += list(self.student_head(s_local).float().chunk(local_crops.shape[0] // batch))
        teacher_views = list(t_cls_out.chunk(2))
        with torch.no_grad():
            centred = t_cls_out - self.dino_loss.center.reshape(1, -1)
            agreement = (s_global_out.argmax(-1) == centred.argmax(-1)).float().mean()
        dino = self.dino_loss(teacher_views, student_views, teacher_temp=teacher_temp)
        loss = dino
        ibot = torch.zeros((), device=dino.device)
        if use_ibot:
            assert masks is not None and s_patches is not None and t_patches is not None
            ibot = self._ibot(s_patches, t_patches, masks, teacher_temp, processes, update_centers)
            loss = loss + cfg.ibot_weight * ibot
        koleo = torch.zeros((), device=dino.device)
        if cfg.koleo_weight > 0 and batch >= 2:
            koleo = sum(self.koleo_loss(part.float()) for part in s_cls.chunk(2)) / 2
            loss = loss + cfg.koleo_weight * koleo
        if saved is not None:
            self.dino_loss.center.copy_(saved[0])
            self.ibot_loss.center.center = saved[1]
        return {
            "loss": loss,
            "dino": dino.detach(),
            "ibot": ibot.detach(),
            "koleo": koleo.detach(),
            "agreement": agreement,
        }

    def _ibot(
        self,
        s_patches: Tensor,
        t_patches: Tensor,
        masks: Tensor,
        teacher_temp: float,
        processes: int,
        update_centers: bool,
    ) -> Tensor:
        """iBOT loss on the masked patch tokens; with several processes the centre moves globally."""
        flat = masks.flatten(1)
        s_masked = self.student_head(s_patches[flat]).float()
        with torch.no_grad():
            t_masked = self.teacher_head(t_patches[flat]).float()
        if processes == 1:
            return self.ibot_loss(t_masked, s_masked, mask=masks, teacher_temp=teacher_temp)
        with _center_update_disabled(self.ibot_loss.center):
            ibot = self.ibot_loss(t_masked, s_masked, mask=masks, teacher_temp=teacher_temp)
        if update_centers:
            self._update_ibot_center_globally(t_masked)
        return ibot

    @torch.no_grad()
    def _update_ibot_center_globally(self, t_masked: Tensor) -> None:
        """iBOT centre update with the mean over the masked tokens of *all* processes (sum and count reduced).

        lightly's own update all-reduces the per-process means, which is the global mean only when every
        process has the same number of masked tokens; a process may have none at all.
        """
        import torch.distributed as dist
        from lightly.models.modules.center import center_momentum

        center = self.ibot_loss.center
        count = torch.full((1,), float(t_masked.shape[0]), device=t_masked.device, dtype=t_masked.dtype)
        reduced = torch.cat([t_masked.sum(dim=0), count])
        dist.all_reduce(reduced)
        if float(reduced[-1]) > 0:
            batch_center = (reduced[:-1] / reduced[-1]).reshape(center.center.shape)
            center.center = center_momentum(center.center, batch_center, center.momentum)

    # ---- checkpoint state

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything training changes: trainable student weights, their teacher copies, heads, centres."""
        student = dict(self.student.model.named_parameters())
        teacher = dict(self.teacher.model.named_parameters())
        out: dict[str, Tensor] = {}
        for name in self.ema_names:
            out[f"student/{name}"] = student[name]
            out[f"teacher/{name}"] = teacher[name]
        for key, value in self.student_head.state_dict().items():
            out[f"student_head/{key}"] = value
        for key, value in self.teacher_head.state_dict().items():
            out[f"teacher_head/{key}"] = value
        out["dino_center"] = self.dino_loss.center
        out["ibot_center"] = self.ibot_loss.center.center
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}

    @torch.no_grad()
    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`state_tensors`; every key must be present and no other."""
        expected = set(self.state_tensors())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"checkpoint does not match the model: missing {missing[:5]}, unexpected {extra[:5]}."
            )
        student = dict(self.student.model.named_parameters())
        teacher = dict(self.teacher.model.named_parameters())
        for name in self.ema_names:
            student[name].copy_(state[f"student/{name}"])
            teacher[name].copy_(state[f"teacher/{name}"])
        for head, prefix in ((self.student_head, "student_head/"), (self.teacher_head, "teacher_head/")):
            head.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        self.dino_loss.center.copy_(state["dino_center"])
        self.ibot_loss.center.center = state["ibot_center"].to(self.ibot_loss.center.center.device).clone()


def cosine_lr(step: int, total_steps: int, cfg: AdaptConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up to ``cfg.lr``, then cosine decay towards 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - cfg.warmup_steps) / span))
