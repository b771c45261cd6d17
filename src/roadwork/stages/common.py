"""What every stage shares: output locations, atomic JSON writes and the stage's MLflow run."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roadwork.atomic import atomic_write, atomic_write_json
from roadwork.config import RoadworkConfig, flatten, to_dict
from roadwork.tracking import StageRun, stage_run

OUTPUTS = Path("outputs")
# Resume checkpoints of long stages: outside every DVC `outs` (DVC deletes those before a stage runs), so a
# killed `dvc repro` resumes where it stopped. Each stage checks that a checkpoint matches its inputs.
CHECKPOINTS = Path(".cache/checkpoints")
# Rendered inputs (the JPEG bytes the validator would send), shared by every stage and backbone
RENDERS = Path(".cache/renders")
INGEST = OUTPUTS / "ingest"
SPLITS_CSV = OUTPUTS / "split" / "splits.csv"
# variant -> where its backbone comes from: the configured backbone, or the ExPLoRA-adapted copy of it
VARIANTS: dict[str, str | None] = {"base": None, "adapted": "outputs/adapt/backbone"}


def stage_dir(stage: str, variant: str | None = None) -> Path:
    """``outputs/<stage>[/<variant>]``, created if needed. Paths are relative to the repository root."""
    path = OUTPUTS / stage / variant if variant else OUTPUTS / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(stage: str, variant: str | None = None) -> Path:
    """``.cache/checkpoints/<stage>[@<variant>]``: where a stage's resume checkpoints live."""
    return CHECKPOINTS / (f"{stage}@{variant}" if variant else stage)


def write_json(path: Path, payload: Mapping[str, Any], *, sort_keys: bool = True) -> None:
    """Write JSON (sorted keys unless told otherwise, indent 2) atomically: no reader sees half a file."""
    atomic_write_json(path, payload, sort_keys=sort_keys)


METRICS_JSON = "metrics.json"
REPORT_JSON = "report.json"


def write_metrics(directory: Path, figures: Mapping[str, float], headline: Sequence[str]) -> dict[str, float]:
    """Write a stage's figures as two files and return the headline ones.

    ``metrics.json`` (DVC's metrics: what ``dvc metrics show`` and ``dvc exp show`` compare) holds the
    ``headline`` names in that order; a name the figures lack is left out (e.g. the validator mix when no
    level renders were made). ``report.json`` (a stage output and an MLflow artifact) holds every figure,
    headline first, then by name. Readers of a figure outside the headline read ``report.json``.
    """
    head = {name: figures[name] for name in headline if name in figures}
    write_json(directory / METRICS_JSON, head, sort_keys=False)
    rest = {name: figures[name] for name in sorted(figures) if name not in head}
    write_json(directory / REPORT_JSON, head | rest, sort_keys=False)
    return head


def write_csv(frame: Any, path: Path) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


@contextmanager
def tracked(
    stage: str,
    cfg: RoadworkConfig,
    sections: tuple[str, ...],
    overrides: tuple[str, ...] = (),
    variant: str | None = None,
) -> Iterator[StageRun]:
    """The MLflow run of this stage execution, with the stage's param sections logged as ``section.key``."""
    resolved = to_dict(cfg)
    params = {k: v for section in sections for k, v in flatten({section: resolved[section]}).items()}
    with stage_run(
        stage,
        params=params,
        resolved_config=resolved,
        experiment=cfg.tracking.experiment,
        variant=variant,
        overrides=overrides,
    ) as run:
        yield run


def variant_backbone_id(cfg: RoadworkConfig, variant: str) -> str:
    """The ``load_backbone`` id of ``variant``: ``backbone.id`` for base, the adapted folder otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; the variants are {', '.join(VARIANTS)}.")
    return VARIANTS[variant] or cfg.backbone.id


def load_variant_backbone(cfg: RoadworkConfig, variant: str) -> Any:
    """The variant's backbone (:func:`configured_backbone`), on ``embed.device`` (compiled with
    ``embed.compile``)."""
    return place_backbone(cfg, configured_backbone(cfg, variant_backbone_id(cfg, variant)))


def configured_backbone(cfg: RoadworkConfig, backbone_id: str) -> Any:
    """``load_backbone(backbone_id)`` with ``backbone.input_size`` / ``backbone.pooling`` applied: the
    network every stage runs (adapt adapts it, embed and the exports use it)."""
    from roadwork.models.backbone import load_backbone

    backbone = load_backbone(
        backbone_id, seed=cfg.backbone.seed, attn_implementation=cfg.backbone.attn_implementation
    )
    if cfg.backbone.input_size is not None or cfg.backbone.pooling != "avg":
        backbone = backbone.reconfigured(input_size=cfg.backbone.input_size, pooling=cfg.backbone.pooling)
    return backbone


def place_backbone(cfg: RoadworkConfig, backbone: Any) -> Any:
    """Move ``backbone`` to ``embed.device`` and, with ``embed.compile``, compile its network's forward.

    Compiling the bound ``forward`` (not wrapping the module) keeps the parameter names, so the fingerprint
    and saved files are those of the plain module.
    """
    import torch

    device = cfg.embed.device
    if device == "gpu" and not torch.cuda.is_available():
        raise ValueError("embed.device is 'gpu' but no CUDA device is available; use auto or cpu.")
    if device in ("auto", "gpu") and torch.cuda.is_available():
        backbone.to("cuda")
    if cfg.embed.compile:
        backbone.model.forward = torch.compile(backbone.model.forward)
    return backbone


def feature_cache(cfg: RoadworkConfig, backbone: Any, fingerprint: str | None = None) -> Any:
    """The shared feature cache for ``backbone`` as this configuration runs it (device and precision)."""
    from roadwork.models.inference import FeatureCache, numerics_key

    device_type = next(backbone.parameters()).device.type
    key = numerics_key(fingerprint or backbone.fingerprint(), device_type, cfg.embed.precision)
    return FeatureCache(Path(cfg.embed.cache_dir), key)


def render_store() -> Any:
    from roadwork.train.embed import RenderStore

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


def model_dir(variant: str) -> Path:
    """``outputs/train/<variant>/model``: the head, ``backbone.json`` and, if finetuned, ``backbone/``."""
    return OUTPUTS / "train" / variant / "model"


def write_backbone_ref(directory: Path, backbone: Any, *, finetuned: bool) -> None:
    """Record which backbone the head in ``directory`` was trained on (the folder itself when finetuned)."""
    write_json(
        directory / "backbone.json",
        {"finetuned": finetuned, "source": backbone.backbone_id, "fingerprint": backbone.fingerprint()},
    )


def load_model(cfg: RoadworkConfig, variant: str) -> tuple[Any, Any]:
    """(backbone, head) of the variant's trained model; fails if the backbone no longer matches the head."""
    from roadwork.models.backbone import load_backbone
    from roadwork.train.head import load_head

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
    from roadwork.train.embed import Render, rendered_inputs

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
) -> Any:
    """Margins ``z1 - z0`` ``[N]`` of the model on encoded ``inputs`` (e.g. :func:`rendered_bytes`).

    They go through the one inference path (:func:`roadwork.models.inference.infer_margins`, flip-averaged
    with ``embed.tta_flip``) with the shared feature cache, so inputs ``embed`` already ran are only read
    back. ``fingerprint``: the backbone's, when the caller has it (hashing every weight costs about a second
    per 100M parameters).
    """
    from roadwork.models.inference import infer_margins

    return infer_margins(
        backbone,
        head,
        inputs,
        spec=view_spec(cfg),
        tta_flip=cfg.embed.tta_flip,
        cache=feature_cache(cfg, backbone, fingerprint),
        batch_size=cfg.embed.batch_size,
        precision=cfg.embed.precision,
        desc=desc,
        show_progress=True,
    )
