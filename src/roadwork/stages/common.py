"""What every stage shares: output locations, atomic JSON writes and the stage's MLflow run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from roadwork.config import RoadworkConfig, flatten, to_dict
from roadwork.tracking import StageRun, stage_run

OUTPUTS = Path("outputs")
INGEST = OUTPUTS / "ingest"
SPLITS_CSV = OUTPUTS / "split" / "splits.csv"
# variant -> where its backbone comes from: the configured backbone, or the ExPLoRA-adapted copy of it
VARIANTS: dict[str, str | None] = {"base": None, "adapted": "outputs/adapt/backbone"}


def stage_dir(stage: str, variant: str | None = None) -> Path:
    """``outputs/<stage>[/<variant>]``, created if needed. Paths are relative to the repository root."""
    path = OUTPUTS / stage / variant if variant else OUTPUTS / stage
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp file + rename), so no reader ever sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(frame: Any, path: Path) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_csv(tmp, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    from roadwork.models.backbone import load_backbone

    return load_backbone(
        variant_backbone_id(cfg, variant),
        seed=cfg.backbone.seed,
        attn_implementation=cfg.backbone.attn_implementation,
    )


def view_spec(cfg: RoadworkConfig) -> Any:
    from roadwork.train.embed import ViewSpec

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
