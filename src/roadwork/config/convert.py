"""A loaded config as plain values: nested dicts, flat dotted keys, and the library dataclasses whose fields
a params section mirrors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from omegaconf import OmegaConf

from roadwork.adapt.config import AdaptConfig
from roadwork.train.finetune_config import FinetuneConfig
from roadwork.train.head_config import HeadTrainConfig


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


def _library_config(section: Any, cls: type) -> Any:
    """``cls`` (a library dataclass whose fields a params section mirrors) built from ``section``."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def head_train_config(train: Any) -> HeadTrainConfig:
    """The :class:`~roadwork.train.head_config.HeadTrainConfig` that ``train`` describes."""
    return _library_config(train, HeadTrainConfig)


def finetune_config(finetune: Any) -> FinetuneConfig:
    """The :class:`~roadwork.train.finetune_config.FinetuneConfig` that ``train.finetune`` describes."""
    return _library_config(finetune, FinetuneConfig)


def adapt_config(adapt: Any) -> AdaptConfig:
    """The :class:`~roadwork.adapt.config.AdaptConfig` that ``adapt`` describes."""
    return _library_config(adapt, AdaptConfig)
