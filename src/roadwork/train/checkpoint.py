"""Resume checkpoints of every trainer (head training, finetuning, ExPLoRA): one format, one reader.

A checkpoint is one safetensors file, written atomically (temporary file, fsync, ``os.replace``): its tensors
are the tensors of a nested ``state`` (dicts, lists, tuples, tensors, JSON scalars), keyed by their path in
it; everything else is JSON in the file's metadata under ``"state"``, with tensors appearing there as
``{"__tensor__": key}``. Nothing is pickled. Every state carries ``format_version``
(:data:`CHECKPOINT_FORMAT_VERSION`) and a ``fingerprint`` of the inputs it was written for; what the
fingerprint covers, and the rest of the state, is each trainer's own. torch and safetensors only: ExPLoRA
imports this without Lightning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from roadwork.atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT_VERSION", "load_resume_state", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_FORMAT_VERSION = 1

_log = logging.getLogger(__name__)
_TAGS = ("__tensor__", "__tuple__", "__items__")


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """``obj`` as JSON-compatible values; each tensor goes into ``tensors`` under its path ``key``."""
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise ValueError(f"checkpoint state: two tensors at {key!r}.")
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}/{i}") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, tensors, f"{key}/{k}") for k, v in obj.items()}
        if not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in obj):
            raise TypeError(f"checkpoint state {key}: dict keys must be str or int, got {list(obj)[:3]}.")
        return {"__items__": [[k, _encode(v, tensors, f"{key}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (np.bool_, np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state {key}: cannot store a {type(obj).__name__}.")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if obj.keys() == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if obj.keys() == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if obj.keys() == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (nested dicts, lists, tuples, tensors, JSON scalars) atomically to a safetensors file.

    Tensors become the file's tensors, keyed by their path in ``state``; everything else is JSON in the
    file's metadata under ``"state"``, tensors appearing there as ``{"__tensor__": key}``.
    :func:`read_checkpoint` reads it back without unpickling anything.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(_encode(state, tensors, "state"), sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "state": meta}))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The ``state`` :func:`write_checkpoint` wrote to ``path`` (tensors on CPU).

    Raises OSError when the file cannot be read and ValueError when it is not such a checkpoint.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except OSError:
        raise
    except Exception as exc:  # safetensors' own SafetensorError on truncated or foreign files
        raise ValueError(f"{path}: not a safetensors file ({exc}).") from None
    try:
        state = _decode(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a roadwork checkpoint ({exc!r}).") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a roadwork checkpoint (state is a {type(state).__name__}).")
    return state


def _mismatch(path: Path, state: dict[str, Any], fingerprint: Any) -> tuple[int, str] | None:
    """Why the checkpoint ``state`` at ``path`` cannot resume a run of ``fingerprint``, with the log level
    to report it at when it is ignored (None: it can resume)."""
    if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        return logging.WARNING, (
            f"{path}: checkpoint format {state.get('format_version')!r}, this code writes "
            f"{CHECKPOINT_FORMAT_VERSION}."
        )
    found = state.get("fingerprint")
    if found == fingerprint:
        return None
    if isinstance(found, dict) and isinstance(fingerprint, dict):
        keys = sorted(k for k in found.keys() | fingerprint.keys() if found.get(k) != fingerprint.get(k))
        return logging.INFO, f"{path} belongs to a different run ({', '.join(keys)} differs)."
    return logging.INFO, f"{path} was written for other inputs (config, data or world size)."


def load_resume_state(path: Path, fingerprint: Any, *, strict: bool = False) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and matches ``fingerprint`` and this format; else None.

    Args:
        path: the checkpoint file.
        fingerprint: what the run's checkpoints carry as ``"fingerprint"`` (a hex digest, or a dict of
            JSON values whose differing keys a mismatch then names).
        strict: a checkpoint that is unreadable, of another format or for other inputs raises ValueError
            (ExPLoRA: its checkpoint folder belongs to one run); otherwise it is logged and ignored (head
            training and finetuning: the next epoch's checkpoint replaces it).

    A missing file is None either way.
    """
    if not path.is_file():
        return None
    try:
        state = read_checkpoint(path)
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"cannot resume from {path}: {exc}") from None
        _log.warning("ignoring unreadable checkpoint: %s", exc)
        return None
    mismatch = _mismatch(path, state, fingerprint)
    if mismatch is None:
        return state
    level, reason = mismatch
    if strict:
        raise ValueError(
            f"{reason} Delete {path.parent} to start afresh, or restore the settings it was written with."
        )
    _log.log(level, "ignoring %s", reason)
    return None
