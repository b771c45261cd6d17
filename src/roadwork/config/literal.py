"""Values as written, before OmegaConf's merge converts them: literal, and of their schema type; and
OmegaConf's own errors (an unknown key, a value it cannot take) explained.

Types are strict: a value is never converted (``workers: "2"``, ``tta_flip: "yes"`` and ``tta_flip: 1``
fail); only an integer may stand for a float and a number for a string. Values must be literal: an
interpolation (``${...}``) is refused, because it is resolved when the stage runs while DVC records the
literal text, and ``${oc.env:...}`` would copy environment variables (secrets included) into the MLflow
run's params.
"""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from roadwork.config.errors import ConfigError
from roadwork.config.schema import RoadworkConfig

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


def check_literal(key: str, value: Any, source: str) -> None:
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


def explain(exc: OmegaConfBaseException, source: str) -> ConfigError:
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
