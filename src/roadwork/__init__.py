"""roadwork: a reproducible roadwork / no-roadwork classifier pipeline."""

__version__ = "0.1.0"
