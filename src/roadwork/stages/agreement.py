"""The one check that a Hugging Face export answers as the model it came from (bundle, export-submission)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AGREEMENT_TOLERANCE = 1e-4
"""Largest |score difference| allowed between an export's pipeline and the model it holds."""


def check_export_agreement(predictor: Any, folder: Path, data: list[bytes], what: str) -> tuple[int, float]:
    """(images, max |dp|) of the Hugging Face export in ``folder`` against ``predictor`` on the encoded
    images ``data`` (``what`` names them in messages): the same bytes to both, the export through the real
    ``transformers.pipeline``. ValueError if a decision differs or a score moves more than
    :data:`AGREEMENT_TOLERANCE`."""
    import numpy as np

    from roadwork.data.render import decode_render
    from roadwork.deploy.hf_export import hf_probabilities

    ours = predictor.predict(data)
    theirs = hf_probabilities(folder, [decode_render(item) for item in data])
    diff = np.abs(theirs - ours["probability"].to_numpy())
    differ = int(((theirs > 0.5) != (ours["decision"].to_numpy() == 1)).sum())
    if differ or diff.max() > AGREEMENT_TOLERANCE:
        raise ValueError(
            f"the Hugging Face export in {folder} disagrees with the model on {differ} of {len(data)} {what} "
            f"(max |dp| {diff.max():.2e}, tolerance {AGREEMENT_TOLERANCE})."
        )
    return len(data), float(diff.max())
