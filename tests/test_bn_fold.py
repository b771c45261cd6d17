"""Tests of roadwork.models.bn_fold: folding frozen batch norm into convolutions changes no feature."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.bn_fold import FoldedCache, fold_batch_norm


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_norms(network: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine terms (fresh ones are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen))
    return network.eval()


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(3, 8, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv_dw(torch.relu(self.bn1(self.conv_pw(x))))))


class _OutOfOrder(nn.Module):
    """Registers (conv_a, bn, conv_b) but runs conv_a -> conv_b -> bn: folding bn into conv_a is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_b(torch.relu(self.conv_a(x))))


def test_folded_network_matches_the_original_and_leaves_it_untouched() -> None:
    network = _randomise_norms(nn.Sequential(_Block(), nn.Flatten()))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    x = _pixels(4, 16)
    folded = fold_batch_norm(network, x[:2])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) == 2
    with torch.no_grad():
        torch.testing.assert_close(folded(x), network(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert not any(p.requires_grad for p in folded.parameters())


def test_a_network_whose_modules_are_not_in_forward_order_is_refused() -> None:
    network = _randomise_norms(_OutOfOrder())
    with pytest.raises(ValueError, match="not registered in forward order"):
        fold_batch_norm(network, _pixels(2, 16))


def test_training_mode_network_is_refused() -> None:
    with pytest.raises(ValueError, match="eval-mode"):
        fold_batch_norm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train(), _pixels(1, 8))


def test_cache_rebuilds_when_a_weight_changes_in_place_or_the_network_is_replaced() -> None:
    network = _randomise_norms(nn.Sequential(_Block()))
    cache, x = FoldedCache(), _pixels(3, 12)
    first = cache.get(network, x[:1])
    assert cache.get(network, x[:1]) is first
    with torch.no_grad():
        network[0].conv_pw.weight.mul_(2.0)
    second = cache.get(network, x[:1])
    assert second is not first
    with torch.no_grad():
        torch.testing.assert_close(second(x), network(x), rtol=1e-5, atol=1e-5)
    replacement = _randomise_norms(nn.Sequential(_Block()), seed=1)
    with torch.no_grad():
        torch.testing.assert_close(cache.get(replacement, x[:1])(x), replacement(x), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def effnet() -> Backbone:
    return load_backbone("efficientnet_lite0")


def test_effnet_inference_runs_folded_and_matches_the_saved_network(effnet: Backbone) -> None:
    x = _pixels(3, 224, seed=3)
    with torch.no_grad():
        plain = effnet(x)  # outside inference mode: the saved network itself
    with torch.inference_mode():
        fast = effnet(x)
        assert effnet._timm_network() is not effnet.model
        assert not any(isinstance(m, nn.BatchNorm2d) for m in effnet._timm_network().modules())
    assert effnet._timm_network() is effnet.model
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * float(plain.abs().max()))
    # what is saved, hashed and exported keeps its batch norms
    assert any(isinstance(m, nn.BatchNorm2d) for m in effnet.model.modules())
