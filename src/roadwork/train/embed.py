"""The features of stored images' validator renders through the one inference path (the embed stage's step).

:func:`embed_images` reads or makes each render's bytes (:mod:`roadwork.data.render`) and sends them through
:func:`roadwork.models.inference.embed_inputs`, whose feature cache is keyed by the bytes themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from roadwork.data.render import Render, RenderStore, rendered_inputs
from roadwork.models.backbone import Backbone
from roadwork.models.inference import EmbedStats, FeatureCache, ViewSpec, embed_inputs

__all__ = ["embed_images"]


def embed_images(
    backbone: Backbone,
    paths: Sequence[Path],
    sha256: Sequence[str],
    *,
    render: Render,
    spec: ViewSpec,
    cache: FeatureCache,
    store: RenderStore,
    flip: bool = False,
    batch_size: int = 32,
    show_progress: bool = True,
    desc: str = "embed",
    precision: str = "32",
) -> tuple[NDArray[np.float32], EmbedStats]:
    """Features ``float32 [N, V, D]`` of ``render`` of the stored images at ``paths`` (ids ``sha256``).

    The rendered bytes (:class:`RenderStore`) go through :func:`roadwork.models.inference.embed_inputs`,
    the one inference path, with ``cache`` keyed by those bytes: cached features are read back, the rest
    computed batch by batch (an interrupted call loses at most one batch).

    Raises:
        ValueError: ``paths`` and ``sha256`` differ in length, a digest is malformed, ``batch_size`` < 1.
        FileNotFoundError: an image is missing (named).
    """
    inputs = rendered_inputs(paths, sha256, render, store)
    return embed_inputs(
        backbone,
        inputs,
        spec=spec,
        flip=flip,
        cache=cache,
        batch_size=batch_size,
        precision=precision,
        desc=f"{desc} [{render.key}]",
        show_progress=show_progress,
    )
