"""Transitional re-export: the checks live in :mod:`roadwork.validation`. ``policy/threshold.py`` and
``policy/policy.py`` (being edited on another branch) still import them from here; delete this module once
they import ``roadwork.validation``."""

from roadwork.validation import (
    check_labels,
    check_level,
    check_probabilities,
    check_same_length,
    check_scores,
)

__all__ = ["check_labels", "check_level", "check_probabilities", "check_same_length", "check_scores"]
