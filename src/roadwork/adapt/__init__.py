"""ExPLoRA domain adaptation (arXiv 2406.10973): adapter layout, self-supervised step, merge and its check.

Public API: :class:`AdaptConfig`, :func:`adapt_backbone` / :class:`AdaptResult`, :func:`merge_check` /
:class:`MergeCheckError`; the building blocks live in :mod:`.layout`, :mod:`.ssl`, :mod:`.merge` and
:mod:`.explora`.
"""

from roadwork.adapt.config import AdaptConfig
from roadwork.adapt.explora import AdaptResult, adapt_backbone
from roadwork.adapt.layout import AdapterLayout
from roadwork.adapt.merge import MERGE_TOLERANCE, MergeCheckError, merge_check

__all__ = [
    "MERGE_TOLERANCE",
    "AdaptConfig",
    "AdaptResult",
    "AdapterLayout",
    "MergeCheckError",
    "adapt_backbone",
    "merge_check",
]
