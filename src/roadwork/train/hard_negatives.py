"""The hard-negative loop inside ``train`` (``train.hard_negatives``): mined on the train split only.

Each of ``rounds`` rounds splits the train split's dedupe groups into ``folds`` folds
(:func:`group_folds`: near-duplicates share a fold), fits a head on every fold's complement (with the
sampling weights so far, selected on val_select as the real fit is) and scores the held-out fold's
**negatives** with it: each image's out-of-fold score is its mean margin over its feature rows (its clean
render and augmented copies). :func:`select_hard_negatives` picks the ``top_fraction`` of train's
negatives with the highest scores, and their rows' sampling weight becomes ``weight`` times their
source's; the stage then fits the head it ships with those weights (:func:`fit_head`'s
``sample_weights``, a weighted sampler: no row is duplicated). An image picked in several rounds keeps
``weight`` (weights do not compound).

No image outside the train split is ever scored or weighted: the only images scored are rows of the
``train`` FeatureSet, and val_select only chooses each fold model's epoch, as in any fit. evaluate's
``hard_negatives.csv`` is a report on val_test and is never fed back.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from roadwork.train.crossfit import crossfit_margins, group_folds

REPORT_COLUMNS = ("sha256", "round", "fold", "oof_margin", "selected")


def select_hard_negatives(
    ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, top_fraction: float
) -> np.ndarray:
    """The ids of the hardest negatives: of the items with label 0, the ``ceil(top_fraction * n_negative)``
    with the highest ``scores`` (ties by id, ascending), sorted by id. Pure: one row per image.

    Raises ValueError when the arrays differ in length, ids repeat, a score is not finite or
    ``top_fraction`` is outside (0, 1].
    """
    ids, labels, scores = np.asarray(ids).astype(str), np.asarray(labels), np.asarray(scores, dtype=float)
    if not ids.shape == labels.shape == scores.shape or ids.ndim != 1:
        raise ValueError(
            f"ids, labels and scores must be 1-D of one length, got {ids.shape}, {labels.shape}, "
            f"{scores.shape}"
        )
    if np.unique(ids).size != ids.size:
        raise ValueError("ids repeat; pass one score per image")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not 0 < top_fraction <= 1:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction!r}")
    negative = labels == 0
    count = math.ceil(top_fraction * int(negative.sum()))
    frame = pd.DataFrame({"id": ids[negative], "score": scores[negative]})
    chosen = frame.sort_values(["score", "id"], ascending=[False, True]).head(count)["id"]
    return np.sort(chosen.to_numpy(dtype=str))


@dataclass(frozen=True)
class HardNegativeResult:
    """What :func:`mine_hard_negatives` did: the sampling weights of train's rows for the final fit and one
    report row per scored image and round (:data:`REPORT_COLUMNS`)."""

    weights: np.ndarray
    report: pd.DataFrame

    @property
    def selected(self) -> np.ndarray:
        """Ids up-weighted in any round, sorted."""
        return np.unique(self.report.loc[self.report["selected"], "sha256"].to_numpy(dtype=str))


def out_of_fold_margins(
    train: Any, val_select: Any, folds: np.ndarray, weights: np.ndarray, fit: Callable[..., Any]
) -> pd.DataFrame:
    """Each train negative's mean margin under the head fitted without its fold
    (:func:`~roadwork.train.crossfit.crossfit_margins`; the arguments are its own).

    Returns ``sha256``, ``fold``, ``oof_margin`` per negative image, sorted by sha256.
    """
    margins = crossfit_margins(train, val_select, folds, weights, fit)
    negative = train.labels == 0
    frame = pd.DataFrame(
        {"sha256": train.ids[negative], "fold": folds[negative].astype(int), "oof_margin": margins[negative]}
    )
    per_image = frame.groupby(["sha256", "fold"], as_index=False)["oof_margin"].mean()
    return per_image.sort_values("sha256", ignore_index=True)


def mine_hard_negatives(
    train: Any,
    val_select: Any,
    groups: np.ndarray,
    base_weights: np.ndarray,
    fit: Callable[..., Any],
    *,
    rounds: int,
    top_fraction: float,
    weight: float,
    folds: int,
    seed: int,
) -> HardNegativeResult:
    """Run ``rounds`` rounds of out-of-fold scoring and up-weighting on ``train`` (see the module docstring).

    ``groups`` gives each of train's rows its dedupe group; ``base_weights`` each row's source weight;
    ``fit`` as in :func:`out_of_fold_margins`. Rows of a selected image get ``base_weights * weight``.
    """
    fold_of_row = group_folds(groups, folds, seed, param="train.hard_negatives.folds")
    hard = np.zeros(len(train.ids), dtype=bool)
    weights = np.asarray(base_weights, dtype=np.float64)
    reports = []
    for round_ in range(rounds):
        margins = out_of_fold_margins(train, val_select, fold_of_row, weights, fit)
        negatives = np.zeros(len(margins), dtype=int)  # every scored image is a negative
        chosen = select_hard_negatives(margins["sha256"], negatives, margins["oof_margin"], top_fraction)
        hard |= np.isin(train.ids, chosen)
        weights = np.asarray(base_weights, dtype=np.float64) * np.where(hard, weight, 1.0)
        reports.append(margins.assign(round=round_, selected=margins["sha256"].isin(chosen)))
    if not reports:
        return HardNegativeResult(weights=weights, report=pd.DataFrame(columns=list(REPORT_COLUMNS)))
    return HardNegativeResult(weights, pd.concat(reports, ignore_index=True)[list(REPORT_COLUMNS)])


def head_fitter(head_cfg: Any, hardware: dict[str, Any], work_dir: Path) -> Callable[..., Any]:
    """``fit`` for :func:`mine_hard_negatives`: :func:`~roadwork.train.head.fit_head` quietly, without
    checkpoints or loggers, its files in a temporary folder under ``work_dir``."""
    from roadwork.train.head import fit_head
    from roadwork.train.sampling import sampler_weights

    def fit(part: Any, val_select: Any, sample_weights: np.ndarray) -> Any:
        with tempfile.TemporaryDirectory(dir=work_dir) as out:
            weights = sampler_weights(sample_weights)
            result = fit_head(
                part,
                val_select,
                head_cfg,
                out_dir=Path(out),
                show_progress=False,
                sample_weights=weights,
                **hardware,
            )
        return result.model

    return fit
