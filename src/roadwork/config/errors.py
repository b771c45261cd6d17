"""The one error every invalid parameter file or override raises."""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key and what to change."""
