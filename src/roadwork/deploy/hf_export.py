"""Hugging Face export: backbone + linear head + folded policy as a plain image-classification model.

The folder :func:`export_hf` writes loads fully offline with
``transformers.pipeline("image-classification", model=str(out_dir))`` (no custom code, no hub) and its
"Roadwork" softmax score is the policy's deployed probability ``sigmoid((z - z*) / s)``, so the validator's
``round(p)`` reproduces the policy's decision (see :mod:`roadwork.deploy.fold` for the float edge at
``z ~ z*``). ``id2label`` is ``{0: "None", 1: "Roadwork"}``.

Per backbone family:

* ``dinov2`` -> ``Dinov2ForImageClassification``. Its classifier is ``Linear(2 * hidden, num_labels)`` on
  ``concat(last_hidden_state[:, 0], last_hidden_state[:, 1:].mean(1))`` (transformers 5.x
  ``modeling_dinov2.py``), which is our feature definition: the folded head becomes that classifier.
* ``dinov2_with_registers`` -> ``Dinov2WithRegistersForImageClassification``, whose patch mean starts at
  ``1 + num_register_tokens`` (registers excluded), as ours does.
* ``dinov3``: transformers (checked with 5.23) has no ``DINOv3ViTForImageClassification``; exporting raises
  NotImplementedError rather than shipping custom code. :func:`roadwork.deploy.onnx_export.export_onnx`
  handles this family.
* ``timm`` (EfficientNet-Lite0) -> ``EfficientNetForImageClassification``: transformers' own EfficientNet
  configured as Lite0 holds the same network (:mod:`roadwork.deploy.effnet_hf`); the folded head becomes its
  classifier (average or max pooling). Other timm architectures are refused (NotImplementedError), and GeM
  pooling (ValueError): the miner's transformers 4.45 has no ``timm_wrapper`` model type.

Preprocessing. Every export carries the ``preprocessor_config.json`` of the backbone's
:class:`~roadwork.models.preprocess_config.PreprocessConfig`
(:func:`~roadwork.models.preprocess_config.image_processor_for`), which
:func:`roadwork.data.preprocess.to_tensor_batch` reproduces: one preprocessing definition. With the
pipeline's default ``backbone.input_size: 224`` that is a ``ViTImageProcessor`` resizing to 224 x 224, the
one image processor the miner's ``AutoImageProcessor.from_pretrained(repo, use_fast=True)`` finds in
transformers 4.45 (as ``ViTImageProcessorFast``); ``BitImageProcessor`` and ``DINOv3ViTImageProcessor``
(``input_size: null``) load in newer versions only.

Decisions do not depend on the transformers version: the folded "None" logit is identically 0, so a softmax
over both logits and a sigmoid of the "Roadwork" logit give the same score (see :mod:`roadwork.deploy.fold`),
and the config names no ``problem_type``. Tested under transformers 4.45.2 (the subnet's pin, in a subprocess,
``tests/test_miner_compat.py``) and the project's own version.

All weights are written float32 as safetensors.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from roadwork.atomic import atomic_dir
from roadwork.deploy.effnet_hf import LITE_ARCHITECTURES, efficientnet_lite_classifier
from roadwork.deploy.fold import folded_classifier
from roadwork.models.backbone import Backbone
from roadwork.models.head import ID2LABEL, HeadModel
from roadwork.models.preprocess_config import image_processor_for
from roadwork.policy.policy import Policy

__all__ = [
    "LABEL2ID",
    "MODEL_CARD_FIELDS",
    "MODEL_CARD_FILE",
    "ROADWORK_LABEL",
    "export_hf",
    "hf_probabilities",
    "validate_model_card",
]

ROADWORK_LABEL = ID2LABEL[1]
LABEL2ID = {label: index for index, label in ID2LABEL.items()}
MODEL_CARD_FILE = "model_card.json"
MODEL_CARD_FIELDS = ("model_name", "description", "version", "submitted_by", "submission_time")
_OPTIONAL_CARD_FIELDS = ("metrics",)
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_VIT_CLASSES = {
    "dinov2": "Dinov2ForImageClassification",
    "dinov2_with_registers": "Dinov2WithRegistersForImageClassification",
}


# ------------------------------------------------------------------------------------------- model card


def _card_text(card: Mapping[str, Any], key: str) -> str:
    value = card[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"model_card[{key!r}] must be a non-empty string, got {value!r}.")
    return value.strip()


def _card_time(value: Any) -> str:
    hint = "an ISO 8601 UTC date-time such as '2025-06-01T12:00:00Z'"
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        # datetime.fromisoformat accepts a trailing 'Z' only from Python 3.11 on
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"model_card['submission_time'] must be {hint}, got {value!r}.") from None
        if "T" not in text and " " not in text:
            raise ValueError(
                f"model_card['submission_time'] must be {hint} (a time, not a date), got {value!r}."
            )
    else:
        raise ValueError(
            f"model_card['submission_time'] must be {hint} or an aware datetime, got {type(value).__name__}."
        )
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise ValueError(
            f"model_card['submission_time'] must be in UTC (suffix 'Z' or '+00:00'), got {value!r}; "
            f"expected {hint}."
        )
    return moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def validate_model_card(model_card: Mapping[str, Any]) -> dict[str, str]:
    """The ``model_card.json`` content of a submission, validated and normalised.

    Args:
        model_card: ``model_name``, ``description``, ``submitted_by`` (non-empty strings), ``version``
            (``"X.Y.Z"``, three non-negative integers) and ``submission_time`` (ISO 8601 in UTC, as a string
            such as ``"2025-06-01T12:00:00Z"`` or an aware ``datetime``); optionally ``metrics``, a mapping of
            metric name to value that goes to the README only.

    Returns:
        The five fields in :data:`MODEL_CARD_FIELDS` order, strings stripped, ``submission_time`` written as
        ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``.

    Raises:
        TypeError: ``model_card`` is not a mapping.
        ValueError: naming the field, for a missing, unknown or malformed field.
    """
    if not isinstance(model_card, Mapping):
        raise TypeError(f"model_card must be a mapping, got {type(model_card).__name__}.")
    missing = [key for key in MODEL_CARD_FIELDS if key not in model_card]
    if missing:
        raise ValueError(f"model_card is missing {missing}; required fields are {list(MODEL_CARD_FIELDS)}.")
    unknown = sorted(set(model_card) - set(MODEL_CARD_FIELDS) - set(_OPTIONAL_CARD_FIELDS))
    if unknown:
        raise ValueError(
            f"model_card has unknown fields {unknown}; allowed are "
            f"{list(MODEL_CARD_FIELDS) + list(_OPTIONAL_CARD_FIELDS)}."
        )
    card = {key: _card_text(model_card, key) for key in ("model_name", "description")}
    version = model_card["version"]
    if not isinstance(version, str) or not _VERSION.fullmatch(version.strip()):
        raise ValueError(f"model_card['version'] must be a string 'X.Y.Z' (e.g. '1.0.0'), got {version!r}.")
    card["version"] = version.strip()
    card["submitted_by"] = _card_text(model_card, "submitted_by")
    card["submission_time"] = _card_time(model_card["submission_time"])
    _card_metrics(model_card)
    return {key: card[key] for key in MODEL_CARD_FIELDS}


def _card_metrics(model_card: Mapping[str, Any]) -> dict[str, Any]:
    metrics = model_card.get("metrics")
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ValueError(
            f"model_card['metrics'] must be a mapping name -> value, got {type(metrics).__name__}."
        )
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model_card['metrics'] keys must be non-empty strings, got {name!r}.")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(
                f"model_card['metrics'][{name!r}] must be a number or a string, got {type(value).__name__}."
            )
    return dict(metrics)


# ------------------------------------------------------------------------------------------------ models


def _float32_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().to("cpu"))
        for k, v in module.state_dict().items()
    }


def _vit_model(backbone: Backbone, weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    import transformers

    cls = getattr(transformers, _VIT_CLASSES[backbone.family])
    config = copy.deepcopy(backbone.model.config)
    config.num_labels = len(ID2LABEL)
    config.id2label = dict(ID2LABEL)
    config.label2id = dict(LABEL2ID)
    # no problem_type: 4.48's pipeline would then apply a sigmoid (the fold makes both agree anyway)
    config.problem_type = None
    config.architectures = [cls.__name__]
    # the initial weights are all overwritten; the fork keeps the caller's RNG stream untouched
    with torch.random.fork_rng(devices=[]):
        model = cls(config)
    inner = getattr(model, model.base_model_prefix)
    try:
        inner.load_state_dict(_float32_state(backbone.model), strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"the backbone's weights do not fit {cls.__name__} ({exc}); a backbone with adapters must be "
            "merged before export."
        ) from None
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    return model.float().eval()


def _timm_architecture(backbone: Backbone) -> Any:
    return getattr(backbone.model, "pretrained_cfg", {}).get("architecture")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _readme(
    card: Mapping[str, str],
    metrics: Mapping[str, Any],
    backbone: Backbone,
    policy: Policy,
    architecture: str,
) -> str:
    pre = backbone.preprocess
    if pre.resize_mode in ("square", "squash"):
        resize = f"resize to {pre.image_size}x{pre.image_size} ({pre.interpolation})"
    else:
        resize = (
            f"resize the short side to {pre.resize_size} ({pre.interpolation}, antialiased), "
            f"centre crop {pre.image_size}x{pre.image_size}"
        )
    guarantee = (
        f"true FNR <= {policy.alpha} with probability >= {1 - policy.delta:.6g}"
        if policy.alpha is not None and policy.delta is not None
        else "none"
    )
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags:",
        "- roadwork",
        "- natix",
        "- streetvision",
        "---",
        "",
        f"# {card['model_name']}",
        "",
        card["description"],
        "",
        "| field | value |",
        "|---|---|",
        *(f"| {key} | {_fmt(card[key])} |" for key in MODEL_CARD_FIELDS),
        "",
        "## Output",
        "",
        'Labels: `{0: "None", 1: "Roadwork"}`. The "Roadwork" softmax score is the calibrated decision '
        "policy folded into the classifier: score > 0.5 exactly when the policy decides roadwork, so "
        "`round(score)` is the decision.",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'classifier = pipeline("image-classification", model="<this folder>")',
        'score = next(r["score"] for r in classifier(image, top_k=2) if r["label"] == "Roadwork")',
        "```",
        "",
        "## Model",
        "",
        f"- architecture: `{architecture}`",
        f"- backbone: `{backbone.backbone_id}` (family `{backbone.family}`, "
        f"{backbone.feature_dim}-d features), frozen",
        "- head: linear, single (global) view",
        f"- preprocessing: RGB, {resize}, scale to [0, 1], normalise with mean "
        f"[{', '.join(map(_fmt, pre.mean))}] and std [{', '.join(map(_fmt, pre.std))}]",
        "",
        "## Decision policy",
        "",
        f"- calibrator: {policy.calibrator.get('name', '?')}",
        f"- threshold on the calibrated probability: {_fmt(float(policy.threshold))}",
        f"- decision margin z* (on z = z1 - z0 of the trained head): {_fmt(float(policy.decision_margin))}",
        f"- scale s: {_fmt(float(policy.scale))}; deployed probability sigmoid((z - z*) / s)",
        f"- FNR constraint on the calibration set: {'none' if policy.max_fnr is None else policy.max_fnr}",
        f"- FNR guarantee: {guarantee}",
        f"- calibration split: `{policy.split_hash}`",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {_fmt(name)} | {_fmt(value)} |" for name, value in metrics.items()]
        lines.append("")
    return "\n".join(lines)


def hf_refusal(predictor: Any) -> str | None:
    """Why the head and views of ``predictor`` (a :class:`~roadwork.deploy.predictor.Predictor`) have no
    Hugging Face image-classification form, or None when they have one. The backbone is not judged here:
    :func:`export_hf` refuses the families it cannot write."""
    if predictor.spec.views != "global" or predictor.spec.tta_flip:
        return "multi-view and flip-averaged models have no standard image-classification form"
    try:
        folded_classifier(predictor.head, predictor.policy)
    except ValueError as exc:
        return str(exc)
    return None


def export_hf(
    backbone: Backbone,
    head: HeadModel,
    policy: Policy,
    out_dir: str | Path,
    *,
    model_card: Mapping[str, Any],
) -> Path:
    """Write a Hugging Face image-classification folder with the policy folded into its classifier.

    Args:
        backbone: the frozen backbone the head was trained on (any device and dtype; written float32).
        head: a single-view linear head (``embed.views=global``, ``train.head=linear``).
        policy: the fitted policy (finite ``decision_margin``).
        out_dir: folder to create; it must not exist or be empty. The export is built in a temporary sibling
            folder and moved into place at the end, so a failed export leaves nothing behind.
        model_card: see :func:`validate_model_card`; ``metrics`` (optional) become a README section.

    Writes ``config.json`` (``id2label {0: "None", 1: "Roadwork"}``, ``label2id`` to match),
    ``model.safetensors``, ``preprocessor_config.json``, ``model_card.json`` (the five submission fields) and
    ``README.md``.

    Returns:
        ``Path(out_dir)``.

    Raises:
        ValueError: bad model card (naming the field), MLP or multi-view head, infinite decision margin,
            head and backbone feature sizes that differ, weights that do not fit the target class.
        NotImplementedError: the ``dinov3`` family (transformers has no DINOv3 classification model).
        FileExistsError: ``out_dir`` exists and is not an empty folder.
    """
    card = validate_model_card(model_card)
    metrics = _card_metrics(model_card)
    weight, bias = _exportable_classifier(backbone, head, policy)
    out_dir = _new_folder(out_dir)
    model = _classification_model(backbone, weight, bias)
    processor = image_processor_for(backbone.preprocess)
    readme = partial(_readme, card, metrics, backbone, policy, type(model).__name__)
    _write_folder(out_dir, model, processor, card, readme)
    return out_dir


def _exportable_classifier(
    backbone: Backbone, head: HeadModel, policy: Policy
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded classifier (weight, bias) of ``head`` and ``policy``, once the pair and the backbone's
    family are known to export."""
    if not isinstance(backbone, Backbone):
        raise TypeError(f"backbone must be a roadwork Backbone, got {type(backbone).__name__}.")
    weight, bias = folded_classifier(head, policy)
    if head.feature_dim != backbone.feature_dim:
        raise ValueError(
            f"the head takes {head.feature_dim}-d features but the backbone gives {backbone.feature_dim}-d; "
            "export the head with the backbone it was trained on."
        )
    if backbone.family == "dinov3":
        raise NotImplementedError(
            "Hugging Face export of the 'dinov3' family is not supported: transformers has no "
            "DINOv3ViTForImageClassification, and the export must load without custom code. Use "
            "roadwork.deploy.onnx_export.export_onnx, or a DINOv2 backbone."
        )
    return weight, bias


def _new_folder(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder; export into a new folder.")
    return out_dir


def _classification_model(backbone: Backbone, weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Module:
    """The transformers image-classification model of the backbone's family with the folded classifier."""
    if backbone.family == "timm":
        architecture = _timm_architecture(backbone)
        if architecture not in LITE_ARCHITECTURES:
            raise NotImplementedError(
                f"Hugging Face export of timm {architecture!r} is not supported: only {LITE_ARCHITECTURES} "
                "convert to a transformers class (EfficientNetForImageClassification) that loads without "
                "custom code in the miner's transformers 4.45."
            )
        return efficientnet_lite_classifier(
            backbone.model,
            weight,
            bias,
            id2label=ID2LABEL,
            label2id=LABEL2ID,
            image_size=backbone.preprocess.image_size,
        )
    if backbone.family not in _VIT_CLASSES:  # pragma: no cover - Backbone validates its family
        raise NotImplementedError(f"Hugging Face export of the {backbone.family!r} family is not supported.")
    return _vit_model(backbone, weight.float(), bias.float())


def _write_folder(
    out_dir: Path, model: Any, processor: Any, card: Mapping[str, str], readme: Callable[[], str]
) -> None:
    """Write the export into a temporary sibling folder and move it into place: all or nothing (``readme``
    gives the README's text)."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        (tmp / MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(readme(), encoding="utf-8")
        if out_dir.exists():  # never replace what another process put there since _new_folder looked
            out_dir.rmdir()


def hf_probabilities(
    out_dir: str | Path,
    images: Sequence[Image.Image | str | Path],
    *,
    batch_size: int = 8,
    device: str | int | None = None,
) -> np.ndarray:
    """The "Roadwork" score per image from the real ``transformers.pipeline`` on an exported folder.

    Runs ``pipeline("image-classification", model=str(out_dir))`` with ``top_k=2`` and
    ``function_to_apply="softmax"`` (what the miner reads), offline.

    Args:
        out_dir: a folder written by :func:`export_hf`.
        images: PIL images or image file paths.
        batch_size: images per forward pass.
        device: passed to ``pipeline`` (``None``: its default).

    Returns:
        float64 array ``[N]`` of the scores (float32 values, as the pipeline computes them).
    """
    from transformers import pipeline

    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{out_dir}/config.json: missing; point out_dir at a folder written by export_hf."
        )
    if isinstance(images, (Image.Image, str, Path)) or not isinstance(images, Sequence):
        raise TypeError("images must be a sequence of PIL images or paths (wrap a single image in a list).")
    inputs = [str(image) if isinstance(image, Path) else image for image in images]
    if not inputs:
        return np.empty(0, dtype=np.float64)
    classifier = pipeline("image-classification", model=str(out_dir), device=device)
    results = classifier(inputs, top_k=len(ID2LABEL), function_to_apply="softmax", batch_size=batch_size)
    scores = []
    for k, result in enumerate(results):
        found = [r["score"] for r in result if r["label"] == ROADWORK_LABEL]
        if len(found) != 1:
            labels = [r["label"] for r in result]
            raise ValueError(f"{out_dir}: image {k} has labels {labels}; expected one {ROADWORK_LABEL!r}.")
        scores.append(float(found[0]))
    return np.asarray(scores, dtype=np.float64)
