"""The knobs of head training, in a module free of torch/Lightning so configuration checks stay fast."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class HeadTrainConfig:
    """Every knob of head training; flat scalars so a YAML section maps onto it 1:1.

    Attributes:
        head: ``linear`` (dropout, then ``Linear(D, 2)``) or ``mlp`` (``Linear(D, mlp_hidden)``, GELU,
            dropout, ``Linear(mlp_hidden, 2)``).
        mlp_hidden: hidden width of the ``mlp`` head (>= 1); inactive for ``linear``.
        feature_transform: ``none`` (the backbone's features as they are) or ``sqrt_l2`` (signed square root
            of every feature, then the vector scaled to unit L2 norm, before the classifier; a fixed layer
            of the head, so it ships with it, but a linear Hugging Face classifier cannot express it).
        dropout: probability in [0, 1) of zeroing an input of the final linear layer during training (the
            view features for ``linear``, the hidden units for ``mlp``).
        aggregation: ``topk_mean`` or ``attention`` over views (see the module docstring); inactive if V == 1.
        topk: K >= 1 for ``topk_mean``, clipped to V.
        attention_hidden: width (>= 1) of the gated-attention scorer (``L`` in Ilse et al.).
        loss: ``ce`` (torch cross-entropy) or ``focal`` (:func:`roadwork.train.losses.focal_loss`).
        label_smoothing: in [0, 1), applied by both losses the way torch's cross-entropy applies it.
        focal_gamma: focusing parameter (>= 0) of the focal loss; inactive for ``ce``.
        class_weights: ``auto`` (inverse class frequency over training rows, scikit-learn's "balanced")
            or ``none``.
        optimizer: ``adamw`` or ``sgd``.
        lr: peak learning rate (> 0).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay (>= 0) on every parameter.
        momentum: SGD momentum in [0, 1); inactive for ``adamw``.
        schedule: learning rate per optimizer step: ``cosine`` (linear warmup, then cosine decay to 0 at
            the end of ``max_epochs``), ``onecycle`` (torch ``OneCycleLR`` with ``max_lr=lr``, cosine
            annealing, warmup as its rising phase, momentum not cycled) or ``constant`` (warmup, then lr).
        warmup_epochs: warmup length in epochs (>= 0, < max_epochs; > 0 for ``onecycle``), rounded to
            whole optimizer steps. Linear warmup multiplies lr by ``(s + 1) / (W + 1)`` at step ``s < W``.
        max_epochs: upper bound on epochs (>= 1); the schedule spans all of them even if training stops
            early.
        batch_size: rows per batch (>= 1); the last batch of an epoch may be smaller.
        accumulate_grad_batches: batches per optimizer step (>= 1); an epoch's trailing batches still step.
        gradient_clip_val: clip the global gradient 2-norm to this value; 0 disables clipping.
        precision: ``"32"`` or ``"bf16-mixed"`` (training forward in ``torch.autocast`` bfloat16 on CPU;
            weights and the validation used for selection stay float32, as at inference).
        ema_decay: 0 disables EMA; otherwise in (0, 1): after every optimizer step
            ``ema = ema_decay * ema + (1 - ema_decay) * weights`` (starting from the initial weights), and the
            EMA weights are evaluated for selection and saved.
        early_stopping_patience: stop after this many consecutive epochs (>= 1) without a strict improvement
            of the selection metric; set it to ``max_epochs`` or more to never stop early.
        selection_metric: ``mcc`` (MCC of ``margin > 0`` on val_select) or ``best_mcc`` (MCC at the best
            threshold on val_select's margins); the epoch with the highest value (earliest on ties) is kept.
            ``last`` keeps the last epoch and never stops early: for a refit whose epoch count was chosen
            before, where val_select may overlap train (it is then only logged, never used to choose).
        seed: seed (>= 0) of initialisation, shuffling and dropout.
    """

    head: str = "linear"
    mlp_hidden: int = 256
    feature_transform: str = "none"
    dropout: float = 0.1
    aggregation: str = "topk_mean"
    topk: int = 3
    attention_hidden: int = 128
    loss: str = "ce"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: str = "auto"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    max_epochs: int = 30
    batch_size: int = 64
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0
    precision: str = "32"
    ema_decay: float = 0.0
    early_stopping_patience: int = 5
    selection_metric: str = "mcc"
    seed: int = 0

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "head": ("linear", "mlp"),
        "feature_transform": ("none", "sqrt_l2"),
        "aggregation": ("topk_mean", "attention"),
        "loss": ("ce", "focal"),
        "class_weights": ("auto", "none"),
        "optimizer": ("adamw", "sgd"),
        "schedule": ("cosine", "onecycle", "constant"),
        "precision": ("32", "bf16-mixed"),
        "selection_metric": ("mcc", "best_mcc", "last"),
    }
    _RANGES: ClassVar[dict[str, tuple[Callable[[Any], bool], str]]] = {
        "mlp_hidden": (lambda v: v >= 1, ">= 1"),
        "dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "topk": (lambda v: v >= 1, ">= 1"),
        "attention_hidden": (lambda v: v >= 1, ">= 1"),
        "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "focal_gamma": (lambda v: 0 <= v < math.inf, "finite and >= 0"),
        "lr": (lambda v: 0 < v < math.inf, "finite and > 0"),
        "weight_decay": (lambda v: 0 <= v < math.inf, "finite and >= 0"),
        "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
        "warmup_epochs": (lambda v: 0 <= v < math.inf, "finite and >= 0"),
        "max_epochs": (lambda v: v >= 1, ">= 1"),
        "batch_size": (lambda v: v >= 1, ">= 1"),
        "accumulate_grad_batches": (lambda v: v >= 1, ">= 1"),
        "gradient_clip_val": (lambda v: 0 <= v < math.inf, "finite and >= 0 (0 disables clipping)"),
        "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 disables EMA)"),
        "early_stopping_patience": (lambda v: v >= 1, ">= 1 (use >= max_epochs to never stop early)"),
        "seed": (lambda v: v >= 0, ">= 0"),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "str":
                if not isinstance(value, str):
                    raise TypeError(f"HeadTrainConfig.{f.name} must be a string, got {value!r}.")
            elif f.type == "int":
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise TypeError(f"HeadTrainConfig.{f.name} must be an integer, got {value!r}.")
                object.__setattr__(self, f.name, int(value))
            elif f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                    raise TypeError(f"HeadTrainConfig.{f.name} must be a number, got {value!r}.")
                object.__setattr__(self, f.name, float(value))
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"HeadTrainConfig.{name} is {getattr(self, name)!r}; "
                    f"allowed values: {', '.join(allowed)}."
                )
        for name, (ok, expected) in self._RANGES.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"HeadTrainConfig.{name} is {getattr(self, name)!r}; it must be {expected}.")
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError(
                f"HeadTrainConfig.warmup_epochs is {self.warmup_epochs}; it must be < max_epochs "
                f"({self.max_epochs}) so the schedule leaves room after warmup."
            )
        if self.schedule == "onecycle" and self.warmup_epochs == 0:
            raise ValueError(
                "HeadTrainConfig.warmup_epochs is 0 but schedule 'onecycle' needs a rising phase; "
                "set warmup_epochs > 0 or use schedule 'cosine' or 'constant'."
            )

    def inactive_fields(self, num_views: int) -> tuple[str, ...]:
        """Fields that cannot affect training with this config on features with ``num_views`` views."""
        inactive = []
        if self.head != "mlp":
            inactive.append("mlp_hidden")
        if num_views == 1:
            inactive.append("aggregation")
        if self.aggregation != "topk_mean" or num_views == 1:
            inactive.append("topk")
        if self.aggregation != "attention" or num_views == 1:
            inactive.append("attention_hidden")
        if self.loss != "focal":
            inactive.append("focal_gamma")
        if self.optimizer != "sgd":
            inactive.append("momentum")
        return tuple(inactive)
