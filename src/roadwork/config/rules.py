"""The one check of a loaded config's values: vocabularies, ranges and the rules between keys.

Keys of the sections that mirror a library dataclass (``train``, ``train.finetune``, ``adapt``) are checked
by that class's own rules (:meth:`roadwork.settings.Settings.check`), with errors naming the params key;
every other key by :data:`CHOICES` (word lists from :mod:`roadwork.vocab`) and :data:`RANGES`. Types were
checked before, as written (:mod:`roadwork.config.literal`).
"""

from __future__ import annotations

import functools
import re
from dataclasses import fields
from typing import Any

from roadwork.adapt.config import AdaptConfig
from roadwork.config.errors import ConfigError
from roadwork.config.schema import RoadworkConfig
from roadwork.settings import Rule, Settings
from roadwork.train.finetune_config import FinetuneConfig
from roadwork.train.head_config import HeadTrainConfig
from roadwork.vocab import (
    ACCELERATORS,
    ATTN_IMPLEMENTATIONS,
    CALIBRATION_METHODS,
    FEATURE_PRECISIONS,
    POOLINGS,
    PROMOTE_METRICS,
    STRATEGIES,
    THRESHOLD_DATA,
    THRESHOLD_RULES,
    TRAIN_MODES,
    VIEW_MODES,
)

# (section.key) -> the words it takes, for the keys outside the mirrored sections
CHOICES: dict[str, tuple[str, ...]] = {
    "backbone.attn_implementation": ATTN_IMPLEMENTATIONS,
    "backbone.pooling": POOLINGS,
    "embed.views": VIEW_MODES,
    "embed.device": ACCELERATORS,
    "embed.precision": FEATURE_PRECISIONS,
    "train.mode": TRAIN_MODES,
    "trainer.accelerator": ACCELERATORS,
    "trainer.strategy": STRATEGIES,
    "calibrate.method": CALIBRATION_METHODS,
    "calibrate.threshold_rule": THRESHOLD_RULES,
    "calibrate.threshold_data": THRESHOLD_DATA,
    "deploy.promote_metric": PROMOTE_METRICS,
}

# params sections that mirror a library dataclass: checked by its rules, errors naming the params key
LIBRARY_SECTIONS: dict[str, type[Settings]] = {
    "train": HeadTrainConfig,
    "train.finetune": FinetuneConfig,
    "adapt": AdaptConfig,
}

# (section.key) -> (predicate, what a valid value looks like).
# Types are checked as written (roadwork.config.literal); these are ranges.
RANGES: dict[str, Rule] = {
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
    "backbone.input_size": (
        lambda v: v is None or 32 <= v <= 1024,
        "null (the backbone's own preprocessing) or an input side in pixels, 32-1024",
    ),
    "embed.grid": (lambda v: v >= 2, "an integer >= 2 (tiles per side)"),
    "embed.tile_overlap": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "embed.train_copies": (lambda v: v >= 0, "an integer >= 0 (augmented copies per train image)"),
    "embed.val_renders_per_level": (
        lambda v: v >= 0,
        "an integer >= 0 (validator renders per val_select / val_calib image at each of L1-L3)",
    ),
    "embed.batch_size": (lambda v: v >= 1, "a positive integer"),
    "embed.seed": (lambda v: v >= 0, "an integer >= 0"),
    "embed.augment.level_probs": (
        lambda v: len(v) == 4 and min(v) >= 0 and abs(sum(v) - 1) < 1e-9,
        "4 probabilities of the validator levels L0..L3 summing to 1",
    ),
    "embed.augment.color_jitter": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "embed.augment.erase_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "embed.augment.flip_p": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "train.crossfit_folds": (
        lambda v: v == 0 or v >= 2,
        "0 (off) or an integer >= 2 (folds of train's dedupe groups behind the cross-fitted margins)",
    ),
    "train.hard_negatives.rounds": (lambda v: v >= 0, "an integer >= 0 (0 = no hard-negative loop)"),
    "train.hard_negatives.top_fraction": (
        lambda v: 0 < v <= 1,
        "a fraction in (0, 1] of the train split's negatives to up-weight",
    ),
    "train.hard_negatives.weight": (lambda v: v >= 1, "a number >= 1 (sampling weight of a hard negative)"),
    "train.hard_negatives.folds": (lambda v: v >= 2, "an integer >= 2 (out-of-fold scoring)"),
    "adapt.checkpoint_every_steps": (lambda v: v >= 0, "an integer >= 0 (0 = at epoch ends only)"),
    "trainer.devices": (lambda v: v >= 1, "a positive integer (processes, one per device)"),
    "calibrate.max_fnr": (lambda v: v is None or 0 <= v < 1, "a fraction in [0, 1), or null for none"),
    "calibrate.guarantee_alpha": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.guarantee_delta": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.conformal_alpha": (lambda v: v is None or 0 < v < 1, "a fraction in (0, 1), or null"),
    "calibrate.ece_bins": (lambda v: v >= 1, "a positive integer"),
    "calibrate.target_prior": (
        lambda v: v is None or 0 < v < 1,
        "a class prior in (0, 1) (0.5: the validator's 50/50 draws), or null for the data's own",
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
    "deploy.promote_confidence": (lambda v: 0 < v < 1, "a confidence level in (0, 1), e.g. 0.95"),
    "deploy.promote_min_delta": (lambda v: v >= 0, "a number >= 0"),
    "deploy.positive_rate_band": (
        lambda v: len(v) == 2 and 0 <= v[0] < v[1] <= 1,
        "[low, high] with 0 <= low < high <= 1 (e.g. [0.35, 0.65]; [0, 1] turns the band off)",
    ),
}


def _pillow_limit() -> int | None:
    from roadwork.data.images import pillow_pixel_limit

    return pillow_pixel_limit()


def _value(cfg: Any, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


def validate(cfg: RoadworkConfig, source: str) -> None:
    """Raise :class:`ConfigError` naming ``source`` and the key at the first value of ``cfg`` that is out
    of its vocabulary or range, or that breaks a rule between keys."""
    for key, allowed in CHOICES.items():
        if _value(cfg, key) not in allowed:
            raise ConfigError(
                f"{source}: '{key}' is {_value(cfg, key)!r}; expected one of {', '.join(allowed)}."
            )
    for key, (ok, expected) in RANGES.items():
        if not ok(_value(cfg, key)):
            raise ConfigError(f"{source}: '{key}' is {_value(cfg, key)!r}; expected {expected}.")
    _check_sources(cfg, source)
    for key, library in LIBRARY_SECTIONS.items():
        section = _value(cfg, key)
        try:
            library.check({f.name: getattr(section, f.name) for f in fields(library)}, key)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    _check_relations(cfg, source)
    _check_fractions(cfg, source)


def _check_sources(cfg: RoadworkConfig, source: str) -> None:
    """``data.sources`` by :func:`roadwork.data.sources.check_sources`, its error as a ConfigError."""
    from roadwork.data.sources import check_sources, sources_from

    try:
        check_sources(sources_from(cfg.data.sources))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}.") from None


def _check_relations(cfg: RoadworkConfig, source: str) -> None:
    """The rules between keys of different sections (or of one section outside the mirrored ones)."""
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
    if cfg.calibrate.threshold_data == "train_crossfit" and (
        cfg.train.mode != "head" or cfg.train.crossfit_folds == 0
    ):
        raise ConfigError(
            f"{source}: 'calibrate.threshold_data' is train_crossfit, which needs the cross-fitted train "
            "margins that train writes in head mode with train.crossfit_folds >= 2 (got "
            f"train.mode={cfg.train.mode}, train.crossfit_folds={cfg.train.crossfit_folds}); set "
            "calibrate.threshold_data=val_calib to choose the threshold on val_calib alone."
        )
    weighted = [s.name for s in cfg.data.sources if s.weight != 1 and s.role != "unlabeled"]
    reasons = [f"data.sources {weighted} have weights other than 1"] if weighted else []
    reasons += ["train.hard_negatives.rounds is above 0"] if cfg.train.hard_negatives.rounds else []
    if cfg.train.mode == "finetune" and reasons:
        raise ConfigError(
            f"{source}: train.mode=finetune draws every train image alike, but {' and '.join(reasons)}; "
            "use train.mode=head, or set those weights to 1 and the rounds to 0."
        )


def _check_fractions(cfg: RoadworkConfig, source: str) -> None:
    """Each split's share lies in (0, 1), and the shares sum to 1."""
    fractions = cfg.split.fractions
    values = {f.name: getattr(fractions, f.name) for f in fields(fractions)}
    bad = [name for name, v in values.items() if not 0 < v < 1]
    if bad:
        raise ConfigError(f"{source}: 'split.fractions.{bad[0]}' must lie in (0, 1), got {values[bad[0]]!r}.")
    if abs(sum(values.values()) - 1.0) > 1e-9:
        raise ConfigError(
            f"{source}: 'split.fractions' must sum to 1, got {sum(values.values()):.6g} from {values}."
        )
