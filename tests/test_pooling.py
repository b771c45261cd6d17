"""Tests of roadwork.models.pooling and Backbone.reconfigured: input size and pooling of timm backbones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.pooling import GeMPool, set_pooling


@pytest.fixture(scope="module")
def effnet() -> Backbone:
    return load_backbone("efficientnet_lite0")


def test_gem_matches_numpy_and_spans_average_to_max() -> None:
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)) * 6
    expected = np.mean(x.numpy() ** 3, axis=(2, 3)) ** (1 / 3)
    np.testing.assert_allclose(GeMPool()(x).numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(GeMPool(p=1.0)(x), x.mean(dim=(2, 3)))
    # max * n^(-1/p) <= GeM_p <= max over n positions: it tends to the max as p grows
    big, peak = GeMPool(p=20.0)(x), x.amax(dim=(2, 3))
    assert torch.all(big <= peak + 1e-5) and torch.all(big >= peak * 20 ** (-1 / 20) - 1e-5)
    with pytest.raises(ValueError, match="p must be >= 1"):
        GeMPool(p=0.5)


def test_set_pooling_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"one of \('avg', 'max', 'gem'\)"):
        set_pooling(torch.nn.Identity(), "median")


def test_reconfigured_backbone_pools_and_resizes_as_asked_and_survives_save(
    effnet: Backbone, tmp_path: Path
) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feature_map = effnet.model.forward_features(x)
        maxed = effnet.reconfigured(input_size=None, pooling="max")
        torch.testing.assert_close(maxed(x), feature_map.amax(dim=(2, 3)))
        gem = effnet.reconfigured(input_size=384, pooling="gem")
        torch.testing.assert_close(gem(x), GeMPool()(feature_map))
    assert (gem.preprocess.image_size, gem.preprocess.resize_size) == (384, 384)
    assert len({effnet.fingerprint(), maxed.fingerprint(), gem.fingerprint()}) == 3
    # the default pooling with the backbone's own input is the backbone as loaded
    assert effnet.reconfigured(input_size=None, pooling="avg").fingerprint() == effnet.fingerprint()
    gem.save(tmp_path / "gem")
    reloaded = load_backbone(str(tmp_path / "gem"))
    assert reloaded.fingerprint() == gem.fingerprint()
    assert isinstance(reloaded.model.global_pool, GeMPool)


def test_a_vit_takes_an_input_size_but_no_other_pooling() -> None:
    tiny = load_backbone("tiny")
    squashed = tiny.reconfigured(input_size=112, pooling="avg")
    assert (squashed.preprocess.image_size, squashed.preprocess.resize_mode) == (112, "squash")
    assert squashed.fingerprint() != tiny.fingerprint()
    with pytest.raises(ValueError, match="applies to timm backbones"):
        tiny.reconfigured(input_size=224, pooling="gem")
