"""A small prepared project for in-process stage tests: tiny backbone, synthetic images, ingest / dedupe /
split already run (the adapt-stage fixtures built on it are in conftest.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from roadwork.cli import main as cli
from roadwork.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
SHRUNK_ADAPT = {
    "max_steps": 3,
    "batch_size": 8,
    "local_crop_size": 48,
    "out_dim": 64,
    "head_hidden_dim": 32,
    "head_bottleneck_dim": 16,
    "checkpoint_every_steps": 1,
}

# embed / train / evaluate shrunk for in-process stage tests on a few dozen images
SHRUNK_MODEL_STAGES = {
    "embed": {"train_copies": 1},
    "train": {"max_epochs": 3, "crossfit_folds": 2},
    "evaluate": {"bootstrap_resamples": 50, "renders_per_level": 1, "reward_streams": 50},
}


@contextmanager
def inside(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def working_copy(project: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the prepared ``project`` under ``tmp_path``, entered; the feature cache is shared
    (linked) to save recomputation."""
    copy = tmp_path / "work"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".cache"))
    if (project / ".cache").exists():
        (copy / ".cache").symlink_to(project / ".cache")
    with inside(copy):
        yield copy


def run(*argv: str) -> None:
    assert cli(list(argv)) == 0


def prepare_project(
    root: Path,
    *,
    n: int,
    seed: int,
    updates: dict[str, dict],
    make_data: Callable[[Path], None] | None = None,
) -> Path:
    """params.yaml with the tiny backbone and ``updates`` (section -> values), ``n`` synthetic images in
    ``data/`` (or whatever ``make_data(root / "data")`` puts there), and ingest, dedupe and split run once
    in ``root``."""
    params = OmegaConf.load(REPO / "params.yaml")
    params.backbone.id = params.dedupe.backbone = "tiny"
    for section, values in updates.items():
        params[section].update(values)
    OmegaConf.save(params, root / "params.yaml")
    if make_data is None:
        generate_dataset(root / "data", n=n, seed=seed, show_progress=False)
    else:
        make_data(root / "data")
    with inside(root):
        for stage in ("ingest", "dedupe", "split"):
            run(stage)
    return root
