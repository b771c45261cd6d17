"""The exportable stand-in for a model the Hugging Face form cannot hold.

The miner's ``pipeline("image-classification")`` runs one global view through the backbone and one linear
layer. A multi-view, flip-averaged, MLP or ``sqrt_l2`` head has no such form, so bundle ships, beside it, the
plain probe of :mod:`roadwork.train.probe` (a standardised logistic regression on the same backbone's clean
global-view features) written as that linear layer, with a policy of its own. This module turns the probe
into a :class:`~roadwork.train.head.HeadModel`; the standardisation folds into the weights:
``w . (x - mu) / sigma + b = (w / sigma) . x + (b - sum(w mu / sigma))``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from roadwork.models.head import HeadModel
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.probe import Probe


def probe_head_config(trained: HeadTrainConfig) -> HeadTrainConfig:
    """``trained`` with the architecture the Hugging Face form holds: a linear head on raw features."""
    return replace(trained, head="linear", feature_transform="none", dropout=0.0)


def linear_head_from_probe(probe: Probe, config: HeadTrainConfig) -> HeadModel:
    """A single-view linear :class:`HeadModel` whose margin (logit 1 - logit 0) is ``probe.margin(x)``.

    ``config`` must describe a linear head on raw features (:func:`probe_head_config`); logit 0 is
    identically 0, logit 1 the probe's ``decision_function``.
    """
    if config.head != "linear" or config.feature_transform != "none":
        raise ValueError(
            f"the probe becomes a linear head on raw features; got head={config.head!r}, "
            f"feature_transform={config.feature_transform!r} (use probe_head_config)."
        )
    scaler, regression = probe.pipeline[0], probe.pipeline[-1]
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    coef = np.asarray(regression.coef_[0], dtype=np.float64) / scale
    intercept = float(regression.intercept_[0]) - float(coef @ np.asarray(scaler.mean_, dtype=np.float64))
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten: keep the caller's RNG stream
        head = HeadModel.from_config(config, feature_dim=len(coef), num_views=1)
    layer: Any = head.classifier[-1]
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[1] = torch.from_numpy(coef).to(layer.weight.dtype)
        layer.bias[1] = intercept
    return head.eval()
