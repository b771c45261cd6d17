"""The subnet's pinned transformers in ``.cache/hf-4.45.2`` and the miner's way of scoring an export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PINNED = REPO / ".cache" / "hf-4.45.2"
PINNED_PACKAGES = ("transformers==4.45.2", "tokenizers==0.20.3", "huggingface_hub==0.26.5")
MINER_SCRIPT = Path(__file__).with_name("miner_pipeline.py")
# Substrate's well-known development key "Alice" (generic prefix 42): a valid SS58 hotkey for tests
TEST_HOTKEY = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"


def pinned_transformers() -> Path:
    """``.cache/hf-4.45.2`` holding transformers 4.45.2 and what it needs that ``.venv`` lacks, installed
    from the package registry with ``pip install --target`` on first use (never into ``.venv``); fails the
    test if the registry cannot be reached."""
    if not (PINNED / "transformers-4.45.2.dist-info").is_dir():
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-deps"]
        done = subprocess.run(
            [*command, "--target", str(PINNED), *PINNED_PACKAGES], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.fail(f"could not install {PINNED_PACKAGES} into {PINNED}:\n{done.stderr[-2000:]}")
    return PINNED


def miner_scores(folder: Path, images: list[Path], pythonpath: Path | None) -> dict:
    """Run ``miner_pipeline.py`` on ``folder`` in a subprocess (``pythonpath`` first on ``sys.path``; None =
    the project's own transformers) and return its JSON: transformers version, processor, scores."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, str(MINER_SCRIPT), str(folder), *map(str, images)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
