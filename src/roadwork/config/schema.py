"""The params schema: one dataclass per section of ``params.yaml``, its fields' types, defaults and
one-line descriptions (the ``Attributes:`` of each docstring, which ``roadwork <stage> --help`` shows).

Sections that mirror a library dataclass are generated from it, so its names, types, defaults and docs
have one home: ``train`` mirrors :class:`~roadwork.train.head_config.HeadTrainConfig`, ``train.finetune``
:class:`~roadwork.train.finetune_config.FinetuneConfig` and ``adapt``
:class:`~roadwork.adapt.config.AdaptConfig`. Every section is frozen by convention; library code receives
plain values taken from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Optional

from roadwork.adapt.config import AdaptConfig
from roadwork.train.finetune_config import FinetuneConfig
from roadwork.train.head_config import HeadTrainConfig


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


def _mirrored(
    name: str, library: type, doc: str, *, before: Sequence[Any] = (), after: Sequence[Any] = ()
) -> type:
    """A params section named ``name`` holding every field of the library dataclass ``library`` (its names,
    types and defaults), between the section's own fields ``before`` and ``after``."""
    mirrored = [(f.name, _FIELD_TYPES[f.type], field(default=f.default)) for f in fields(library)]
    return make_dataclass(name, [*before, *mirrored, *after], namespace={"__doc__": doc})


FinetuneParams = _mirrored("FinetuneParams", FinetuneConfig, FinetuneConfig.__doc__ or "")


_TRAIN_EXTRA_DOC = """How the ``train`` stage trains.

    Attributes:
        mode: ``head`` (on cached features) or ``finetune`` (LoRA + head on images, for GPUs).
        refit: head mode: train again on train + val_select for the selected epochs and keep the last.
        crossfit_folds: head mode: folds of train's dedupe groups; each train render is scored by a head
            fitted on the other folds (``logits/train_crossfit.csv``, what calibrate's threshold is chosen
            on by default); 0 = off.
        finetune: the LoRA settings of ``finetune`` mode.

    """


TrainParams = _mirrored(
    "TrainParams",
    HeadTrainConfig,
    _TRAIN_EXTRA_DOC + (HeadTrainConfig.__doc__ or ""),
    before=[
        ("mode", str, field(default="head")),
        ("refit", bool, field(default=False)),
        ("crossfit_folds", int, field(default=5)),
    ],
    after=[
        ("finetune", FinetuneParams, field(default_factory=FinetuneParams)),
        ("hard_negatives", HardNegativeParams, field(default_factory=HardNegativeParams)),
    ],
)


_ADAPT_EXTRA_DOC = """
    The stage:

    Attributes:
        unlabeled_dir: optional folder of extra unlabeled images (validation images are excluded by sha256).
        checkpoint_every_steps: resume checkpoints also every N steps (>= 0; 0 = at epoch ends only).
    """


AdaptParams = _mirrored(
    "AdaptParams",
    AdaptConfig,
    (AdaptConfig.__doc__ or "") + _ADAPT_EXTRA_DOC,
    after=[
        ("unlabeled_dir", Optional[str], field(default=None)),  # noqa: UP045
        ("checkpoint_every_steps", int, field(default=0)),
    ],
)


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
    """Calibration and the decision policy: the calibrator on val_calib, the threshold on ``threshold_data``.

    Attributes:
        method: ``temperature``, ``platt``, ``beta`` or ``isotonic``.
        max_fnr: best MCC subject to FNR <= max_fnr on val_calib; null = unconstrained.
        guarantee_alpha: with guarantee_delta: P(true FNR > alpha) <= delta (Learn-then-Test); null = off.
        guarantee_delta: see guarantee_alpha; both set or both null.
        conformal_alpha: class-conditional conformal sets at 1 - alpha; abstain when the set is {0, 1}.
        ece_bins: bins of the expected calibration error.
        target_prior: class prior the policy is fitted for (the validator draws 50/50); null = the data's.
        threshold_rule: ``shrink`` (the argmax pulled to the prior-neutral cut by its bootstrap noise),
            ``bagged`` (the median of the bootstrap replicates' MCC-argmax cuts) or ``argmax``.
        threshold_data: the margins the threshold rule runs on: ``train_crossfit`` (every train render
            scored out of fold, ``train.crossfit_folds``; about four times val_calib's images, so the cut
            does not follow one small set's noise) or ``val_calib``.
    """

    method: str = "temperature"
    max_fnr: Optional[float] = None  # noqa: UP045
    guarantee_alpha: Optional[float] = None  # noqa: UP045
    guarantee_delta: Optional[float] = None  # noqa: UP045
    conformal_alpha: Optional[float] = 0.1  # noqa: UP045
    ece_bins: int = 15
    target_prior: Optional[float] = 0.5  # noqa: UP045
    threshold_rule: str = "shrink"
    threshold_data: str = "train_crossfit"


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
        positive_rate_band: [low, high]: bundle ships a variant whose policy answers roadwork for this
            share of val_calib's 50/50 validator mix, the best such by MCC (none: the nearest); [0, 1] = off.
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
    positive_rate_band: list[float] = field(default_factory=lambda: [0.35, 0.65])


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
