"""Where the pipeline keeps everything: the one home of every path and of the variant list.

``dvc.yaml`` declares the same paths for DVC; ``tests/test_layout.py`` checks it against :data:`STAGE_OUTPUTS`
and :data:`VARIANTS` (outs, metrics, plots and the ``foreach`` variants), so the two cannot drift. Paths are
relative to the repository root, where every stage runs.
"""

from __future__ import annotations

from pathlib import Path

OUTPUTS = Path("outputs")
# Resume checkpoints of long stages: outside every DVC `outs` (DVC deletes those before a stage runs), so a
# killed `dvc repro` resumes where it stopped. Each stage checks that a checkpoint matches its inputs.
CHECKPOINTS = Path(".cache/checkpoints")
# Rendered inputs (the JPEG bytes the validator would send), shared by every stage and backbone
RENDERS = Path(".cache/renders")

METRICS_JSON = "metrics.json"
REPORT_JSON = "report.json"

INGEST = OUTPUTS / "ingest"
MANIFEST_CSV = INGEST / "manifest.csv"
KNOWN_DUPLICATES_CSV = INGEST / "known_duplicates.csv"
GROUPS_CSV = OUTPUTS / "dedupe" / "groups.csv"
SPLITS_CSV = OUTPUTS / "split" / "splits.csv"
ADAPTED_BACKBONE = OUTPUTS / "adapt" / "backbone"
BUNDLE = OUTPUTS / "bundle"
BUNDLE_MODEL = BUNDLE / "model"  # the served model folder (pyfunc), registered by bundle
BUNDLE_HF = BUNDLE / "hf"  # the Hugging Face export a miner loads
BUNDLE_FALLBACK = BUNDLE / "fallback"  # the linear probe's export, when the model has no Hugging Face form
ONNX_FILE = OUTPUTS / "model.onnx"  # `roadwork export-onnx` default
SUBMISSION_DIR = OUTPUTS / "submission"  # `roadwork export-submission` default

# variant -> where its backbone comes from: the configured backbone (None), or the ExPLoRA-adapted copy
VARIANTS: dict[str, Path | None] = {"base": None, "adapted": ADAPTED_BACKBONE}

# What each stage writes under its folder (outputs/<stage>[/<variant>]), as dvc.yaml declares it.
STAGE_OUTPUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "ingest": {
        "outs": ("images", "manifest.csv", "quarantine.csv", "known_duplicates.csv", REPORT_JSON),
        "metrics": (METRICS_JSON,),
    },
    "dedupe": {"outs": ("groups.csv", "report"), "metrics": (METRICS_JSON,)},
    "split": {"outs": ("splits.csv",), "metrics": (METRICS_JSON,)},
    "adapt": {
        "outs": ("backbone", "adapt.json", "unlabeled.csv", "ssl_curves.png"),
        "metrics": (METRICS_JSON,),
        "plots": ("history.csv",),
    },
    "embed": {"outs": ("features", "index.csv", "backbone.json"), "metrics": (METRICS_JSON,)},
    "train": {
        "outs": ("model", "logits", "training_curves.png"),
        "metrics": (METRICS_JSON,),
        "plots": ("history.csv",),
    },
    "calibrate": {
        "outs": ("policy.json", "reliability.png", "threshold_sweep.png", REPORT_JSON),
        "metrics": (METRICS_JSON,),
        "plots": ("threshold_sweep.csv",),
    },
    "evaluate": {
        "outs": (
            "slices.csv",
            "robustness.csv",
            "predictions.csv",
            "errors.csv",
            "hard_negatives.csv",
            REPORT_JSON,
        ),
        "metrics": (METRICS_JSON,),
        "plots": tuple(
            f"plots/{name}"
            for name in (
                "roc.png",
                "pr.png",
                "reliability.png",
                "threshold_sweep.png",
                "confusion.png",
                "risk_coverage.png",
                "worst_errors.png",
                "roc.csv",
                "pr.csv",
                "reliability.csv",
            )
        ),
    },
    "bundle": {"outs": ("model", "hf", "fallback", "choice.json"), "metrics": (METRICS_JSON,)},
}
# Stages run once per variant (dvc.yaml `foreach` over VARIANTS)
PER_VARIANT = ("embed", "train", "calibrate", "evaluate")


def output_dir(stage: str, variant: str | None = None) -> Path:
    """``outputs/<stage>[/<variant>]`` (not created)."""
    return OUTPUTS / stage / variant if variant else OUTPUTS / stage


def stage_dir(stage: str, variant: str | None = None) -> Path:
    """:func:`output_dir`, created if needed."""
    path = output_dir(stage, variant)
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(stage: str, variant: str | None = None) -> Path:
    """``.cache/checkpoints/<stage>[@<variant>]``: where a stage's resume checkpoints live."""
    return CHECKPOINTS / (f"{stage}@{variant}" if variant else stage)


def features_path(variant: str, split: str) -> Path:
    """embed's features of ``split`` for ``variant``."""
    return output_dir("embed", variant) / "features" / f"{split}.safetensors"


def index_path(variant: str) -> Path:
    """embed's row index for ``variant``."""
    return output_dir("embed", variant) / "index.csv"


def model_dir(variant: str) -> Path:
    """train's model folder (head, backbone reference) for ``variant``."""
    return output_dir("train", variant) / "model"


CROSSFIT_SPLIT = "train_crossfit"
"""The logits name of every train render's cross-fitted margin (``train.crossfit_folds``)."""


def logits_path(variant: str, split: str) -> Path:
    """train's logits of ``split`` (val_select, val_calib, or :data:`CROSSFIT_SPLIT`) for ``variant``."""
    return output_dir("train", variant) / "logits" / f"{split}.csv"


def policy_path(variant: str) -> Path:
    """calibrate's decision policy for ``variant``."""
    return output_dir("calibrate", variant) / "policy.json"
