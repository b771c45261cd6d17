"""Benchmark: head training on cached features vs the naive loop that runs the frozen backbone every epoch.

Data (seeded): ``--n`` synthetic street scenes (:func:`roadwork.data.synth.generate_dataset`, no planted
copies) drawn into a temporary folder and decoded once (decoding is not timed: both ways need it). A
stratified, seeded split puts ``--val-frac`` of each class into val_select and the rest into train.

Ours (the design's "embed once"): preprocess every image's views (the picture, or with ``--views 10`` the
picture and its 3x3 tiles, cut by :func:`roadwork.models.inference.image_views`) with :func:`to_tensor_batch`,
run the frozen backbone once under ``torch.no_grad()`` in chunks, build the :class:`FeatureSet` s, then
:func:`roadwork.train.head.fit_head`. (The embed stage,
:func:`roadwork.models.inference.embed_inputs`, adds the validator's level-0 rendering and the on-disk feature
cache; neither changes what is compared here.)

Naive (the earlier pipeline's way): preprocess every image once and keep the *pixel* tensors in memory
(so the naive side is not charged for re-decoding or re-resizing), then train with the frozen backbone
run on the pixel batch inside every training step and every validation pass of every epoch.

Why the two are comparable: the naive side reuses the library's own training code and changes only the
data path. It feeds the library's :class:`FeatureDataModule` (same batch size and seed as ``fit_head``)
with "features" that are just row indices, so its batches hold the same rows in the same order as ours by
construction. ``NaiveHeadModule`` subclasses :class:`roadwork.train.head.HeadLightningModule` and overrides
just ``training_step`` / ``validation_step``: look up the rows' pixels, run the backbone to get ``[B, V, D]``
features, and call the parent's step with them in place of the indices, so the loss, optimiser, lr
schedule, dropout, validation, MCC selection and early-stopping logic are the library's. ``naive_fit``
copies ``fit_head``'s single-process set-up: the same ``torch.manual_seed(cfg.seed)`` before building the
same :class:`HeadModel` (so the same initial weights), the same class weights and the same Trainer
arguments (no checkpointing, no loggers, one CPU process). Both use
one :class:`HeadTrainConfig` with ``early_stopping_patience = max_epochs`` (every epoch runs on both
sides) and ``precision="32"`` (so the backbone never runs under autocast). The frozen backbone stays in
eval mode (no dropout, fixed batch-norm statistics), so a feature depends only on its image; the features
the head sees differ between the two ways only by float summation order across batch compositions
(~1e-6), hence the val_select MCCs agree (in practice exactly).

Timing is end to end from decoded images: ours = preprocessing + the one-off embedding + ``fit_head``
(which also writes its three small files); naive = preprocessing + the Trainer fit. One warm-up forward
runs before either timer starts. With preprocessing ``p`` and one backbone pass ``f`` over all images, the
ratio is about ``(p + epochs * f) / (p + f)``: it grows with the epoch count, and the one-off preprocessing,
which both sides pay once, bounds it. On the 2-core development CPU ``p`` (~40 ms per synthetic image) is
larger than ``f`` (~30 ms per image for EfficientNet-Lite0, more under load), so 20 epochs give only ~9-15x;
the default is the pipeline's own ``train.max_epochs`` (30, params.yaml), which takes ~3 minutes on
120 images on a quiet machine (9-13 minutes when other jobs load it). A naive loop that also re-ran the
preprocessing every epoch (an image DataLoader) would be slower still, by ~``epochs``; this one is given
the pixel cache on purpose so that the ratio measures the feature cache alone. ``--backbone tiny`` is a
quick functional check only: its forward is so cheap that the shared preprocessing bounds the ratio
(~2-6x), so it misses the target by construction.

Prints both times, the ratio and both val_select MCCs; exits 1 when the ratio is below ``--target`` (10)
or the best val_select MCCs differ by more than ``--mcc-tol`` (0.02).

Usage: python bench/head_training.py [--backbone efficientnet_lite0|tiny] [--n 120] [--epochs 30]
       [--views 1|10] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadwork.data.images import open_image
from roadwork.data.preprocess import to_tensor_batch
from roadwork.data.synth import CLASS_FOLDERS, generate_dataset
from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.head import HeadModel
from roadwork.models.inference import ViewSpec, image_views
from roadwork.train.head import fit_head
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureDataModule, FeatureSet, optimizer_steps_per_epoch
from roadwork.train.head_module import HeadLightningModule
from roadwork.train.losses import inverse_frequency_weights
from roadwork.train.trainer import head_trainer

MAX_PIXELS = 4096 * 4096


def draw_data(out_dir: Path, n: int, seed: int) -> tuple[list, np.ndarray, np.ndarray]:
    """Draw ``n`` scenes, decode them; returns images, labels and ids (relative paths), sorted by path."""
    generate_dataset(out_dir, n=n, seed=seed, near_duplicate_fraction=0.0, show_progress=False)
    rows = sorted(
        (f"{folder}/{path.name}", label)
        for label, folder in CLASS_FOLDERS.items()
        for path in (out_dir / folder).glob("*.jpg")
    )
    images = [open_image(out_dir / rel, max_pixels=MAX_PIXELS) for rel, _ in rows]
    labels = np.array([label for _, label in rows], dtype=np.int64)
    ids = np.array([rel for rel, _ in rows])
    return images, labels, ids


def split_indices(labels: np.ndarray, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split: ``val_frac`` of each class (at least one item) goes to val_select."""
    rng = np.random.default_rng([seed, 1])
    train, val = [], []
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        k = max(1, round(val_frac * members.size))
        val.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def pixels_of(images: list, backbone: Backbone, views: int) -> torch.Tensor:
    """Preprocessed input ``[N, V, 3, S, S]`` (global view only, or global + 3x3 tiles)."""
    spec = ViewSpec("global") if views == 1 else ViewSpec("global+tiles", grid=3, overlap=0.25)
    size = backbone.preprocess.image_size
    flat = [view for image in images for view in image_views(image, spec)]
    return to_tensor_batch(flat, backbone.preprocess).view(len(images), spec.num_views, 3, size, size)


def embed(pixels: torch.Tensor, backbone: Backbone, chunk: int) -> np.ndarray:
    """Features ``[N, V, D]`` of ``pixels`` ``[N, V, 3, S, S]``: one no-grad forward per ``chunk`` images."""
    n, v = pixels.shape[:2]
    out = []
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = pixels[start : start + chunk]
            out.append(backbone(part.flatten(0, 1)).view(len(part), v, -1))
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------------------------- naive


def index_set(labels: np.ndarray, ids: np.ndarray) -> FeatureSet:
    """A :class:`FeatureSet` whose "features" are the row indices ``[N, 1, 1]`` (exact in float32)."""
    rows = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1)
    return FeatureSet(rows, labels, ids)


class NaiveHeadModule(HeadLightningModule):
    """:class:`HeadLightningModule` fed row indices: every training and validation step looks up the rows'
    pixels and runs the frozen backbone on them; everything else (loss, optimiser, schedule, validation,
    selection) is the parent's."""

    def __init__(
        self,
        model: HeadModel,
        cfg: HeadTrainConfig,
        *,
        backbone: Backbone,
        train_pixels: torch.Tensor,
        val_pixels: torch.Tensor,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, cfg, **kwargs)
        self.backbone = backbone  # frozen: requires_grad False, stays in eval mode
        self._train_pixels, self._val_pixels = train_pixels, val_pixels

    def _features(self, pixels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        batch = pixels[rows[:, 0, 0].long()]  # [B, V, 3, S, S]
        with torch.no_grad():
            return self.backbone(batch.flatten(0, 1)).view(batch.shape[0], batch.shape[1], -1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        features = self._features(self._train_pixels, batch[0])
        return super().training_step((features, *batch[1:]), batch_idx)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        features = self._features(self._val_pixels, batch[0])
        super().validation_step((features, *batch[1:]), batch_idx)


def naive_fit(
    backbone: Backbone,
    train: tuple[torch.Tensor, FeatureSet],
    val: tuple[torch.Tensor, FeatureSet],
    cfg: HeadTrainConfig,
) -> NaiveHeadModule:
    """``fit_head``'s single-process set-up, with row indices through the library's data module and the
    backbone-in-the-loop module. ``train`` / ``val``: pixels ``[N, V, 3, S, S]`` and their index set."""
    (train_px, train_rows), (val_px, val_rows) = train, val
    num_views, feature_dim = int(train_px.shape[1]), backbone.feature_dim
    class_weight = (
        torch.tensor(inverse_frequency_weights(train_rows.labels), dtype=torch.float32)
        if cfg.class_weights == "auto"
        else None
    )
    steps_per_epoch = optimizer_steps_per_epoch(
        len(train_rows.labels), cfg.batch_size, cfg.accumulate_grad_batches
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = HeadModel.from_config(cfg, feature_dim=feature_dim, num_views=num_views)
        module = NaiveHeadModule(
            model,
            cfg,
            backbone=backbone,
            train_pixels=train_px,
            val_pixels=val_px,
            class_weight=class_weight,
            steps_per_epoch=steps_per_epoch,
            val_labels=val_rows.labels,
        )
        data = FeatureDataModule(train_rows, val_rows, batch_size=cfg.batch_size, seed=cfg.seed)
        trainer = head_trainer(cfg, max_epochs=cfg.max_epochs, show_progress=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # the frozen backbone's modules are in eval mode on purpose
            warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
            trainer.fit(module, datamodule=data)
    return module


# -------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (default) or tiny (quick run)"
    )
    parser.add_argument("--n", type=int, default=120, help="synthetic images drawn (default 120, >= 20)")
    parser.add_argument("--val-frac", type=float, default=0.25, help="share of val_select (default 0.25)")
    parser.add_argument("--epochs", type=int, default=30, help="max_epochs of both runs (default 30)")
    parser.add_argument("--views", type=int, choices=(1, 10), default=1, help="1 global / 10 with tiles")
    parser.add_argument("--batch-size", type=int, default=64, help="head training batch size (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="head learning rate (default 3e-3)")
    parser.add_argument("--embed-chunk", type=int, default=64, help="images per embedding forward (ours)")
    parser.add_argument("--seed", type=int, default=0, help="data, split and training seed (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--target", type=float, default=10.0, help="required speed-up (default 10)")
    parser.add_argument("--mcc-tol", type=float, default=0.02, help="allowed |MCC ours - naive| (0.02)")
    args = parser.parse_args(argv)
    if args.n < 20 or not 0 < args.val_frac < 1 or args.epochs < 2 or args.batch_size < 1:
        parser.error("need --n >= 20, 0 < --val-frac < 1, --epochs >= 2, --batch-size >= 1")
    if args.embed_chunk < 1 or args.threads < 1 or args.seed < 0:
        parser.error("need --embed-chunk >= 1, --threads >= 1, --seed >= 0")

    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning vs newer torch
    cfg = HeadTrainConfig(
        max_epochs=args.epochs,
        early_stopping_patience=args.epochs,  # never stop early: both sides run every epoch
        batch_size=args.batch_size,
        lr=args.lr,
        precision="32",
        seed=args.seed,
    )
    backbone = load_backbone(args.backbone)

    with tempfile.TemporaryDirectory(prefix="bench-head-") as tmp:
        tmp_dir = Path(tmp)
        images, labels, ids = draw_data(tmp_dir / "data", args.n, args.seed)
        tr, va = split_indices(labels, args.val_frac, args.seed)
        train_images, val_images = [images[i] for i in tr], [images[i] for i in va]
        print(
            f"backbone {args.backbone} ({backbone.feature_dim}-d), {args.n} images: train {len(tr)}, "
            f"val_select {len(va)}, views {args.views}, {args.epochs} epochs, batch {args.batch_size}, "
            f"seed {args.seed}, {torch.get_num_threads()} torch threads"
        )
        with torch.no_grad():  # warm-up (oneDNN primitives, allocator), outside both timers
            backbone(pixels_of(train_images[:2], backbone, 1).flatten(0, 1))

        start = time.perf_counter()
        train_set = FeatureSet(
            embed(pixels_of(train_images, backbone, args.views), backbone, args.embed_chunk),
            labels[tr],
            ids[tr],
        )
        val_set = FeatureSet(
            embed(pixels_of(val_images, backbone, args.views), backbone, args.embed_chunk),
            labels[va],
            ids[va],
        )
        embed_s = time.perf_counter() - start
        ours = fit_head(train_set, val_set, cfg, out_dir=tmp_dir / "head", show_progress=False)
        ours_s = time.perf_counter() - start
        print(
            f"ours  (embed once + fit_head) : {ours_s:8.2f} s  (embedding {embed_s:.2f} s)  "
            f"val_select MCC {ours.best_metric:.4f} at epoch {ours.best_epoch}"
        )

        start = time.perf_counter()
        train_px = pixels_of(train_images, backbone, args.views)
        val_px = pixels_of(val_images, backbone, args.views)
        train_rows, val_rows = index_set(labels[tr], ids[tr]), index_set(labels[va], ids[va])
        naive = naive_fit(backbone, (train_px, train_rows), (val_px, val_rows), cfg)
        naive_s = time.perf_counter() - start

    print(
        f"naive (backbone every epoch)  : {naive_s:8.2f} s  "
        f"val_select MCC {naive.best_metric:.4f} at epoch {naive.best_epoch}"
    )
    ratio = naive_s / ours_s
    delta = abs(ours.best_metric - naive.best_metric)
    per_epoch = np.array([row["val_mcc"] for row in naive.history]) - ours.history["val_mcc"].to_numpy()
    print(f"speed-up                      : {ratio:8.1f}x (target >= {args.target:g}x)")
    print(
        f"|delta MCC| best {delta:.4f} (tolerance {args.mcc_tol:g}); max over epochs "
        f"{np.abs(per_epoch).max():.4f}; epochs run {ours.epochs_run} / {len(naive.history)}"
    )
    failures = []
    if ratio < args.target:
        failures.append(f"speed-up {ratio:.1f}x < {args.target:g}x")
    if delta > args.mcc_tol:
        failures.append(f"|delta MCC| {delta:.4f} > {args.mcc_tol:g}")
    print("FAIL: " + "; ".join(failures) if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
