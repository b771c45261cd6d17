"""Weighted row sampling for head training: per-source weights (``data.sources``) and hard-negative
up-weighting (``train.hard_negatives``) act through the sampler, never by duplicating rows.

:class:`WeightedShardSampler` is :class:`~roadwork.train.head.ShardSampler` with another epoch order: ``n``
rows drawn with replacement, row ``i`` with probability ``w_i / sum(w)`` (what
``torch.utils.data.WeightedRandomSampler`` draws), from the data module's seeded generator. Every process
draws the same order from its identically seeded generator and takes its shard of it, as with the plain
shuffle, so several processes together see the single-process epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from roadwork.train.head_data import ShardSampler


def check_sample_weights(weights: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """``weights`` as float64 when they are ``n`` finite non-negative numbers with a positive sum; else
    ValueError naming what is wrong."""
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"sample_weights must hold one weight per train row ({n}), got shape {array.shape}.")
    if not np.isfinite(array).all() or (array < 0).any() or array.sum() <= 0:
        raise ValueError("sample_weights must be finite and non-negative with a positive sum.")
    return array


def sampler_weights(weights: np.ndarray | None) -> np.ndarray | None:
    """``weights`` for :func:`~roadwork.train.head.fit_head`'s ``sample_weights``, or None (its plain
    shuffle, without replacement) when there are none or all are equal: equal weights draw alike anyway."""
    if weights is None or np.all(weights == weights[0]):
        return None
    return weights


class WeightedShardSampler(ShardSampler):
    """Each epoch: ``len(weights)`` rows drawn with replacement in proportion to ``weights``, then padded
    and sharded like :class:`~roadwork.train.head.ShardSampler`."""

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray,
        *,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        n = len(weights)
        super().__init__(n, rank=rank, world_size=world_size, generator=generator)
        self.weights = torch.from_numpy(check_sample_weights(weights, n))

    def epoch_order(self) -> list[int]:
        return torch.multinomial(self.weights, self.n, replacement=True, generator=self.generator).tolist()
