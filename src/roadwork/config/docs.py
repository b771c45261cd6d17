"""The schema's own descriptions of each key, as ``roadwork <stage> --help`` shows them."""

from __future__ import annotations

import functools
import inspect
import re

from roadwork.config.schema import RoadworkConfig

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
