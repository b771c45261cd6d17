"""Images and labels for :func:`~roadwork.train.finetune.finetune`: checks, datasets, the epoch order, and
the description of the images and augmentation that its checkpoint fingerprint covers.

Index ``k`` of an :class:`ImageDataset` stands for image ``k % N`` in epoch ``k // N``, as
:class:`EpochSampler` yields it, so augmentation and order are functions of (seed, epoch, image) whatever
the batch order or worker process.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch.utils.data import Dataset, Sampler

from roadwork.data.images import open_image, pillow_pixel_limit
from roadwork.data.preprocess import PreprocessConfig, to_tensor_batch

__all__ = [
    "EpochSampler",
    "ImageDataset",
    "ImageInput",
    "check_images",
    "check_labels",
    "describe_augment",
    "hash_images",
]

ImageInput = Image.Image | str | os.PathLike
"""A training or validation image: an RGB ``PIL.Image.Image`` in memory, or the path of an image file
(decoded on every access with :func:`roadwork.data.images.open_image`, converted to RGB)."""


def load_image(item: ImageInput) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    limit = pillow_pixel_limit()
    return open_image(Path(item), max_pixels=limit if limit is not None else 1 << 40)


class ImageDataset(Dataset):
    """``(pixels [3, S, S] float32, label int64)`` per image; training copies are augmented per epoch.

    Index ``k`` stands for image ``k % N`` in epoch ``k // N`` (see :class:`EpochSampler`); the augmentation
    draws from ``np.random.default_rng([seed, epoch, image])``, so it is reproducible and independent of
    batch order and of which worker process loads the item.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        labels: NDArray[np.int64],
        preprocess: PreprocessConfig,
        *,
        augment: Callable[[Image.Image, np.random.Generator], Image.Image] | None,
        seed: int,
    ) -> None:
        self._images = list(images)
        self._labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        self._preprocess = preprocess
        self._augment = augment
        self._seed = seed

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(int(key), len(self._images))
        image = load_image(self._images[index])
        if self._augment is not None:
            image = self._augment(image, np.random.default_rng([self._seed, epoch, index]))
            if not isinstance(image, Image.Image) or image.mode != "RGB":
                raise TypeError(
                    f"augment must return an RGB PIL image, got {type(image).__name__} "
                    f"{getattr(image, 'mode', '')!s} for image {index}."
                )
        return to_tensor_batch([image], self._preprocess)[0], self._labels[index]


class EpochSampler(Sampler[int]):
    """Yields ``epoch * N + i`` over the images ``i``; shuffled by ``default_rng([seed, epoch])`` if asked.

    Lightning calls :meth:`set_epoch` at the start of every training epoch with its own count, which restarts
    at 0 on a resumed run; ``epoch_offset`` (the epochs restored from a checkpoint) is added to it.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool) -> None:
        self._n, self._seed, self._shuffle = n, seed, shuffle
        self.epoch = 0
        self.epoch_offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.epoch_offset + int(epoch)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[int]:
        order = (
            np.random.default_rng([self._seed, self.epoch]).permutation(self._n)
            if self._shuffle
            else np.arange(self._n)
        )
        return iter((self.epoch * self._n + order).tolist())


def check_images(images: Sequence[ImageInput], name: str) -> None:
    if isinstance(images, (str, os.PathLike, Image.Image)) or not isinstance(images, Sequence):
        raise TypeError(
            f"{name} must be a sequence of PIL images or image paths, got {type(images).__name__}."
        )
    if len(images) == 0:
        raise ValueError(f"{name} is empty.")
    for k, item in enumerate(images):
        if isinstance(item, Image.Image):
            if item.mode != "RGB":
                raise ValueError(
                    f"{name}[{k}] has mode {item.mode!r}; expected 'RGB' (decode with "
                    "roadwork.data.images.open_image, which converts every mode to RGB)."
                )
        elif isinstance(item, (str, os.PathLike)):
            if not Path(item).is_file():
                raise FileNotFoundError(f"{name}[{k}]: {item} is not a file.")
        else:
            raise TypeError(f"{name}[{k}] must be a PIL image or a path, got {type(item).__name__}.")


def check_labels(labels: Any, n: int, name: str) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match its images, got {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{name} must hold integers 0/1, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be 0 or 1, found {sorted(set(array.tolist()) - {0, 1})[:5]}.")
    missing = sorted({0, 1} - set(array.tolist()))
    if missing:
        raise ValueError(
            f"{name} has no example of class {missing[0]}; training and its MCC-based selection need both "
            "classes in train and val_select."
        )
    return array


def describe_augment(augment: Callable[..., Any] | None) -> str | None:
    """A stable description of ``augment`` for the checkpoint fingerprint (never a memory address)."""
    if augment is None:
        return None
    if inspect.isfunction(augment) or inspect.ismethod(augment):
        return f"{augment.__module__}.{augment.__qualname__}"
    text = repr(augment)
    if " at 0x" in text:
        kind = type(augment)
        return f"{kind.__module__}.{kind.__qualname__}"
    return text


def hash_images(h: Any, images: Sequence[ImageInput]) -> None:
    for item in images:
        if isinstance(item, Image.Image):
            h.update(f"image|{item.mode}|{item.size}|".encode())
            h.update(item.tobytes())
        else:
            path = Path(item).resolve()
            stat = path.stat()
            h.update(f"file|{path}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
