"""Typed parameters: ``params.yaml`` is the single source, validated against this package's schema.

``load_config`` merges ``params.yaml`` and command-line overrides in Hydra's syntax (``split.seed=3``) onto
the structured schema. An unknown or misspelt key, a value of the wrong type or a value outside its allowed
range fails with a :class:`ConfigError` that names the file, the full dotted key and the fix — the earlier
pipeline silently ignored keys it did not know. Library code receives plain values taken from the loaded
config and never reads params files itself.

The package, by job (every public name is importable from ``roadwork.config``):

* :mod:`.schema`: one dataclass per section; ``train``, ``train.finetune`` and ``adapt`` mirror library
  dataclasses.
* :mod:`.literal`: values as written: literal (no interpolation) and of their type, never converted.
* :mod:`.rules`: the one check of the values: vocabularies (:mod:`roadwork.vocab`), ranges, rules between
  keys, and the mirrored sections by their library class's own rules.
* :mod:`.load`: :func:`load_config` and the override parsing.
* :mod:`.convert`: plain dicts, flat keys and the library dataclasses of a loaded config.
* :mod:`.docs`: each key's one-line description, for ``roadwork <stage> --help``.
"""

from roadwork.config.convert import adapt_config, finetune_config, flatten, head_train_config, to_dict
from roadwork.config.docs import describe, field_docs
from roadwork.config.errors import ConfigError
from roadwork.config.load import DEFAULT_PARAMS_FILE, load_config, parse_overrides, split_overrides
from roadwork.config.rules import CHOICES, LIBRARY_SECTIONS, RANGES, validate
from roadwork.config.schema import (
    SCENE_KEYWORDS,
    AdaptParams,
    AugmentParams,
    BackboneParams,
    CalibrateParams,
    DataParams,
    DedupeParams,
    DeployParams,
    EmbedParams,
    EvaluateParams,
    FinetuneParams,
    HardNegativeParams,
    IngestParams,
    RoadworkConfig,
    SourceParams,
    SplitFractions,
    SplitParams,
    SynthParams,
    TrackingParams,
    TrainerParams,
    TrainParams,
)

__all__ = [
    "CHOICES",
    "DEFAULT_PARAMS_FILE",
    "LIBRARY_SECTIONS",
    "RANGES",
    "SCENE_KEYWORDS",
    "AdaptParams",
    "AugmentParams",
    "BackboneParams",
    "CalibrateParams",
    "ConfigError",
    "DataParams",
    "DedupeParams",
    "DeployParams",
    "EmbedParams",
    "EvaluateParams",
    "FinetuneParams",
    "HardNegativeParams",
    "IngestParams",
    "RoadworkConfig",
    "SourceParams",
    "SplitFractions",
    "SplitParams",
    "SynthParams",
    "TrackingParams",
    "TrainParams",
    "TrainerParams",
    "adapt_config",
    "describe",
    "field_docs",
    "finetune_config",
    "flatten",
    "head_train_config",
    "load_config",
    "parse_overrides",
    "split_overrides",
    "to_dict",
    "validate",
]
