"""The knobs of head training, in a module free of torch/Lightning so configuration checks stay fast.

Its rules (vocabularies, ranges, relations) are the ones ``roadwork.config`` checks ``train:`` against
(:class:`~roadwork.settings.Settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from roadwork.settings import FRACTION, NON_NEGATIVE, POSITIVE, Rule, Settings, at_least
from roadwork.vocab import (
    AGGREGATIONS,
    CLASS_WEIGHTS,
    FEATURE_TRANSFORMS,
    HEADS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULES,
    SELECTION_METRICS,
    TRAINING_PRECISIONS,
)


@dataclass(frozen=True)
class HeadTrainConfig(Settings):
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
        "head": HEADS,
        "feature_transform": FEATURE_TRANSFORMS,
        "aggregation": AGGREGATIONS,
        "loss": LOSSES,
        "class_weights": CLASS_WEIGHTS,
        "optimizer": OPTIMIZERS,
        "schedule": SCHEDULES,
        "precision": TRAINING_PRECISIONS,
        "selection_metric": SELECTION_METRICS,
    }
    RANGES: ClassVar[dict[str, Rule]] = {
        "mlp_hidden": at_least(1),
        "dropout": FRACTION,
        "topk": at_least(1),
        "attention_hidden": at_least(1),
        "label_smoothing": FRACTION,
        "focal_gamma": NON_NEGATIVE,
        "lr": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "momentum": FRACTION,
        "warmup_epochs": NON_NEGATIVE,
        "max_epochs": at_least(1),
        "batch_size": at_least(1),
        "accumulate_grad_batches": at_least(1),
        "gradient_clip_val": (NON_NEGATIVE[0], "finite and >= 0 (0 disables clipping)"),
        "ema_decay": (FRACTION[0], "in [0, 1) (0 disables EMA)"),
        "early_stopping_patience": at_least(1, "use >= max_epochs to never stop early"),
        "seed": at_least(0),
    }

    @classmethod
    def check_relations(cls, values: Mapping[str, Any], prefix: str) -> None:
        """The warmup leaves room in the schedule, and ``onecycle`` has a rising phase."""
        if values["warmup_epochs"] >= values["max_epochs"]:
            raise ValueError(
                f"{prefix}.warmup_epochs is {values['warmup_epochs']}; it must be < max_epochs "
                f"({values['max_epochs']}) so the schedule leaves room after warmup."
            )
        if values["schedule"] == "onecycle" and values["warmup_epochs"] == 0:
            raise ValueError(
                f"{prefix}.warmup_epochs is 0 but schedule 'onecycle' needs a rising phase; "
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
