"""Several data sources (``data.sources``): their roles and the per-row sampling weights they give.

A source is a folder inside ``data.dir`` with a name, a role and a weight:

* ``labelled``: the usual layouts (class folders, NATIX parquet), labels as ingest reads them;
* ``hard_negative``: negatives only (e.g. orange cars, yellow signs): every image is label 0. A positive
  in such a source (a file under ``roadwork/`` or ``1/``, a parquet row labelled 1) is refused: ingest stops
  naming it, since relabelling it silently would train on a label its owner never gave;
* ``unlabeled``: images for ExPLoRA's pool only (``adapt``); never ingested, split, trained on or scored.

``weight`` multiplies how often training draws each of the source's images: with weights ``w_s`` and
``n_s`` train images per source, an epoch's draws come from source ``s`` with probability
``w_s n_s / sum_t w_t n_t``. Equal weights are today's uniform shuffle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

SOURCE_ROLES: tuple[str, ...] = ("labelled", "hard_negative", "unlabeled")
INGESTED_ROLES: tuple[str, ...] = ("labelled", "hard_negative")


@dataclass(frozen=True)
class Source:
    """One entry of ``data.sources``: ``dir`` is a POSIX path relative to the data folder."""

    name: str
    dir: str
    role: str = "labelled"
    weight: float = 1.0


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# names pandas reads back from splits.csv as missing values, not as text
_NA_NAMES = frozenset({"na", "nan", "null", "none"})


def sources_from(entries: Iterable[Any]) -> list[Source]:
    """:class:`Source` objects of ``entries`` (anything with ``name``, ``dir``, ``role``, ``weight``, e.g. the
    config's ``data.sources``), in order."""
    return [Source(e.name, e.dir, e.role, e.weight) for e in entries]


def check_sources(sources: Sequence[Source]) -> None:
    """Raise ValueError naming ``data.sources[i].<key>`` unless names are unique plain names, roles known,
    weights positive and finite, and folders relative paths inside the data folder (no ``..``) that
    neither repeat nor nest; a non-empty list needs a ``labelled`` source."""
    folders: dict[str, str] = {}
    for i, source in enumerate(sources):
        key = f"data.sources[{i}]"
        if (
            not isinstance(source.name, str)
            or not _NAME.fullmatch(source.name)
            or source.name.lower() in _NA_NAMES
        ):
            raise ValueError(
                f"'{key}.name' is {source.name!r}; expected a name of letters, digits, '_', '.' and '-' "
                "that starts with a letter and is not NA, NaN, null or None (it prefixes the source's paths "
                "in the manifest and is read back from CSV files)"
            )
        if source.role not in SOURCE_ROLES:
            raise ValueError(f"'{key}.role' is {source.role!r}; expected one of {SOURCE_ROLES}")
        if not 0 < source.weight < math.inf:
            raise ValueError(f"'{key}.weight' is {source.weight!r}; expected a positive number")
        parts = PurePosixPath(source.dir).parts if isinstance(source.dir, str) else ()
        if not parts or parts[0] == "/" or ".." in parts or parts == (".",):
            raise ValueError(
                f"'{key}.dir' is {source.dir!r}; expected a folder inside data.dir, relative to it "
                "(e.g. 'synth'), so that data.dvc versions it"
            )
        folder = PurePosixPath(*parts).as_posix()
        for other, name in folders.items():
            if folder == other or folder.startswith(other + "/") or other.startswith(folder + "/"):
                raise ValueError(
                    f"data.sources '{name}' ({other}) and '{source.name}' ({folder}) overlap; each image "
                    "must belong to one source"
                )
        folders[folder] = source.name
    names = [source.name for source in sources]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"data.sources names {repeated} repeat; each name must be unique")
    if sources and not any(source.role == "labelled" for source in sources):
        raise ValueError("data.sources has no 'labelled' source; at least one is needed")


def source_weights(sources: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Per-row sampling weight (float64) of rows whose source names are ``sources``.

    Raises ValueError naming the first source that ``weights`` (``data.sources``) does not know, e.g. a
    split written before the sources were renamed.
    """
    names = np.asarray(sources, dtype=object)
    unknown = sorted(set(names.tolist()) - set(weights))
    if unknown:
        raise ValueError(
            f"rows come from source {unknown[0]!r}, which data.sources does not name (it names "
            f"{sorted(weights)}); re-run ingest and split after changing data.sources"
        )
    return np.array([float(weights[name]) for name in names], dtype=np.float64)
