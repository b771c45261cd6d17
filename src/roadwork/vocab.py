"""Every word list a parameter takes its value from, defined once (and free of torch and scipy).

The params schema (:mod:`roadwork.config`), the library code that acts on a value (``ViewSpec``,
``set_pooling``, ``HeadModel``, ``check_processes``, ``select_threshold``, ...) and the CLI's choices import
their lists from here, so the schema accepts exactly what the code runs and the messages list the same
words. ``tests/test_config.py`` checks that each list is the one every user of it holds.
"""

from __future__ import annotations

# embed.views: the whole image, or the image plus a grid of tiles (multiple-instance)
VIEW_MODES = ("global", "global+tiles")
# backbone.pooling (timm backbones) and backbone.attn_implementation (Hugging Face ViTs)
POOLINGS = ("avg", "max", "gem")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")

# Where a network runs: Lightning's accelerator names, taken by trainer.accelerator and embed.device alike.
ACCELERATORS = ("auto", "cpu", "gpu")
# trainer.strategy: ddp starts the calling command again per rank (or joins torchrun/SLURM ranks);
# spawn/fork strategies train in child processes whose state never returns to the caller, so none is here.
STRATEGIES = ("auto", "ddp")

# float32, or bfloat16 autocast over float32 weights. The feature forward spells the latter "bf16"
# (embed.precision, part of the feature cache's key); training spells it as Lightning does, "bf16-mixed"
# (train.precision, adapt.precision). params.yaml keeps both spellings; autocasts_bf16 is the one map.
FEATURE_PRECISIONS = ("32", "bf16")
TRAINING_PRECISIONS = ("32", "bf16-mixed")


def autocasts_bf16(precision: str) -> bool:
    """Whether ``precision``, in either spelling above, runs the forward under bfloat16 autocast."""
    return precision in (FEATURE_PRECISIONS[1], TRAINING_PRECISIONS[1])


# train.mode, and the head's knobs (HeadTrainConfig.CHOICES, HeadModel)
TRAIN_MODES = ("head", "finetune")
HEADS = ("linear", "mlp")
FEATURE_TRANSFORMS = ("none", "sqrt_l2")
AGGREGATIONS = ("topk_mean", "attention")
LOSSES = ("ce", "focal")
CLASS_WEIGHTS = ("auto", "none")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
SELECTION_METRICS = ("mcc", "best_mcc", "last")

# calibrate.method (the names roadwork.policy.CALIBRATORS registers) and calibrate.threshold_rule
CALIBRATION_METHODS = ("temperature", "platt", "beta", "isotonic")
THRESHOLD_RULES = ("shrink", "bagged", "argmax")
# calibrate.threshold_data: the margins the threshold rule runs on
THRESHOLD_DATA = ("train_crossfit", "val_calib")

# deploy.promote_metric and `roadwork promote --metric`
PROMOTE_METRICS = ("expected_reward", "validator_mcc", "validator_accuracy")
