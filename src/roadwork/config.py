"""Typed parameters: ``params.yaml`` is the single source, validated against this schema.

``load_config`` merges ``params.yaml`` and command-line overrides in Hydra's syntax (``split.seed=3``) onto
the structured schema below. An unknown or misspelt key, a value of the wrong type or a value outside its
allowed range fails with a :class:`ConfigError` that names the file, the full dotted key and the fix —
the earlier pipeline silently ignored keys it did not know.

Types are strict: a value is never converted (``workers: "2"``, ``tta_flip: "yes"`` and ``tta_flip: 1``
fail); only an integer may stand for a float and a number for a string. Values must be literal: an
interpolation (``${...}``) is refused, because it is resolved when the stage runs while DVC records the
literal text, and ``${oc.env:...}`` would copy environment variables (secrets included) into the MLflow
run's params.

Every section is a frozen-by-convention dataclass; library code receives plain values taken from it and
never reads this module's files itself.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

DEFAULT_PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key and what to change."""


@dataclass
class SynthParams:
    """The embedded synthetic data set that ``make demo`` draws when ``data/`` is absent.

    Attributes:
        n: images drawn, planted near-duplicates included (>= 20).
        seed: random seed; the same arguments always give byte-identical files.
        near_duplicate_fraction: share of the images that are planted near-duplicate copies, in [0, 1).
    """

    n: int = 1700
    seed: int = 0
    near_duplicate_fraction: float = 0.08


@dataclass
class SourceParams:
    """One entry of ``data.sources``: a folder inside ``data.dir`` and how the pipeline uses its images.

    ``role``: ``labelled`` (the usual layouts), ``hard_negative`` (negatives only: every image label 0) or
    ``unlabeled`` (adapt's pool only, never ingested or split). ``weight`` multiplies how often train draws
    each of the source's images (1 = as often as an image of any other weight-1 source).
    """

    name: str = ""
    dir: str = ""
    weight: float = 1.0
    role: str = "labelled"


@dataclass
class DataParams:
    """Where the images come from.

    Attributes:
        dir: ImageFolder (roadwork/, no_roadwork/ or 1/, 0/) or a folder of NATIX parquet files.
        sources: named folders inside dir, each {name, dir, weight, role}; empty = dir is the one source.
        synth: the embedded demo data set.
    """

    dir: str = "data"
    # empty: data.dir is one source in today's layout; else the named folders inside data.dir
    sources: list[SourceParams] = field(default_factory=list)
    synth: SynthParams = field(default_factory=SynthParams)


@dataclass
class IngestParams:
    """How ``ingest`` decodes, checks and stores every input.

    Attributes:
        working_min_side: shorter side of the stored copy every render starts from (never upscaled).
        jpeg_quality: JPEG quality (1-100) of the stored working copies.
        max_pixels: declared image size above which an input is quarantined (decompression bombs).
        min_side: inputs with a shorter side below this many pixels are quarantined.
        workers: decoding processes.
    """

    working_min_side: int = 512
    jpeg_quality: int = 95
    max_pixels: int = 100_000_000
    min_side: int = 16
    workers: int = 2


@dataclass
class DedupeParams:
    """Which images count as duplicates (one group, never split across train and evaluation).

    Attributes:
        phash_radius: Hamming radius (0-64) within which two perceptual hashes mark near-duplicates.
        hash_size: side of the pHash grid; 8 (64-bit hashes) is the only size stored.
        embedding_cosine: images whose global features (``dedupe.backbone``'s) are at least this
            cosine-similar join one group; null = off.
        backbone: the embedding check's own backbone (seed 0, average pooling, float32), pinned apart from
            ``backbone`` and ``embed`` so that trying another model never re-runs dedupe and split.
        input_size: that backbone's input side in pixels (224: the validator's); null = its own preprocessing.
        batch_size: images per forward pass of the embedding check.
    """

    phash_radius: int = 10
    hash_size: int = 8
    embedding_cosine: Optional[float] = 0.97  # noqa: UP045 (OmegaConf structured configs need Optional)
    # with the defaults, embed@base's network: dedupe fills the feature cache embed then reads
    backbone: str = "efficientnet_lite0"
    input_size: Optional[int] = 224  # noqa: UP045
    batch_size: int = 16


@dataclass
class SplitFractions:
    """Shares of the dedupe groups in each split, each in (0, 1), summing to 1.

    Attributes:
        train: the head (and ExPLoRA) train on it.
        val_select: epoch selection and early stopping.
        val_calib: calibration, the decision threshold and the variant choice.
        val_test: the held-out evaluation, scored once per model.
    """

    train: float = 0.60
    val_select: float = 0.15
    val_calib: float = 0.15
    val_test: float = 0.10


@dataclass
class SplitParams:
    """The stratified group split.

    Attributes:
        seed: random seed of the split.
        fractions: the share of each split.
        group_by: metadata columns (metadata.csv or parquet) whose shared values keep images in one split.
        time_window_s: frames of one drive closer than this many seconds join one group (chained); null = off.
        time_column: the metadata column of each frame's time (seconds or ISO 8601).
        drive_column: the metadata column naming each frame's drive; needed by time_window_s.
        group_tolerance: largest accepted miss of a split's share; a group too large to place is an error.
    """

    seed: int = 0
    fractions: SplitFractions = field(default_factory=SplitFractions)
    # Groups the user knows (roadwork.data.groups): metadata columns whose shared values join one group, and
    # frames of one drive closer in time than time_window_s seconds.
    group_by: list[str] = field(default_factory=list)
    time_window_s: Optional[float] = None  # noqa: UP045
    time_column: str = "timestamp"
    drive_column: Optional[str] = None  # noqa: UP045
    # Largest accepted |achieved - target| share of a split; above it the too-large group is an error (a
    # warning while group_by and time_window_s are unset, as before this key).
    group_tolerance: float = 0.05


@dataclass
class BackboneParams:
    """The frozen feature extractor.

    Attributes:
        id: ``tiny``, ``efficientnet_lite0``, a Hugging Face DINOv2/DINOv3 id or a local model folder.
        seed: seed of the ``tiny`` backbone's random weights (ignored by the others).
        attn_implementation: attention kernel of Hugging Face ViTs: ``sdpa`` or ``eager``.
        input_size: images are resized to S x S pixels (what the miner's transformers loads); null = the
            backbone's own preprocessing.
        pooling: global pooling of timm backbones: ``avg``, ``max`` or ``gem`` (max and gem have no Hugging
            Face export).
    """

    id: str = "efficientnet_lite0"
    seed: int = 0
    attn_implementation: str = "sdpa"
    input_size: Optional[int] = 224  # noqa: UP045 (image resized to S x S, ViTImageProcessor; null = own)
    pooling: str = "avg"  # timm backbones: avg | max | gem


@dataclass
class AugmentParams:
    """Augmentation of the K train copies: the validator's levels L0-L3 plus optional extras.

    Attributes:
        level_probs: probabilities of the validator's levels L0..L3 for each copy (4 numbers summing to 1).
        color_jitter: strength in [0, 1) of an extra colour jitter; 0 = off.
        erase_p: probability of an extra random erasing.
        flip_p: probability of an extra horizontal flip (the validator's own flips never fire).
        jpeg: end each copy with the validator's JPEG encoding.
    """

    level_probs: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    color_jitter: float = 0.0
    erase_p: float = 0.0
    flip_p: float = 0.0
    jpeg: bool = True


@dataclass
class EmbedParams:
    """How the frozen backbone turns images into cached features (every backbone forward uses
    ``device``, ``precision``, ``batch_size`` and ``compile``).

    Attributes:
        views: ``global`` (the whole image) or ``global+tiles`` (plus grid x grid tiles, multiple-instance).
        grid: tiles per side for ``global+tiles`` (>= 2).
        tile_overlap: overlap of neighbouring tiles, a fraction in [0, 1).
        train_copies: validator-augmented copies per train image (K), besides the clean one.
        val_renders_per_level: validator renders per val_select / val_calib image at each of L1-L3, besides
            L0.
        tta_flip: also embed horizontally flipped evaluation images; logits averaged over the flip.
        batch_size: images per forward (times the views per image).
        device: ``auto`` (a GPU if any), ``cpu`` or ``gpu``.
        precision: ``"32"`` or ``bf16`` (autocast); each device x precision has its own cache entries.
        compile: ``torch.compile`` the backbone's forward (pays off on GPUs for large data sets).
        seed: seed of the augmented copies and renders.
        cache_dir: persistent feature cache outside DVC's outputs (resume, reuse).
        augment: how the K train copies are drawn.
    """

    views: str = "global"
    grid: int = 3
    tile_overlap: float = 0.25
    train_copies: int = 2
    val_renders_per_level: int = 1
    tta_flip: bool = False
    batch_size: int = 32
    device: str = "auto"
    precision: str = "32"
    compile: bool = False
    seed: int = 0
    cache_dir: str = ".cache/features"
    augment: AugmentParams = field(default_factory=AugmentParams)


@dataclass
class FinetuneParams:
    """LoRA finetuning of the backbone with the head (``train.mode: finetune``).

    Attributes:
        lora_rank: adapter rank r (>= 1).
        lora_alpha: adapter scale numerator (> 0); the update is (lora_alpha / lora_rank) * B @ A.
        lora_dropout: dropout probability in [0, 1) on the adapters' input.
        use_dora: DoRA (weight-decomposed LoRA) instead of LoRA.
        backbone_lr: learning rate (> 0) of the backbone's adapters.
    """

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False
    backbone_lr: float = 1e-4


@dataclass
class HardNegativeParams:
    """``train.hard_negatives``: after out-of-fold scoring of train's negatives, the hardest are up-weighted
    and the head refitted (:mod:`roadwork.train.hard_negatives`); ``rounds: 0`` turns the loop off.

    Attributes:
        rounds: score-and-refit rounds after the first fit (0 = off).
        top_fraction: share of train's negatives, hardest first, up-weighted each round.
        weight: the sampling weight those negatives get (1 = as any other image).
        folds: folds of train's dedupe groups behind the out-of-fold scores.
    """

    rounds: int = 0
    top_fraction: float = 0.1
    weight: float = 3.0
    folds: int = 5


_FIELD_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _mirrored_fields(cls: type) -> list[tuple[str, type, Any]]:
    """The fields of a library dataclass (names, types, defaults) for a params section that mirrors it."""
    return [(f.name, _FIELD_TYPES[f.type], field(default=f.default)) for f in fields(cls)]


_TRAIN_EXTRA_DOC = """How the ``train`` stage trains.

    Attributes:
        mode: ``head`` (on cached features) or ``finetune`` (LoRA + head on images, for GPUs).
        refit: head mode: train again on train + val_select for the selected epochs and keep the last.
        finetune: the LoRA settings of ``finetune`` mode.

    """


def _train_params_schema() -> type:
    """``mode``, ``refit``, every field of :class:`~roadwork.train.head_config.HeadTrainConfig` (its names,
    types and defaults: one home), ``finetune`` and ``hard_negatives``."""
    from roadwork.train.head_config import HeadTrainConfig

    return make_dataclass(
        "TrainParams",
        [
            ("mode", str, field(default="head")),
            ("refit", bool, field(default=False)),
            *_mirrored_fields(HeadTrainConfig),
            ("finetune", FinetuneParams, field(default_factory=FinetuneParams)),
            ("hard_negatives", HardNegativeParams, field(default_factory=HardNegativeParams)),
        ],
        namespace={"__doc__": _TRAIN_EXTRA_DOC + (HeadTrainConfig.__doc__ or "")},
    )


TrainParams = _train_params_schema()


_ADAPT_EXTRA_DOC = """
    The stage:

    Attributes:
        unlabeled_dir: optional folder of extra unlabeled images (validation images are excluded by sha256).
        checkpoint_every_steps: resume checkpoints also every N steps (>= 0; 0 = at epoch ends only).
    """


def _adapt_params_schema() -> type:
    """Every field of :class:`~roadwork.adapt.config.AdaptConfig`, plus what only the stage needs: the
    optional unlabeled image folder and the checkpoint period."""
    from roadwork.adapt.config import AdaptConfig

    return make_dataclass(
        "AdaptParams",
        [
            *_mirrored_fields(AdaptConfig),
            ("unlabeled_dir", Optional[str], field(default=None)),  # noqa: UP045
            ("checkpoint_every_steps", int, field(default=0)),
        ],
        namespace={"__doc__": (AdaptConfig.__doc__ or "") + _ADAPT_EXTRA_DOC},
    )


AdaptParams = _adapt_params_schema()


@dataclass
class TrainerParams:
    """Where ``train`` (head mode) and ``adapt`` run.

    Attributes:
        accelerator: Lightning's accelerator: ``auto``, ``cpu`` or ``gpu``.
        devices: processes, one per device (>= 1); batch sizes are global and must divide by it.
        strategy: ``auto`` (one process) or ``ddp`` (one process per device; torchrun and SLURM work too).
    """

    accelerator: str = "auto"
    devices: int = 1
    strategy: str = "auto"


@dataclass
class CalibrateParams:
    """Calibration and the decision policy, fitted on val_calib only.

    Attributes:
        method: ``temperature``, ``platt``, ``beta`` or ``isotonic``.
        max_fnr: best MCC subject to FNR <= max_fnr on val_calib; null = unconstrained.
        guarantee_alpha: with guarantee_delta: P(true FNR > alpha) <= delta (Learn-then-Test); null = off.
        guarantee_delta: see guarantee_alpha; both set or both null.
        conformal_alpha: class-conditional conformal sets at 1 - alpha; abstain when the set is {0, 1}.
        ece_bins: bins of the expected calibration error.
        target_prior: class prior the policy is fitted for (the validator draws 50/50); null = the data's.
        threshold_rule: ``shrink`` (argmax pulled to the prior-neutral cut by its bootstrap noise) or
            ``argmax``.
    """

    method: str = "temperature"
    max_fnr: Optional[float] = None  # noqa: UP045
    guarantee_alpha: Optional[float] = None  # noqa: UP045
    guarantee_delta: Optional[float] = None  # noqa: UP045
    conformal_alpha: Optional[float] = 0.1  # noqa: UP045
    ece_bins: int = 15
    target_prior: Optional[float] = 0.5  # noqa: UP045
    threshold_rule: str = "shrink"


SCENE_KEYWORDS = (
    "night",
    "rain",
    "fog",
    "snow",
    "highway",
    "urban",
    "intersection",
    "construction worker",
    "cone",
    "barrier",
    "excavator",
    "lane closure",
    "sign",
)


@dataclass
class EvaluateParams:
    """The one look at val_test per model.

    Attributes:
        bootstrap_resamples: resamples of dedupe groups (not images) behind every interval (>= 10).
        ci_level: confidence level of the intervals, in (0, 1).
        seed: seed of the resamples, renders and reward streams.
        renders_per_level: validator renders per val_test image at each of L1-L3, besides the L0 render.
        reward_streams: simulated 100-challenge streams behind expected_reward (>= 10).
        worst_errors: thumbnails in the error contact sheet.
        scene_keywords: scene_description slices: whole words or phrases, any case, optional plural.
    """

    bootstrap_resamples: int = 1000
    ci_level: float = 0.95
    seed: int = 0
    renders_per_level: int = 8
    reward_streams: int = 2000
    worst_errors: int = 24
    scene_keywords: list[str] = field(default_factory=lambda: list(SCENE_KEYWORDS))


@dataclass
class DeployParams:
    """The shipped model: registry, model card, serving limits and promotion.

    Attributes:
        registered_model: MLflow registry name; bundle sets its ``challenger`` alias.
        model_name: model name in model_card.json.
        description: description in model_card.json.
        version: model version X.Y.Z in model_card.json.
        submitted_by: model_card.json's submitter; env ROADWORK_SUBMITTED_BY wins, empty = the OS user name.
        max_bytes: inputs larger than this are refused by predict and the served model.
        max_pixels: images with more pixels than this are refused by predict and the served model.
        request_max_bytes: the images of one served request hold at most this many bytes, or HTTP 400.
        request_max_pixels: the images of one served request declare at most this many pixels, or HTTP
            400 before any is decoded.
        batch_size: images per forward of the served model.
        promote_metric: what roadwork promote compares: ``expected_reward``, ``validator_mcc`` or
            ``validator_accuracy``.
        promote_min_delta: the challenger must beat the champion by more than this.
        promote_confidence: level of the paired group-bootstrap interval of challenger - champion, whose
            lower bound must be above zero for a promotion.
    """

    registered_model: str = "roadwork-classifier"
    model_name: str = "roadwork-classifier"
    description: str = "Roadwork / no-roadwork classifier for the NATIX StreetVision task, built by roadwork."
    version: str = "1.0.0"
    submitted_by: str = ""
    max_bytes: int = 20_000_000
    max_pixels: int = 50_000_000
    request_max_bytes: int = 40_000_000
    request_max_pixels: int = 50_000_000
    batch_size: int = 32
    promote_metric: str = "expected_reward"
    promote_min_delta: float = 0.0
    promote_confidence: float = 0.95


@dataclass
class TrackingParams:
    """MLflow tracking.

    Attributes:
        experiment: MLflow experiment the stage runs are logged to.
    """

    experiment: str = "roadwork"


@dataclass
class RoadworkConfig:
    data: DataParams = field(default_factory=DataParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    dedupe: DedupeParams = field(default_factory=DedupeParams)
    split: SplitParams = field(default_factory=SplitParams)
    backbone: BackboneParams = field(default_factory=BackboneParams)
    embed: EmbedParams = field(default_factory=EmbedParams)
    adapt: AdaptParams = field(default_factory=AdaptParams)
    train: TrainParams = field(default_factory=TrainParams)
    trainer: TrainerParams = field(default_factory=TrainerParams)
    calibrate: CalibrateParams = field(default_factory=CalibrateParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    deploy: DeployParams = field(default_factory=DeployParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)


VIEW_MODES = ("global", "global+tiles")
POOLINGS = ("avg", "max", "gem")  # roadwork.models.pooling.POOLINGS, kept here so loading imports no torch
# copies of roadwork.policy.THRESHOLD_RULES / models.inference.VIEW_MODES (a test keeps them equal), so
# loading params imports neither scipy nor torch
THRESHOLD_RULES = ("argmax", "shrink")
PROMOTE_METRICS = ("expected_reward", "validator_mcc", "validator_accuracy")

# (section.key) -> (predicate, what a valid value looks like).
# Types are checked by OmegaConf; these are ranges.
_RANGES: dict[str, tuple[Any, str]] = {
    "data.synth.n": (lambda v: v >= 20, "an integer >= 20"),
    "data.synth.near_duplicate_fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "ingest.working_min_side": (
        lambda v: 224 <= v <= 8192,
        "an integer in [224, 8192] (512 keeps every validator crop of 20 % area from upsampling)",
    ),
    "ingest.jpeg_quality": (lambda v: 1 <= v <= 100, "an integer in [1, 100]"),
    "ingest.max_pixels": (
        lambda v: 0 < v <= (_pillow_limit() or v),
        "a positive integer no larger than Pillow's own hard limit (2 * PIL.Image.MAX_IMAGE_PIXELS)",
    ),
    "ingest.min_side": (lambda v: v >= 1, "a positive integer"),
    "ingest.workers": (lambda v: v >= 1, "a positive integer"),
    "data.synth.seed": (lambda v: v >= 0, "an integer >= 0"),
    "split.seed": (lambda v: v >= 0, "an integer >= 0"),
    "split.group_by": (
        lambda v: all(c.strip() for c in v) and len(set(v)) == len(v),
        "a list of distinct metadata column names (metadata.csv or parquet columns), e.g. [drive_id]",
    ),
    "split.time_window_s": (lambda v: v is None or v > 0, "a positive number of seconds, or null for off"),
    "split.time_column": (lambda v: bool(v.strip()), "a non-empty column name"),
    "split.drive_column": (lambda v: v is None or bool(v.strip()), "a non-empty column name, or null"),
    "split.group_tolerance": (lambda v: 0 < v < 1, "a share in (0, 1), e.g. 0.05"),
    "dedupe.phash_radius": (lambda v: 0 <= v <= 64, "an integer in [0, 64]"),
    "dedupe.hash_size": (lambda v: v == 8, "8 (hashes are stored as 64-bit integers)"),
    "dedupe.embedding_cosine": (
        lambda v: v is None or 0 < v <= 1,
        "a cosine similarity in (0, 1], or null to turn the embedding check off",
    ),
    "dedupe.input_size": (
        lambda v: v is None or 32 <= v <= 1024,
        "null (the backbone's own preprocessing) or an input side in pixels, 32-1024",
    ),
    "dedupe.batch_size": (lambda v: v >= 1, "a positive integer"),
    "backbone.seed": (lambda v: v >= 0, "an integer >= 0"),
    "backbone.attn_implementation": (lambda v: v in ("sdpa", "eager"), "'sdpa' or 'eager'"),
    "backbone.input_size": (
        lambda v: v is None or 32 <= v <= 1024,
        "null (the backbone's own preprocessing) or an input side in pixels, 32-1024",
    ),
    "backbone.pooling": (lambda v: v in POOLINGS, f"one of {POOLINGS} (timm backbones)"),
    "embed.views": (lambda v: v in VIEW_MODES, f"one of {VIEW_MODES}"),
    "embed.grid": (lambda v: v >= 2, "an integer >= 2 (tiles per side)"),
    "embed.tile_overlap": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "embed.train_copies": (lambda v: v >= 0, "an integer >= 0 (augmented copies per train image)"),
    "embed.val_renders_per_level": (
        lambda v: v >= 0,
        "an integer >= 0 (validator renders per val_select / val_calib image at each of L1-L3)",
    ),
    "embed.batch_size": (lambda v: v >= 1, "a positive integer"),
    "embed.seed": (lambda v: v >= 0, "an integer >= 0"),
    "embed.device": (lambda v: v in ("auto", "cpu", "gpu"), "one of auto (a GPU if any), cpu, gpu"),
    "embed.precision": (lambda v: v in ("32", "bf16"), "'32' or 'bf16' (bfloat16 autocast)"),
    "embed.augment.level_probs": (
        lambda v: len(v) == 4 and min(v) >= 0 and abs(sum(v) - 1) < 1e-9,
        "4 probabilities of the validator levels L0..L3 summing to 1",
    ),
    "embed.augment.color_jitter": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "embed.augment.erase_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "embed.augment.flip_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "train.mode": (lambda v: v in ("head", "finetune"), "'head' (cached features) or 'finetune' (LoRA)"),
    "train.finetune.lora_rank": (lambda v: v >= 1, "a positive integer"),
    "train.finetune.lora_alpha": (lambda v: v > 0, "a positive number"),
    "train.finetune.lora_dropout": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "train.finetune.backbone_lr": (lambda v: v > 0, "a positive number"),
    "train.hard_negatives.rounds": (lambda v: v >= 0, "an integer >= 0 (0 = no hard-negative loop)"),
    "train.hard_negatives.top_fraction": (
        lambda v: 0 < v <= 1,
        "a fraction in (0, 1] of the train split's negatives to up-weight",
    ),
    "train.hard_negatives.weight": (lambda v: v >= 1, "a number >= 1 (sampling weight of a hard negative)"),
    "train.hard_negatives.folds": (lambda v: v >= 2, "an integer >= 2 (out-of-fold scoring)"),
    "adapt.checkpoint_every_steps": (lambda v: v >= 0, "an integer >= 0 (0 = at epoch ends only)"),
    "trainer.accelerator": (lambda v: v in ("auto", "cpu", "gpu"), "one of auto, cpu, gpu"),
    "trainer.devices": (lambda v: v >= 1, "a positive integer (processes, one per device)"),
    "trainer.strategy": (
        lambda v: v in ("auto", "ddp"),
        "'auto' (one process) or 'ddp' (one process per device; torchrun and SLURM work too)",
    ),
    "calibrate.method": (
        lambda v: v in ("temperature", "platt", "beta", "isotonic"),
        "one of temperature, platt, beta, isotonic",
    ),
    "calibrate.max_fnr": (lambda v: v is None or 0 <= v < 1, "a fraction in [0, 1), or null for none"),
    "calibrate.guarantee_alpha": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.guarantee_delta": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.conformal_alpha": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.ece_bins": (lambda v: v >= 1, "a positive integer"),
    "calibrate.target_prior": (
        lambda v: v is None or 0 < v < 1,
        "a class prior in (0, 1) (0.5: the validator's 50/50 draws), or null for the data's own",
    ),
    "calibrate.threshold_rule": (
        lambda v: v in THRESHOLD_RULES,
        f"one of {THRESHOLD_RULES}",
    ),
    "evaluate.bootstrap_resamples": (lambda v: v >= 10, "an integer >= 10"),
    "evaluate.ci_level": (lambda v: 0 < v < 1, "a fraction in (0, 1)"),
    "evaluate.seed": (lambda v: v >= 0, "an integer >= 0"),
    "evaluate.renders_per_level": (
        lambda v: v >= 1,
        "a positive integer (validator renders per val_test image at each of L1-L3)",
    ),
    "evaluate.reward_streams": (lambda v: v >= 10, "an integer >= 10 (simulated challenge streams)"),
    "evaluate.worst_errors": (lambda v: v >= 0, "an integer >= 0"),
    "evaluate.scene_keywords": (
        lambda v: all(k.strip() for k in v) and len({k.lower() for k in v}) == len(v),
        "a list of distinct (ignoring case), non-empty keywords or phrases, e.g. [night, rain, highway]",
    ),
    "deploy.registered_model": (lambda v: bool(v.strip()), "a non-empty registered model name"),
    "deploy.version": (
        lambda v: re.fullmatch(r"\d+\.\d+\.\d+", v) is not None,
        "a version X.Y.Z (digits), as model_card.json requires",
    ),
    "deploy.max_bytes": (lambda v: v >= 1, "a positive integer (bytes)"),
    "deploy.max_pixels": (
        lambda v: 0 < v <= (_pillow_limit() or v),
        "a positive integer no larger than Pillow's own hard limit",
    ),
    "deploy.request_max_bytes": (lambda v: v >= 1, "a positive integer (bytes per served request)"),
    "deploy.request_max_pixels": (lambda v: v >= 1, "a positive integer (pixels per served request)"),
    "deploy.batch_size": (lambda v: v >= 1, "a positive integer"),
    "deploy.promote_metric": (
        lambda v: v in PROMOTE_METRICS,
        f"one of {PROMOTE_METRICS}",
    ),
    "deploy.promote_confidence": (lambda v: 0 < v < 1, "a confidence level in (0, 1), e.g. 0.95"),
    "deploy.promote_min_delta": (lambda v: v >= 0, "a number >= 0"),
}


def _pillow_limit() -> int | None:
    from roadwork.data.images import pillow_pixel_limit

    return pillow_pixel_limit()


def _check_ranges(cfg: RoadworkConfig, source: str) -> None:
    for key, (ok, expected) in _RANGES.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if not ok(value):
            raise ConfigError(f"{source}: '{key}' is {value!r}; expected {expected}.")
    _check_sources(cfg.data.sources, source)
    _check_library_config(head_train_config, cfg.train, "train", source)
    _check_library_config(adapt_config, cfg.adapt, "adapt", source)
    if (cfg.calibrate.guarantee_alpha is None) != (cfg.calibrate.guarantee_delta is None):
        raise ConfigError(
            f"{source}: 'calibrate.guarantee_alpha' and 'calibrate.guarantee_delta' go together "
            "(FNR <= alpha with probability >= 1 - delta): set both, or both to null."
        )
    for one, total in (("max_bytes", "request_max_bytes"), ("max_pixels", "request_max_pixels")):
        if getattr(cfg.deploy, total) < getattr(cfg.deploy, one):
            raise ConfigError(
                f"{source}: 'deploy.{total}' is {getattr(cfg.deploy, total)}, below 'deploy.{one}' "
                f"({getattr(cfg.deploy, one)}): a request could not carry one image of the largest size."
            )
    if cfg.split.time_window_s is not None and cfg.split.drive_column is None:
        raise ConfigError(
            f"{source}: 'split.time_window_s' joins frames of one drive, so it needs 'split.drive_column' "
            "(the metadata column naming each frame's drive); set it, or set split.time_window_s to null."
        )
    weighted = [s.name for s in cfg.data.sources if s.weight != 1 and s.role != "unlabeled"]
    reasons = [f"data.sources {weighted} have weights other than 1"] if weighted else []
    reasons += ["train.hard_negatives.rounds is above 0"] if cfg.train.hard_negatives.rounds else []
    if cfg.train.mode == "finetune" and reasons:
        raise ConfigError(
            f"{source}: train.mode=finetune draws every train image alike, but {' and '.join(reasons)}; "
            "use train.mode=head, or set those weights to 1 and the rounds to 0."
        )
    fractions = cfg.split.fractions
    values = {f.name: getattr(fractions, f.name) for f in fields(fractions)}
    bad = [name for name, v in values.items() if not 0 < v < 1]
    if bad:
        raise ConfigError(f"{source}: 'split.fractions.{bad[0]}' must lie in (0, 1), got {values[bad[0]]!r}.")
    if abs(sum(values.values()) - 1.0) > 1e-9:
        raise ConfigError(
            f"{source}: 'split.fractions' must sum to 1, got {sum(values.values()):.6g} from {values}."
        )


def _check_sources(sources: list[SourceParams], source: str) -> None:
    """``data.sources`` by :func:`roadwork.data.sources.check_sources`, its error as a ConfigError."""
    from roadwork.data.sources import check_sources, sources_from

    try:
        check_sources(sources_from(sources))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}.") from None


def _library_config(section: Any, cls: type) -> Any:
    """``cls`` (a library dataclass whose fields a params section mirrors) built from ``section``."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def head_train_config(train: Any) -> Any:
    """The :class:`~roadwork.train.head_config.HeadTrainConfig` that ``train`` describes."""
    from roadwork.train.head_config import HeadTrainConfig

    return _library_config(train, HeadTrainConfig)


def adapt_config(adapt: Any) -> Any:
    """The :class:`~roadwork.adapt.config.AdaptConfig` that ``adapt`` describes."""
    from roadwork.adapt.config import AdaptConfig

    return _library_config(adapt, AdaptConfig)


def _check_library_config(build: Any, section: Any, name: str, source: str) -> None:
    """Re-raise the library dataclass's own validation error as a ConfigError naming ``name.key``."""
    try:
        build(section)
    except (TypeError, ValueError) as exc:
        message = re.sub(r"\b(HeadTrainConfig|AdaptConfig)\.", f"{name}.", str(exc))
        raise ConfigError(f"{source}: {message}") from None


_INTERPOLATION = re.compile(r"(?<!\\)\$\{")
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_SECTION = "a section (a mapping of keys)"
_LOOKUP = object()  # _check_type: find the expected type from the dotted key


@functools.cache
def _type_hints(section: type) -> dict[str, Any]:
    return typing.get_type_hints(section)


def _expected_type(key: str) -> Any:
    """The schema's type of dotted ``key`` (a dataclass for a section), or None for a key it lacks."""
    expected: Any = RoadworkConfig
    for part in key.split("."):
        if not is_dataclass(expected):
            return None
        expected = _type_hints(expected).get(part)
    return expected


def _type_mismatch(value: Any, expected: Any) -> str | None:
    """What ``expected`` accepts, when ``value`` (as written, before any conversion) is not of it."""
    args = typing.get_args(expected)
    if typing.get_origin(expected) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        inner = _type_mismatch(value, next(a for a in args if a is not type(None)))
        return None if inner is None else f"{inner} or null"
    if typing.get_origin(expected) is list:
        ok = isinstance(value, list) and all(_type_mismatch(item, args[0]) is None for item in value)
        return None if ok else f"a list whose items are each {_TYPE_NAMES.get(args[0], _SECTION)}"
    if is_dataclass(expected):
        return None if isinstance(value, Mapping) else _SECTION
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: number,
        str: isinstance(value, str) or number,
    }[expected]
    return None if ok else _TYPE_NAMES[expected]


def _refuse_interpolation(key: str, value: Any, source: str) -> None:
    """Refuse an interpolation anywhere in ``value`` (sections and lists included)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            _refuse_interpolation(f"{key}.{name}", item, source)
    elif isinstance(value, list):
        for item in value:
            _refuse_interpolation(key, item, source)
    elif isinstance(value, str) and _INTERPOLATION.search(value):
        raise ConfigError(
            f"{source}: '{key}' is the interpolation {value!r}; params must be literal values. An "
            "interpolation is resolved when the stage runs, so ${oc.env:...} would copy environment "
            "variables (secrets included) into the MLflow run's params, and DVC, which records the literal "
            "text, would not notice when the resolved value changes. Write the value itself."
        )


def _check_type(key: str, value: Any, source: str, expected: Any = _LOOKUP) -> None:
    """Refuse a value ``key``'s schema type would have to convert; sections and lists of sections recurse.
    A key the schema lacks is left to the merge, which names it with suggestions, except inside a list of
    sections, where the merge would not name the item."""
    if expected is _LOOKUP:
        expected = _expected_type(key)
    if expected is None:
        return
    mismatch = _type_mismatch(value, expected)
    if mismatch is not None:
        raise ConfigError(
            f"{source}: invalid value for '{key}': expected {mismatch}, got {value!r} "
            f"({type(value).__name__}); values are never converted (write numbers without quotes and "
            "true/false for switches)."
        )
    if isinstance(value, Mapping):
        hints = _type_hints(expected)
        for name, item in value.items():
            _check_type(f"{key}.{name}", item, source, hints.get(name))
    item_type = typing.get_args(expected)[0] if typing.get_origin(expected) is list else None
    if isinstance(value, list) and is_dataclass(item_type):
        hints = _type_hints(item_type)
        for i, item in enumerate(value):
            unknown = sorted(set(item) - set(hints))
            if unknown:
                raise ConfigError(
                    f"{source}: unknown key '{key}[{i}].{unknown[0]}'. Valid keys here: {', '.join(hints)}."
                )
            _check_type(f"{key}[{i}]", item, source, item_type)


def _check_literal(key: str, value: Any, source: str) -> None:
    """``value`` for ``key`` as written, before OmegaConf's merge converts it: literal and of its type."""
    _refuse_interpolation(key, value, source)
    _check_type(key, value, source)


def _valid_keys(node: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for f in fields(node):
        full = f"{prefix}{f.name}"
        keys.append(full)
        value = getattr(node, f.name)
        if is_dataclass(value):
            keys.extend(_valid_keys(value, full + "."))
    return keys


def _explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or "?"
    if isinstance(exc, ConfigKeyError):
        known = _valid_keys(RoadworkConfig())
        close = difflib.get_close_matches(full_key, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        siblings = sorted(
            k for k in known if k.rsplit(".", 1)[0] == parent and k.count(".") == full_key.count(".")
        )
        return ConfigError(
            f"{source}: unknown key '{full_key}'.{hint} Valid keys here: {', '.join(siblings) or '(none)'}."
        )
    if isinstance(exc, ValidationError):
        return ConfigError(f"{source}: invalid value for '{full_key}': {exc.msg}")
    return ConfigError(f"{source}: {exc}")


# whitespace before the next "key=": where one argument holding several overrides is cut
_NEXT_OVERRIDE = re.compile(r"\s+(?=[A-Za-z_][\w.]*=)")


def split_overrides(arguments: Sequence[str]) -> tuple[str, ...]:
    """The overrides in command-line ``arguments``: an empty argument is none, and one argument may hold
    several, separated by whitespace.

    ``mlflow run -e split`` passes its empty ``overrides`` parameter on as an empty argument, and
    ``-P overrides="split.seed=3 train.lr=0.01"`` as one argument. A value with a space stays whole
    (``deploy.description=a b``): only whitespace before another ``key=`` separates.
    """
    return tuple(part for arg in arguments for part in _NEXT_OVERRIDE.split(arg.strip()) if part)


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse ``key=value`` overrides with Hydra's grammar (quoting, lists, ``null``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"command-line override could not be parsed: {exc}") from None
    result = []
    for override in parsed:
        if override.is_delete() or override.is_add() or override.package is not None:
            raise ConfigError(
                f"override '{override.input_line}': only plain 'key=value' is supported "
                "(every key exists in params.yaml already)."
            )
        result.append((override.key_or_group, override.value()))
    return result


def load_config(
    params_file: Path | str = DEFAULT_PARAMS_FILE, overrides: Sequence[str] = ()
) -> RoadworkConfig:
    """Read ``params_file``, apply ``overrides`` and validate everything against :class:`RoadworkConfig`.

    Keys missing from the file take the schema's defaults; unknown keys, wrong types and out-of-range
    values raise :class:`ConfigError`.
    """
    params_file = Path(params_file)
    if not params_file.is_file():
        raise ConfigError(
            f"{params_file}: parameter file not found (run from the repository root or pass --params)."
        )
    try:
        from_file = OmegaConf.load(params_file)
    except Exception as exc:
        raise ConfigError(f"{params_file}: not valid YAML: {exc}") from None
    if not isinstance(from_file, DictConfig):
        raise ConfigError(f"{params_file}: the top level must be a mapping of sections, got a list.")
    for key, value in OmegaConf.to_container(from_file, resolve=False).items():
        _check_literal(str(key), value, str(params_file))
    schema = OmegaConf.structured(RoadworkConfig)
    try:
        merged = OmegaConf.merge(schema, from_file)
    except OmegaConfBaseException as exc:
        raise _explain(exc, str(params_file)) from None
    for key, value in parse_overrides(overrides):
        _check_literal(key, value, "override")
        try:
            if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
                raise ConfigKeyError(f"Key '{key}' not in config")
            # a list is replaced whole either way; merging converts a list of mappings into sections
            OmegaConf.update(merged, key, value, merge=isinstance(value, list))
        except ConfigKeyError as exc:
            exc.full_key = key
            raise _explain(exc, "override") from None
        except OmegaConfBaseException as exc:
            raise _explain(exc, "override") from None
    cfg: RoadworkConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _check_ranges(cfg, str(params_file) if not overrides else f"{params_file} + overrides")
    return cfg


_ATTRIBUTE_ENTRY = re.compile(r"^    (\w+): (.*)$")
_RST_ROLE = re.compile(r":\w+:`~?([^`]*)`")


def field_docs(cls: type) -> dict[str, str]:
    """Each field's entry in the ``Attributes:`` blocks of ``cls``'s docstring (Google style), on one line:
    the schema's own descriptions, which ``roadwork <stage> --help`` shows."""
    docs: dict[str, str] = {}
    current: str | None = None
    in_block = False
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        entry = _ATTRIBUTE_ENTRY.match(line)
        if line.strip() == "Attributes:":
            in_block, current = True, None
        elif in_block and entry:
            current = entry[1]
            docs[current] = entry[2]
        elif in_block and current and line.startswith(" " * 8):
            docs[current] += " " + line.strip()
        else:
            in_block, current = False, None
    return {name: _RST_ROLE.sub(r"\1", text).replace("``", "") for name, text in docs.items()}


def describe(key: str) -> str:
    """The schema's one-line description of the dotted params key ``key`` ("" when it has none)."""
    *sections, name = key.split(".")
    section = functools.reduce(getattr, sections, RoadworkConfig())
    return field_docs(type(section)).get(name, "")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config (or one section) as plain nested dicts."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def config_hash(cfg: RoadworkConfig) -> str:
    """A stable short hash of the whole resolved configuration."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
