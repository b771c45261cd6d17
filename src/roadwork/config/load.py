"""``params.yaml`` plus command-line overrides in Hydra's syntax (``split.seed=3``), merged onto the schema
and validated: :func:`load_config`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from roadwork.config.errors import ConfigError
from roadwork.config.literal import check_literal, explain
from roadwork.config.rules import validate
from roadwork.config.schema import RoadworkConfig

DEFAULT_PARAMS_FILE = "params.yaml"

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
        check_literal(str(key), value, str(params_file))
    schema = OmegaConf.structured(RoadworkConfig)
    try:
        merged = OmegaConf.merge(schema, from_file)
    except OmegaConfBaseException as exc:
        raise explain(exc, str(params_file)) from None
    for key, value in parse_overrides(overrides):
        check_literal(key, value, "override")
        try:
            if OmegaConf.select(merged, key, default="__missing__") == "__missing__":
                raise ConfigKeyError(f"Key '{key}' not in config")
            # a list is replaced whole either way; merging converts a list of mappings into sections
            OmegaConf.update(merged, key, value, merge=isinstance(value, list))
        except ConfigKeyError as exc:
            exc.full_key = key
            raise explain(exc, "override") from None
        except OmegaConfBaseException as exc:
            raise explain(exc, "override") from None
    cfg: RoadworkConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(cfg, str(params_file) if not overrides else f"{params_file} + overrides")
    return cfg
