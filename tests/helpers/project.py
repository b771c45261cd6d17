"""A small prepared project for in-process stage tests: tiny backbone, synthetic images, ingest / dedupe /
split already run (the adapt-stage fixtures built on it are in conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@contextmanager
def inside(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run(*argv: str) -> None:
    assert cli(list(argv)) == 0


def prepare_project(root: Path, *, n: int, seed: int, updates: dict[str, dict]) -> Path:
    """params.yaml with the tiny backbone and ``updates`` (section -> values), ``n`` synthetic images, and
    ingest, dedupe and split run once in ``root``."""
    params = OmegaConf.load(REPO / "params.yaml")
    params.backbone.id = params.dedupe.backbone = "tiny"
    for section, values in updates.items():
        params[section].update(values)
    OmegaConf.save(params, root / "params.yaml")
    generate_dataset(root / "data", n=n, seed=seed, show_progress=False)
    with inside(root):
        for stage in ("ingest", "dedupe", "split"):
            run(stage)
    return root
