"""How ``evaluate`` and ``promote`` score a model the way the validator does, on the same renders.

Both render every val_test image as the validator would send it
(:func:`roadwork.stages.embed.evaluation_renders`: the level-0 JPEG plus ``evaluate.renders_per_level``
renders at each of levels 1-3, seeded by ``evaluate.seed``), pass
exactly those bytes through a model, and score the decisions with :func:`headline`, so the figure
``promote`` reports for a model is the figure ``evaluate`` reported for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from roadwork.config import RoadworkConfig

PREDICTION_KEYS = ("path", "sha256", "label", "group")


def render_predictions(
    frame: pd.DataFrame, renders: list[Any], predict: Callable[[Any], pd.DataFrame]
) -> pd.DataFrame:
    """One row per (image, render): ``frame``'s keys, ``level``, ``render`` and what ``predict(render)``
    returns for the images of ``frame`` in order (at least ``decision``; a failed input has decision -1)."""
    blocks = []
    for render in renders:
        answers = predict(render).reset_index(drop=True)
        if len(answers) != len(frame):
            raise RuntimeError(f"the model answered {len(answers)} rows for {len(frame)} images")
        keys = frame[list(PREDICTION_KEYS)].reset_index(drop=True)
        blocks.append(pd.concat([keys.assign(level=render.level, render=render.key), answers], axis=1))
    return pd.concat(blocks, ignore_index=True)


def tolerant(stat_fn: Callable[..., float]) -> Callable[..., float]:
    """``stat_fn`` returning NaN where it raises ValueError: a bootstrap resample that drew images of one
    label only has no validator figure; it is left out of the interval instead of failing."""

    def fn(**kwargs: Any) -> float:
        try:
            return float(stat_fn(**kwargs))
        except ValueError:
            return float("nan")

    return fn


def scored_decisions(predictions: pd.DataFrame) -> np.ndarray:
    """Decisions with every failed answer (-1) counted as wrong: the validator scores no answer as a miss."""
    decision = predictions["decision"].to_numpy()
    label = predictions["label"].to_numpy()
    return np.where(decision < 0, 1 - label, decision).astype(int)


def headline(predictions: pd.DataFrame, cfg: RoadworkConfig, *, decision: np.ndarray | None = None) -> dict:
    """The validator's figures of one model's render predictions: ``validator_mcc``, ``validator_accuracy``,
    ``predicted_positive_rate``, per-level MCC / accuracy, and ``expected_reward`` (its reward formula over
    ``evaluate.reward_streams`` simulated 100-challenge streams drawn 50/50 by label, seeded by
    ``evaluate.seed``)."""
    from roadwork import metrics as M

    d = scored_decisions(predictions) if decision is None else decision
    y, level = predictions["label"].to_numpy(), predictions["level"].to_numpy()
    groups = predictions["sha256"].to_numpy()
    out = dict(M.validator_metrics(y, d, level, groups=groups))
    out["expected_reward"] = M.expected_reward(
        y, d, level, groups=groups, n_streams=cfg.evaluate.reward_streams, seed=cfg.evaluate.seed
    )
    return out
