"""``roadwork <stage> --help``: the parameters the stage reads, their current values and one line each.

Which parameters a stage reads is what dvc.yaml declares under its ``params:`` (what DVC reruns the stage
for); the values are params.yaml's (plus any overrides) resolved against the schema, and the descriptions are
the schema's (:func:`roadwork.config.describe`). Only YAML and the schema load here, so ``--help`` stays fast.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roadwork.config import ConfigError, RoadworkConfig, describe, flatten, load_config, to_dict

DVC_FILE = "dvc.yaml"
_VALUE_COLUMN = 36  # a longer key=value pushes its description right instead of widening every row


def stage_param_keys(dvc_file: Path, stage: str, params_file: Path) -> list[str]:
    """The params keys (dotted, a section or a single key) that ``stage`` declares in ``dvc_file``, in order:
    the entries of its ``params:`` (of ``do:`` for a per-variant stage) that refer to ``params_file``."""
    import yaml

    if not dvc_file.is_file():
        raise ValueError(f"no {dvc_file} (run from the repository root or pass --params)")
    try:
        spec = yaml.safe_load(dvc_file.read_text())["stages"][stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ValueError(f"{dvc_file}: cannot read stage '{stage}' ({type(exc).__name__}: {exc}).") from None
    keys: list[str] = []
    for entry in spec.get("do", spec).get("params", []):
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            keys.extend(k for file, ks in entry.items() if Path(file).name == params_file.name for k in ks)
    return keys


def _shown(value: Any) -> str:
    """A value the way an override writes it: null, true, [0.25, ...], a string quoted only when it holds a
    space or would otherwise read as something else ("32", "")."""
    import yaml

    plain = isinstance(value, str) and value and " " not in value and yaml.safe_load(value) == value
    return value if plain else json.dumps(value)


def stage_parameters(stage: str, params_file: Path, overrides: Sequence[str] = (), width: int = 0) -> str:
    """The parameter section of ``roadwork <stage> --help``: one ``key=value  description`` line per
    parameter, cut to ``width`` columns (default: the terminal's)."""
    width = width or max(60, shutil.get_terminal_size((110, 24)).columns)
    dvc_file = params_file.parent / DVC_FILE
    try:
        declared = stage_param_keys(dvc_file, stage, params_file)
    except ValueError as exc:
        return f"parameters: not listed: {exc}."
    source = f"{params_file}{' + overrides' if overrides else ''}"
    note = ""
    try:
        cfg = load_config(params_file, overrides)
    except ConfigError as exc:
        cfg, source, note = RoadworkConfig(), "the schema's defaults", f"\n({str(exc).splitlines()[0]})"
    values = flatten(to_dict(cfg))
    keys = list(dict.fromkeys(k for d in declared for k in values if k == d or k.startswith(d + ".")))
    pairs = [f"{k}={_shown(values[k])}" for k in keys]
    column = min(_VALUE_COLUMN, max(map(len, pairs), default=0))
    lines = [f"parameters (dvc.yaml's for {stage}; values from {source}; override with key=value):{note}"]
    for pair, key in zip(pairs, keys, strict=True):
        line = f"  {pair.ljust(column)}  {describe(key)}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)
