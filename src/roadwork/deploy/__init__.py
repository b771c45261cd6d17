"""roadwork.deploy: the trained model with its policy folded in, as Hugging Face and ONNX exports.

Names are loaded on first use (PEP 562), so importing a light submodule such as the pyfunc model does not
pull in torch, Lightning or transformers through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "folded_classifier": "roadwork.deploy.fold",
    "linear_layer": "roadwork.deploy.fold",
    "LABEL2ID": "roadwork.deploy.hf_export",
    "MODEL_CARD_FIELDS": "roadwork.deploy.hf_export",
    "ROADWORK_LABEL": "roadwork.deploy.hf_export",
    "export_hf": "roadwork.deploy.hf_export",
    "hf_probabilities": "roadwork.deploy.hf_export",
    "validate_model_card": "roadwork.deploy.hf_export",
    "export_onnx": "roadwork.deploy.onnx_export",
    "onnx_outputs": "roadwork.deploy.onnx_export",
    "onnx_probabilities": "roadwork.deploy.onnx_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
