"""Progress bars only where someone watches them.

A bar redraws itself with carriage returns; in a log file (``make demo > log``, CI, ``dvc repro`` piped) those
redraws are most of the bytes and bury each stage's one-line summary. So every bar roadwork shows — its own
tqdm bars, Lightning's, and those of the libraries it calls (Hugging Face, MLflow) — asks
:func:`progress_enabled`: on when standard error is a terminal, unless ``ROADWORK_PROGRESS`` says otherwise
(``1`` always, ``0`` never). Nothing heavy is imported here: the CLI calls this before any library loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

ENV = "ROADWORK_PROGRESS"

# Libraries that read their own switch once, at import: set before they load, an explicit user setting wins.
_LIBRARY_SWITCHES_OFF = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub and transformers (loading and writing weights)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # MLflow's artifact downloads and uploads
}


def progress_enabled() -> bool:
    """Whether bars are shown: ``ROADWORK_PROGRESS`` (1 or 0) when set, else whether stderr is a terminal."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return sys.stderr.isatty()
    if value not in ("0", "1"):
        raise ValueError(
            f"environment variable {ENV}={value!r}: expected 1 (always show progress bars), 0 (never) "
            "or unset (only on a terminal)."
        )
    return value == "1"


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm.auto``: a widget in notebooks) that draws only when ``show`` and
    :func:`progress_enabled` both allow it; ``kwargs`` go to tqdm. Disabled, it still counts and iterates."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not (show and progress_enabled()), **kwargs)


def quiet_library_progress() -> None:
    """Switch the Hugging Face and MLflow bars off when :func:`progress_enabled` says no. Call it before those
    libraries are imported (they read the switch once); a switch the user set is left alone."""
    if not progress_enabled():
        for name, value in _LIBRARY_SWITCHES_OFF.items():
            os.environ.setdefault(name, value)
