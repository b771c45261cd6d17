"""The flat settings dataclasses' rules (``HeadTrainConfig``, ``FinetuneConfig``, ``AdaptConfig``), stated
once and checked one way, without torch.

A :class:`Settings` subclass declares its vocabularies (``CHOICES``, lists from :mod:`roadwork.vocab`), its
ranges (``RANGES``) and any rule between fields (:meth:`Settings.check_relations`). :meth:`Settings.check`
applies them with errors naming ``<prefix>.<field>``: :mod:`roadwork.config` calls it on a params section
with the section's key (``train``), and ``__post_init__`` with the class's own name for programmatic
callers, after the type check of :func:`coerce_fields` (params are type-checked as written, by the loader).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "FRACTION",
    "LORA_RANGES",
    "NON_NEGATIVE",
    "POSITIVE",
    "UNIT_INTERVAL",
    "Rule",
    "Settings",
    "at_least",
    "coerce_fields",
]

# (predicate, what a valid value looks like); a NaN fails every predicate
Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: 0 < v < math.inf, "finite and > 0")
NON_NEGATIVE: Rule = (lambda v: 0 <= v < math.inf, "finite and >= 0")
FRACTION: Rule = (lambda v: 0 <= v < 1, "in [0, 1)")
UNIT_INTERVAL: Rule = (lambda v: 0 <= v <= 1, "in [0, 1]")


def at_least(bound: int, note: str = "") -> Rule:
    """An integer (or number) ``>= bound``; ``note`` follows in parentheses."""
    return (lambda v: v >= bound, f">= {bound}" + (f" ({note})" if note else ""))


# the adapter knobs finetune (train.finetune) and ExPLoRA (adapt) share
LORA_RANGES: dict[str, Rule] = {"lora_rank": at_least(1), "lora_alpha": POSITIVE, "lora_dropout": FRACTION}

# annotation -> (accepts the value, the plain type it is stored as, what it must be); a bool is no number
_TYPE_CHECKS: dict[str, tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = {
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), bool, "true or false"),
    "int": (
        lambda v: not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, np.integer)),
        int,
        "an integer",
    ),
    "float": (
        lambda v: (
            not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer, np.floating))
        ),
        float,
        "a number",
    ),
    "str": (lambda v: isinstance(v, str), str, "a string"),
}


def coerce_fields(settings: Any, prefix: str) -> None:
    """Refuse a field of the (frozen) dataclass ``settings`` that is not of its annotated scalar type, and
    store numpy scalars and integers given for floats as the plain Python type."""
    for f in fields(settings):
        ok, convert, expected = _TYPE_CHECKS[getattr(f.type, "__name__", f.type)]
        value = getattr(settings, f.name)
        if not ok(value):
            raise TypeError(f"{prefix}.{f.name} must be {expected}, got {value!r}.")
        object.__setattr__(settings, f.name, convert(value))


class Settings:
    """Base of a frozen, flat settings dataclass whose fields are checked against its class's rules."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    RANGES: ClassVar[dict[str, Rule]] = {}

    def __post_init__(self) -> None:
        name = type(self).__name__
        coerce_fields(self, name)
        self.check({f.name: getattr(self, f.name) for f in fields(self)}, name)

    @classmethod
    def check(cls, values: Mapping[str, Any], prefix: str) -> None:
        """Raise ValueError naming ``prefix.<field>`` when ``values`` (field name -> value, of the field's
        type) break a vocabulary, a range or a rule between fields."""
        for name, allowed in cls.CHOICES.items():
            if values[name] not in allowed:
                raise ValueError(
                    f"{prefix}.{name} is {values[name]!r}; allowed values: {', '.join(allowed)}."
                )
        for name, (ok, expected) in cls.RANGES.items():
            if not ok(values[name]):
                raise ValueError(f"{prefix}.{name} is {values[name]!r}; it must be {expected}.")
        cls.check_relations(values, prefix)

    @classmethod
    def check_relations(cls, values: Mapping[str, Any], prefix: str) -> None:
        """Rules between fields, checked after each field's own; none unless a subclass has some."""
