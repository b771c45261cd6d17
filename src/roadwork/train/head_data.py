"""Cached features as training data: :class:`FeatureSet` (one split's arrays, checked) and the Lightning
data module that batches them, sharded across processes under DDP (see :mod:`roadwork.train.head`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Sampler, TensorDataset


@dataclass(frozen=True)
class FeatureSet:
    """Cached features of one split, one row per (image, copy).

    Attributes:
        features: ``[N, V, D]`` float32 backbone features; ``V`` views per row (global first), ``D`` dims.
            Other floating dtypes (e.g. a float16 cache) are converted to float32 on construction.
        labels: ``[N]`` int64 labels, 0 = no roadwork, 1 = roadwork (any integer dtype is converted).
        ids: ``[N]`` image ids (sha256 hex of the source image). Rows of augmented copies of one image share
            its id and must share its label.

    Raises TypeError/ValueError naming the field when shapes disagree, a value is not finite, a label is
    not 0/1, an id is empty, or rows sharing an id carry different labels.
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    ids: NDArray[np.str_]

    def __post_init__(self) -> None:
        features = np.asarray(self.features)
        if not np.issubdtype(features.dtype, np.floating):
            raise TypeError(f"FeatureSet.features must be a floating array, got dtype {features.dtype}.")
        if features.ndim != 3 or 0 in features.shape:
            raise ValueError(
                f"FeatureSet.features must have shape [N, V, D] with N, V, D >= 1, got {features.shape}; "
                "a single-view cache needs an explicit view axis of length 1."
            )
        features = features.astype(np.float32, copy=False)
        if not np.isfinite(features).all():
            bad = np.unique(np.argwhere(~np.isfinite(features))[:, 0])
            raise ValueError(
                f"FeatureSet.features has non-finite values in {bad.size} rows (first: {bad[:5].tolist()}); "
                "re-embed those images."
            )
        n = features.shape[0]
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ValueError(
                f"FeatureSet.labels must have shape ({n},) to match features, got {labels.shape}."
            )
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise TypeError(f"FeatureSet.labels must be integers 0/1, got dtype {labels.dtype}.")
        labels = labels.astype(np.int64, copy=False)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"FeatureSet.labels must be 0 or 1, found {sorted(set(labels.tolist()) - {0, 1})[:5]}."
            )
        ids = np.asarray(self.ids)
        if ids.shape != (n,):
            raise ValueError(f"FeatureSet.ids must have shape ({n},) to match features, got {ids.shape}.")
        if ids.dtype.kind not in "UO" or not all(isinstance(i, str) for i in ids.tolist()):
            raise TypeError(f"FeatureSet.ids must hold strings (image sha256), got dtype {ids.dtype}.")
        ids = ids.astype(np.str_)
        if (np.char.str_len(ids) == 0).any():
            raise ValueError("FeatureSet.ids contains empty strings; every row needs its image id.")
        unique, inverse = np.unique(ids, return_inverse=True)
        low = np.full(unique.size, 1, dtype=np.int64)
        high = np.zeros(unique.size, dtype=np.int64)
        np.minimum.at(low, inverse, labels)
        np.maximum.at(high, inverse, labels)
        conflicts = unique[low != high]
        if conflicts.size:
            raise ValueError(
                f"FeatureSet.labels differ between rows of the same id for {conflicts.size} ids "
                f"(first: {conflicts[:3].tolist()}); copies of one image must share its label."
            )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "ids", ids)

    @property
    def num_views(self) -> int:
        """``V``, views per row."""
        return int(self.features.shape[1])

    @property
    def feature_dim(self) -> int:
        """``D``, feature dimensions per view."""
        return int(self.features.shape[2])


def optimizer_steps_per_epoch(n_rows: int, batch_size: int, accumulate_grad_batches: int) -> int:
    """Optimizer steps in one epoch: ``ceil(ceil(n_rows / batch_size) / accumulate_grad_batches)``.

    Lightning also steps on an epoch's last batch when the accumulation window is incomplete.
    """
    return math.ceil(math.ceil(n_rows / batch_size) / accumulate_grad_batches)


def _tensors(
    features: NDArray[np.float32], labels: NDArray[np.int64], *, index: bool = False
) -> TensorDataset:
    # np.require copies only arrays torch cannot share (read-only or non-contiguous ones).
    tensors = [
        torch.from_numpy(np.require(features, requirements=["C", "W"])),
        torch.from_numpy(np.require(labels, requirements=["C", "W"])),
    ]
    if index:
        tensors.append(torch.arange(len(labels)))
    return TensorDataset(*tensors)


class ShardSampler(Sampler[int]):
    """Row order of one of ``world_size`` processes: every ``world_size``-th row of the epoch's order.

    The epoch's order is ``torch.randperm(n, generator=generator)`` (a new permutation per pass, the
    generator's state carrying over) or ``0..n-1`` without a generator. It is padded to a multiple of
    ``world_size`` by repeating its first rows (as ``torch.utils.data.DistributedSampler`` pads), then
    process ``rank`` takes positions ``rank, rank + world_size, ...``; so with a per-process batch of
    ``B / world_size`` the processes' k-th batches together hold exactly the rows of the single-process
    k-th batch of size ``B``. With ``world_size == 1`` and a generator it yields, and draws from the
    generator, exactly what ``RandomSampler(generator=generator)`` does, so single-process training is
    unchanged by it.
    """

    def __init__(
        self, n: int, *, rank: int = 0, world_size: int = 1, generator: torch.Generator | None = None
    ) -> None:
        if n < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need n >= 1 and 0 <= rank < world_size, got {n}, {rank}, {world_size}.")
        self.n, self.rank, self.world_size, self.generator = n, rank, world_size, generator
        self.num_samples = math.ceil(n / world_size)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.n)) if self.generator is None else self.epoch_order()
        total = self.num_samples * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        yield from order[self.rank :: self.world_size]
        if self.generator is not None:
            # RandomSampler draws one more permutation (and yields none of it) when it is exhausted; doing
            # the same keeps the generator's stream, hence every later epoch's order, identical to it.
            torch.randperm(self.n, generator=self.generator)

    def epoch_order(self) -> list[int]:
        """One pass's rows (a subclass may draw them otherwise: :mod:`roadwork.train.sampling`)."""
        return torch.randperm(self.n, generator=self.generator).tolist()


class FeatureDataModule(pl.LightningDataModule):
    """Batches of ``(features [B, V, D], labels [B])`` from in-memory feature sets; no worker processes.

    Training batches are reshuffled every epoch by :attr:`generator`, seeded once with ``seed`` (its state
    is part of a resume checkpoint); validation batches
    ``(features, labels, row index)`` keep row order. Under a multi-process strategy each process gets its
    :class:`ShardSampler` shard and ``batch_size / world_size`` rows per batch (``batch_size`` is the
    global batch; it must be divisible by the world size).
    """

    def __init__(
        self,
        train: FeatureSet,
        val_select: FeatureSet,
        *,
        batch_size: int,
        seed: int,
        sample_weights: NDArray[np.float64] | None = None,
    ) -> None:
        super().__init__()
        self._weights = sample_weights  # None: a permutation per epoch; else weighted draws
        self._train = _tensors(train.features, train.labels)
        self._val = _tensors(val_select.features, val_select.labels, index=True)
        self._batch_size = batch_size
        self._seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _shard(self) -> tuple[int, int, int]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if self._batch_size % world:
            raise ValueError(
                f"HeadTrainConfig.batch_size={self._batch_size} is the global batch and must be divisible "
                f"by the number of processes ({world})."
            )
        return rank, world, self._batch_size // world

    def train_dataloader(self) -> DataLoader:
        rank, world, batch_size = self._shard()
        sampler = ShardSampler(len(self._train), rank=rank, world_size=world, generator=self.generator)
        if self._weights is not None:
            from roadwork.train.sampling import WeightedShardSampler  # it subclasses ShardSampler

            sampler = WeightedShardSampler(
                self._weights, rank=rank, world_size=world, generator=self.generator
            )
        # The loader draws its (unused, no workers) base seed from the same generator, as shuffle=True does.
        return DataLoader(self._train, batch_size=batch_size, sampler=sampler, generator=self.generator)

    def val_dataloader(self) -> DataLoader:
        rank, world, batch_size = self._shard()
        sampler = ShardSampler(len(self._val), rank=rank, world_size=world)
        return DataLoader(self._val, batch_size=batch_size, sampler=sampler)
