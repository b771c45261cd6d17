"""What the stages that run a network share: the variant's backbone and model, the feature cache seeded
from embed's outputs, the rendered inputs and the one way to score them (:func:`model_margins`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from roadwork.config import RoadworkConfig
from roadwork.layout import INGEST, RENDERS, VARIANTS, model_dir
from roadwork.stages.common import write_json


def variant_backbone_id(cfg: RoadworkConfig, variant: str) -> str:
    """The ``load_backbone`` id of ``variant``: ``backbone.id`` for base, the adapted folder otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}.")
    source = VARIANTS[variant]
    return cfg.backbone.id if source is None else str(source)


def load_variant_backbone(cfg: RoadworkConfig, variant: str) -> Any:
    """The variant's backbone (:func:`configured_backbone`), on ``embed.device`` (compiled with
    ``embed.compile``)."""
    return place_backbone(cfg, configured_backbone(cfg, variant_backbone_id(cfg, variant)))


def configured_backbone(cfg: RoadworkConfig, backbone_id: str) -> Any:
    """``load_backbone(backbone_id)`` with ``backbone.input_size`` / ``backbone.pooling`` applied: the
    network every stage runs (adapt adapts it, embed and the exports use it)."""
    return build_backbone(
        backbone_id,
        seed=cfg.backbone.seed,
        attn_implementation=cfg.backbone.attn_implementation,
        input_size=cfg.backbone.input_size,
        pooling=cfg.backbone.pooling,
    )


def build_backbone(
    backbone_id: str, *, seed: int, attn_implementation: str, input_size: int | None, pooling: str
) -> Any:
    """``load_backbone(backbone_id)`` reconfigured to ``input_size`` and ``pooling`` (None, "avg": as is)."""
    from roadwork.models.backbone import load_backbone

    backbone = load_backbone(backbone_id, seed=seed, attn_implementation=attn_implementation)
    if input_size is not None or pooling != "avg":
        backbone = backbone.reconfigured(input_size=input_size, pooling=pooling)
    return backbone


def place_backbone(cfg: RoadworkConfig, backbone: Any) -> Any:
    """Move ``backbone`` to ``embed.device`` and, with ``embed.compile``, compile its network's forward.

    Compiling the bound ``forward`` (not wrapping the module) keeps the parameter names, so the fingerprint
    and saved files are those of the plain module.
    """
    import torch

    place_on_device(cfg, backbone)
    if cfg.embed.compile:
        backbone.model.forward = torch.compile(backbone.model.forward)
    return backbone


def place_on_device(cfg: RoadworkConfig, backbone: Any) -> Any:
    """Move ``backbone`` to ``embed.device`` ("auto": CUDA when there is one)."""
    import torch

    device = cfg.embed.device
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("embed.device is 'gpu' but no CUDA device is available; use auto or cpu.")
    if device in ("auto", "gpu") and torch.cuda.is_available():
        backbone.to("cuda")
    return backbone


def feature_cache(
    cfg: RoadworkConfig, backbone: Any, fingerprint: str | None = None, *, precision: str | None = None
) -> Any:
    """The shared feature cache for ``backbone`` as this configuration runs it (device and precision:
    ``embed.precision`` unless given)."""
    from roadwork.models.inference import FeatureCache, numerics_key

    device_type = next(backbone.parameters()).device.type
    key = numerics_key(fingerprint or backbone.fingerprint(), device_type, precision or cfg.embed.precision)
    return FeatureCache(Path(cfg.embed.cache_dir), key)


def variant_feature_cache(
    cfg: RoadworkConfig, variant: str, backbone: Any, fingerprint: str, splits: tuple[str, ...]
) -> Any:
    """:func:`feature_cache` seeded with what ``embed`` wrote for ``variant``'s ``splits``.

    Embed's rows are copied in (entries already there are kept) only when they were computed under this
    cache's numerics key, i.e. by this backbone, device and precision; a fine-tuned backbone or another
    precision gets nothing and computes its own. Each row's views are split into the cache's parts as
    :func:`roadwork.models.inference.embed_inputs` stores them.
    """
    from safetensors import safe_open

    from roadwork.layout import features_path, index_path
    from roadwork.stages.embed import NUMERICS

    cache = feature_cache(cfg, backbone, fingerprint)
    spec = view_spec(cfg)
    index = pd.read_csv(index_path(variant), dtype={"input_key": str})
    for split in splits:
        path = features_path(variant, split)
        with safe_open(str(path), framework="numpy") as handle:
            if (handle.metadata() or {}).get(NUMERICS) != cache.fingerprint:
                continue
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        keys = index.loc[index["split"] == split].sort_values("row")["input_key"].tolist()
        for name, flip in (("features", False), ("features_flip", True)):
            if name not in arrays:
                continue
            for key, row in zip(keys, arrays[name], strict=True):
                start = 0
                for part in spec.parts:
                    views = spec.part_views(part)
                    cache.seed(key, part, row[start : start + views], flip=flip)
                    start += views
    return cache


def render_store() -> Any:
    from roadwork.data.render import RenderStore

    return RenderStore(RENDERS)


def view_spec(cfg: RoadworkConfig) -> Any:
    from roadwork.models.inference import ViewSpec

    return ViewSpec(cfg.embed.views, cfg.embed.grid, cfg.embed.tile_overlap)


def train_augment(cfg: RoadworkConfig) -> Any:
    from roadwork.data.preprocess import TrainAugment

    aug = cfg.embed.augment
    return TrainAugment(
        tuple(aug.level_probs),
        color_jitter=aug.color_jitter,
        erase_p=aug.erase_p,
        flip_p=aug.flip_p,
        jpeg=aug.jpeg,
    )


# ------------------------------------------------------------------ the trained model of a variant


def write_backbone_ref(directory: Path, backbone: Any, *, finetuned: bool) -> None:
    """Record which backbone the head in ``directory`` was trained on (the folder itself when finetuned)."""
    write_json(
        directory / "backbone.json",
        {"finetuned": finetuned, "source": backbone.backbone_id, "fingerprint": backbone.fingerprint()},
    )


def load_model(cfg: RoadworkConfig, variant: str) -> tuple[Any, Any]:
    """(backbone, head) of the variant's trained model; fails if the backbone no longer matches the head."""
    from roadwork.models.backbone import load_backbone
    from roadwork.models.head import load_head

    directory = model_dir(variant)
    ref_path = directory / "backbone.json"
    if not ref_path.is_file():
        raise FileNotFoundError(f"{ref_path}: missing; run `roadwork train --variant {variant}` first.")
    ref = json.loads(ref_path.read_text())
    if ref["finetuned"]:
        backbone = place_backbone(cfg, load_backbone(str(directory / "backbone")))
    else:
        backbone = load_variant_backbone(cfg, variant)
    if backbone.fingerprint() != ref["fingerprint"]:
        raise ValueError(
            f"{ref_path}: the head was trained on backbone {ref['fingerprint'][:12]} but "
            f"{backbone.backbone_id} is {backbone.fingerprint()[:12]}; re-run train."
        )
    return backbone, load_head(directory)


def rendered_bytes(frame: Any, render: Any = None) -> list[bytes]:
    """The bytes ``render`` (default: clean) makes of each image of ``frame`` (``working_path``,
    ``sha256``), from or into the shared render store."""
    from roadwork.data.render import Render, rendered_inputs

    paths = [INGEST / p for p in frame["working_path"]]
    return rendered_inputs(paths, frame["sha256"].tolist(), render or Render(), render_store())


def model_margins(
    cfg: RoadworkConfig,
    backbone: Any,
    head: Any,
    inputs: list[bytes],
    *,
    desc: str = "margins",
    fingerprint: str | None = None,
    cache: Any = None,
) -> Any:
    """Margins ``z1 - z0`` ``[N]`` of the model on encoded ``inputs`` (e.g. :func:`rendered_bytes`).

    They go through the one inference path (:func:`roadwork.models.inference.infer_margins`, flip-averaged
    with ``embed.tta_flip``) with the shared feature cache, so inputs ``embed`` already ran are only read
    back. ``fingerprint``: the backbone's, when the caller has it (hashing every weight costs about a second
    per 100M parameters); ``cache``: the stage's (e.g. :func:`variant_feature_cache`), else a fresh handle.
    """
    from roadwork.models.inference import infer_margins

    return infer_margins(
        backbone,
        head,
        inputs,
        spec=view_spec(cfg),
        tta_flip=cfg.embed.tta_flip,
        cache=cache if cache is not None else feature_cache(cfg, backbone, fingerprint),
        batch_size=cfg.embed.batch_size,
        precision=cfg.embed.precision,
        desc=desc,
        show_progress=True,
    )


# ------------------------------------------------------------------ the Hugging Face export's agreement check
