"""The Hugging Face export, loaded the way the NATIX miner loads it, under the subnet's pinned transformers.

natixnetwork/streetvision-subnet pins ``transformers ~4.45`` (its lock: 4.45.2). ``transformers==4.45.2`` and
what it needs that ``.venv`` lacks (tokenizers 0.20, huggingface_hub < 1.0) are installed with ``pip install
--target .cache/hf-4.45.2`` (never into ``.venv``); ``tests/helpers/miner_pipeline.py`` then runs the
miner's own calls in a subprocess with that folder first on ``sys.path``. The same script under the current
transformers checks the other end. Oracle: the project's own inference path (``Predictor.predict``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.miner import TEST_HOTKEY, miner_scores, pinned_transformers
from roadwork.deploy.hf_export import export_hf
from roadwork.deploy.predictor import Predictor, PredictorSpec
from roadwork.models.backbone import load_backbone
from roadwork.models.head import HeadModel
from roadwork.policy import fit_policy

pytestmark = pytest.mark.slow

CARD = {
    "model_name": "roadwork-compat-test",
    "description": "compatibility test",
    "version": "1.0.0",
    "submitted_by": TEST_HOTKEY,
    "submission_time": "2026-01-01T00:00:00+00:00",
}


@pytest.fixture(scope="module")
def pinned() -> Path:
    return pinned_transformers()


def _validator_images(tmp_path: Path, n: int = 12) -> list[Path]:
    """224 x 224 JPEGs (what the validator sends) with structure at several scales."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((224, 224), Image.BICUBIC)
        noise = rng.normal(0, 12, (224, 224, 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        path = tmp_path / f"challenge_{i:02d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _export(family: str, images: list[Path], out: Path) -> Predictor:
    """A Predictor of ``family`` with the pipeline's default input (squash to 224), a linear head and a
    policy fitted so that about half of ``images`` are roadwork, exported to ``out``."""
    backbone = load_backbone(family).reconfigured(input_size=224, pooling="avg")
    torch.manual_seed(0)
    head = HeadModel(
        feature_dim=backbone.feature_dim, num_views=1, head="linear", mlp_hidden=4, dropout=0.0,
        aggregation="topk_mean", topk=1, attention_hidden=4,
    ).eval()  # fmt: skip
    probe = Predictor(backbone, head, fit_policy([-1.0, 1.0], [0, 1], split_hash="s"), PredictorSpec())
    z = probe.margins([probe.decode(path.read_bytes()) for path in images]).astype(np.float64)
    policy = fit_policy(z, (z > np.median(z)).astype(int), split_hash="s", threshold_rule="argmax")
    export_hf(backbone, head, policy, out, model_card=CARD)
    return Predictor(backbone, head, policy, PredictorSpec())


@pytest.mark.parametrize("family", ["efficientnet_lite0", "tiny"])
def test_export_loads_in_the_miners_transformers_and_agrees_with_our_path(
    family: str, pinned: Path, tmp_path: Path
) -> None:
    images = _validator_images(tmp_path)
    predictor = _export(family, images, tmp_path / "export")
    ours = predictor.predict([path.read_bytes() for path in images])  # the served path takes bytes
    assert set(ours["decision"]) == {0, 1}
    for pythonpath, version in ((pinned, "4.45.2"), (None, None)):
        result = miner_scores(tmp_path / "export", images, pythonpath)
        if version is not None:
            assert result["transformers"] == version
        assert result["processor"].startswith("ViTImageProcessor")
        scores = np.asarray(result["scores"])
        np.testing.assert_allclose(scores, ours["probability"].to_numpy(), atol=1e-4)
        np.testing.assert_array_equal((scores > 0.5).astype(int), ours["decision"].to_numpy())
