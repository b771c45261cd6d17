"""ExPLoRA domain adaptation (arXiv 2406.10973): adapter layout, self-supervised step, merge and its check.

Public API: :class:`AdaptConfig`, :func:`adapt_backbone` / :class:`AdaptResult`, :func:`merge_check` /
:class:`MergeCheckError`; the building blocks live in :mod:`.layout`, :mod:`.ssl`, :mod:`.step`,
:mod:`.processes`, :mod:`.loop` and :mod:`.explora`; the merge and its check (shared with finetuning) in
:mod:`roadwork.models.merge`. Names are resolved lazily: ``roadwork.config`` reads :class:`AdaptConfig` and
must not pay for importing torch and lightly.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "AdaptConfig": "roadwork.adapt.config",
    "AdaptResult": "roadwork.adapt.explora",
    "adapt_backbone": "roadwork.adapt.explora",
    "AdapterLayout": "roadwork.adapt.layout",
    "MERGE_TOLERANCE": "roadwork.models.merge",
    "MergeCheckError": "roadwork.models.merge",
    "merge_check": "roadwork.models.merge",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'roadwork.adapt' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
