"""Crash-safe resume of head training: interrupt (exception or SIGKILL), resume, byte-identical outputs.

Run as a script (``python tests/test_head_resume.py OUT_DIR CHECKPOINT_DIR``) this module trains the
SIGKILL test's run, slowed down after every epoch so that the test can kill it mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image
from safetensors import safe_open

from roadwork.data.preprocess import TrainAugment
from roadwork.models.backbone import load_backbone
from roadwork.train.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    _decode,
    _encode,
    load_resume_state,
    read_checkpoint,
    write_checkpoint,
)
from roadwork.train.finetune import FINETUNE_CHECKPOINT_FILE, FinetuneConfig, finetune
from roadwork.train.head import CHECKPOINT_FILE, FitResult, fit_head
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureSet

OUTPUTS = ("head.safetensors", "head.json", "history.csv")
# 100 train rows in batches of 16 -> 7 optimizer steps per epoch (the last batch has 4 rows).
TINY: dict[str, Any] = {"lr": 0.05, "max_epochs": 5, "batch_size": 16, "warmup_epochs": 0.5}
CONFIGS: dict[str, dict[str, Any]] = {
    "adamw_cosine": {},
    # EMA, dropout (global RNG), an MLP head and early stopping that never fires within 5 epochs
    "ema_dropout_mlp": {"ema_decay": 0.7, "dropout": 0.3, "head": "mlp", "mlp_hidden": 8},
    # SGD momentum, OneCycleLR, accumulation, clipping, bf16 autocast, attention pooling
    "sgd_onecycle_bf16": {
        "optimizer": "sgd",
        "schedule": "onecycle",
        "warmup_epochs": 1.0,
        "batch_size": 10,
        "accumulate_grad_batches": 3,
        "gradient_clip_val": 0.5,
        "precision": "bf16-mixed",
        "aggregation": "attention",
        "dropout": 0.2,
    },
}
SIGKILL_RUN: dict[str, Any] = {"ema_decay": 0.5, "dropout": 0.3, "max_epochs": 8}
SLOW_EPOCH_S = 0.6  # the SIGKILL run's pause after every epoch


def make_split(seed: int, n: int, *, positive_rate: float = 0.7, prefix: str = "img") -> FeatureSet:
    """Linearly separable 3-view, 6-dim features (as in test_head_training)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    labels[:2] = [0, 1]
    features = rng.normal(size=(n, 3, 6)).astype(np.float32)
    features[:, :, 0] += 2.0 * (2 * labels[:, None] - 1)
    return FeatureSet(features, labels, np.array([f"{prefix}{i:04d}" for i in range(n)]))


def plateau_val(n: int = 40) -> FeatureSet:
    """All-zero features: every epoch has val MCC 0, so epoch 0 stays best and early stopping fires."""
    return FeatureSet(
        np.zeros((n, 3, 6), np.float32), np.arange(n) % 2, np.array([f"val{i:04d}" for i in range(n)])
    )


TRAIN = make_split(1, 100)
VAL = make_split(2, 40, prefix="val", positive_rate=0.5)


class Interrupt(pl.Callback):
    """Presses Ctrl+C (raises KeyboardInterrupt) as epoch ``at`` starts, i.e. after epochs 0..at-1."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if pl_module.epoch == self.at:
            raise KeyboardInterrupt


class EpochCounter(pl.Callback):
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.epochs.append(pl_module.epoch)


class SlowEpochs(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        time.sleep(SLOW_EPOCH_S)


class CaptureLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("fit_head should log metrics only")


def fit(
    out: Path,
    checkpoint_dir: Path | None = None,
    *,
    train: FeatureSet = TRAIN,
    val: FeatureSet = VAL,
    callbacks: tuple[pl.Callback, ...] = (),
    loggers: tuple[Logger, ...] = (),
    **overrides: Any,
) -> FitResult:
    cfg = HeadTrainConfig(**{**TINY, **overrides})
    return fit_head(
        train,
        val,
        cfg,
        out_dir=out,
        checkpoint_dir=checkpoint_dir,
        callbacks=callbacks,
        loggers=loggers,
        show_progress=False,
    )


def interrupted(out: Path, checkpoint_dir: Path, at: int, **kwargs: Any) -> None:
    """A run stopped by Ctrl+C before epoch ``at``: Lightning shuts down and calls sys.exit(1)."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            fit(out, checkpoint_dir, callbacks=(Interrupt(at),), **kwargs)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl+C while shutting down


def outputs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def epochs_done(checkpoint_dir: Path) -> int:
    return int(read_checkpoint(checkpoint_dir / CHECKPOINT_FILE)["epochs_done"])


# ------------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("config", "at"),
    [("adamw_cosine", 1), ("adamw_cosine", 3), ("ema_dropout_mlp", 2), ("sgd_onecycle_bf16", 2)],
)
def test_interrupted_run_resumes_to_byte_identical_outputs(tmp_path: Path, config: str, at: int) -> None:
    overrides = CONFIGS[config]
    reference = fit(tmp_path / "reference", **overrides)  # uninterrupted, no checkpoint at all
    interrupted(tmp_path / "run", tmp_path / "ckpt", at, **overrides)
    assert epochs_done(tmp_path / "ckpt") == at
    assert not any((tmp_path / "run" / name).exists() for name in OUTPUTS)

    counter = EpochCounter()
    resumed = fit(tmp_path / "run", tmp_path / "ckpt", callbacks=(counter,), **overrides)
    assert counter.epochs == list(range(at, TINY["max_epochs"]))  # continued, not restarted
    assert resumed.resumed_epochs == at
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")
    assert (resumed.best_epoch, resumed.best_metric, resumed.epochs_run, resumed.optimizer_steps) == (
        reference.best_epoch,
        reference.best_metric,
        reference.epochs_run,
        reference.optimizer_steps,
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [CHECKPOINT_FILE]  # no temp file left


def test_early_stopping_and_ema_resume_and_a_finished_checkpoint_only_rewrites(tmp_path: Path) -> None:
    # Plateau: epoch 0 stays best, patience 2 stops after epoch 2 (3 of 6 epochs); EMA weights of epoch 0.
    kwargs: dict[str, Any] = {
        "val": plateau_val(),
        "max_epochs": 6,
        "early_stopping_patience": 2,
        "ema_decay": 0.6,
        "dropout": 0.2,
    }
    reference = fit(tmp_path / "reference", **kwargs)
    assert (reference.best_epoch, reference.epochs_run) == (0, 3)
    interrupted(tmp_path / "run", tmp_path / "ckpt", 2, **kwargs)  # counter at 1 of 2
    counter = EpochCounter()
    resumed = fit(tmp_path / "run", tmp_path / "ckpt", callbacks=(counter,), **kwargs)
    assert counter.epochs == [2]
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")

    # The checkpoint now records the stop: a repeated call trains nothing and writes the same bytes.
    (tmp_path / "run" / "head.json").unlink()
    counter = EpochCounter()
    again = fit(tmp_path / "run", tmp_path / "ckpt", callbacks=(counter,), **kwargs)
    assert counter.epochs == []
    assert (again.resumed_epochs, again.epochs_run, again.optimizer_steps) == (3, 3, resumed.optimizer_steps)
    assert outputs(tmp_path / "run") == outputs(tmp_path / "reference")


def test_sigkill_mid_run_then_resume_gives_identical_outputs(tmp_path: Path) -> None:
    out, ckpt, log = tmp_path / "run", tmp_path / "ckpt", tmp_path / "child.log"
    with log.open("wb") as stderr:  # a file, not a pipe: a full pipe would block the child
        child = subprocess.Popen(
            [sys.executable, __file__, str(out), str(ckpt)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 300
        while not (ckpt / CHECKPOINT_FILE).exists() or epochs_done(ckpt) < 2:
            assert child.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the child wrote no checkpoint in time"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    done = epochs_done(ckpt)
    assert 2 <= done < SIGKILL_RUN["max_epochs"]  # killed mid-run, not after it
    assert not any((out / name).exists() for name in OUTPUTS)

    counter = EpochCounter()
    resumed = fit(out, ckpt, callbacks=(counter,), **SIGKILL_RUN)
    assert resumed.resumed_epochs == done
    assert counter.epochs == list(range(done, SIGKILL_RUN["max_epochs"]))
    fit(tmp_path / "reference", **SIGKILL_RUN)
    assert outputs(out) == outputs(tmp_path / "reference")


# ------------------------------------------------------------------------------------------ stale or broken


@pytest.mark.parametrize("change", ["config", "train_features", "train_labels", "val_features"])
def test_changed_config_or_data_ignores_the_stale_checkpoint(tmp_path: Path, change: str) -> None:
    interrupted(tmp_path / "old", tmp_path / "ckpt", 2)
    before = read_checkpoint(tmp_path / "ckpt" / CHECKPOINT_FILE)["fingerprint"]
    kwargs: dict[str, Any] = {}
    if change == "config":
        kwargs["lr"] = 0.02
    elif change == "train_features":
        features = TRAIN.features.copy()
        features[5, 1, 3] += 1e-3
        kwargs["train"] = FeatureSet(features, TRAIN.labels, TRAIN.ids)
    elif change == "train_labels":
        labels = TRAIN.labels.copy()
        labels[10] = 1 - labels[10]
        kwargs["train"] = FeatureSet(TRAIN.features, labels, TRAIN.ids)
    else:
        kwargs["val"] = FeatureSet(VAL.features[:-1], VAL.labels[:-1], VAL.ids[:-1])
    counter = EpochCounter()
    result = fit(tmp_path / "new", tmp_path / "ckpt", callbacks=(counter,), **kwargs)
    assert result.resumed_epochs == 0
    assert counter.epochs == list(range(TINY["max_epochs"]))
    fit(tmp_path / "fresh", **kwargs)
    assert outputs(tmp_path / "new") == outputs(tmp_path / "fresh")
    after = read_checkpoint(tmp_path / "ckpt" / CHECKPOINT_FILE)
    assert after["fingerprint"] != before  # replaced by the new run's
    assert after["epochs_done"] == TINY["max_epochs"]


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors", "other_format"])
def test_unreadable_checkpoint_is_ignored(tmp_path: Path, damage: str) -> None:
    interrupted(tmp_path / "old", tmp_path / "ckpt", 1)
    path = tmp_path / "ckpt" / CHECKPOINT_FILE
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "not_safetensors":
        path.write_bytes(b"\x80\x04K\x01.")  # a pickle
    else:
        state = read_checkpoint(path)
        write_checkpoint(path, {**state, "format_version": 999})
    result = fit(tmp_path / "new", tmp_path / "ckpt")
    assert result.resumed_epochs == 0
    fit(tmp_path / "fresh")
    assert outputs(tmp_path / "new") == outputs(tmp_path / "fresh")


# ------------------------------------------------------------------------------------------------- format


def test_checkpoint_is_safetensors_with_json_state_and_no_pickle(tmp_path: Path) -> None:
    interrupted(tmp_path / "run", tmp_path / "ckpt", 2, ema_decay=0.5)
    path = tmp_path / "ckpt" / CHECKPOINT_FILE
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: 8-byte length, JSON header, raw tensor bytes
    assert set(header["__metadata__"]) == {"format", "state"}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert {
        "state/module/model/classifier.1.weight",
        "state/module/ema/classifier.1.weight",
        "state/module/best_state/classifier.1.weight",
        "state/optimizers/0/state/0/exp_avg",
        "state/rng/torch",
        "state/rng/loader",
    } <= keys

    state = read_checkpoint(path)
    assert (state["epochs_done"], state["optimizer_steps"]) == (2, 14)
    module = state["module"]
    assert [row["epoch"] for row in module["history"]] == [0.0, 1.0]
    assert module["ema"].keys() == module["model"].keys() == module["best_state"].keys()
    optimizer = state["optimizers"][0]
    assert set(optimizer["state"]) == {0, 1}  # int keys survive the JSON
    assert isinstance(optimizer["param_groups"][0]["betas"], tuple)
    assert state["schedulers"][0]["last_epoch"] == 14


def test_strict_resume_refuses_what_the_lenient_resume_ignores(tmp_path: Path) -> None:
    """Head training and finetuning ignore a stale or unreadable checkpoint; ExPLoRA (strict) refuses it."""
    path = tmp_path / "checkpoint.safetensors"
    mine = {"config": {"lr": 0.1}, "images": "abc"}
    assert load_resume_state(path, mine, strict=True) is None  # nothing there: a fresh start either way
    write_checkpoint(path, {"format_version": CHECKPOINT_FORMAT_VERSION, "fingerprint": mine, "step": 3})
    assert load_resume_state(path, mine, strict=True)["step"] == 3  # type: ignore[index]
    other = {**mine, "config": {"lr": 0.2}}
    assert load_resume_state(path, other) is None
    with pytest.raises(ValueError, match=r"different run \(config differs\)\. Delete"):
        load_resume_state(path, other, strict=True)
    write_checkpoint(path, {"format_version": 999, "fingerprint": mine})
    assert load_resume_state(path, mine) is None
    with pytest.raises(ValueError, match="checkpoint format 999"):
        load_resume_state(path, mine, strict=True)
    path.write_bytes(b"not a checkpoint")
    assert load_resume_state(path, mine) is None
    with pytest.raises(ValueError, match=r"cannot resume from .*not a safetensors file"):
        load_resume_state(path, mine, strict=True)


def test_state_round_trip_keeps_types() -> None:
    state = {
        "ints": {0: torch.arange(3), 7: {"nested": (1, 2.5, None)}},
        "tags": {"__tensor__": "a plain string key"},
        "floats": [-float("inf"), 0.1, 1e-300],
        "flag": True,
    }
    tensors: dict[str, torch.Tensor] = {}
    encoded = json.loads(json.dumps(_encode(state, tensors, "s")))
    decoded = _decode(encoded, tensors)
    assert decoded["ints"][7] == {"nested": (1, 2.5, None)}
    assert torch.equal(decoded["ints"][0], torch.arange(3))
    assert decoded["tags"] == {"__tensor__": "a plain string key"}
    assert decoded["floats"] == [-float("inf"), 0.1, 1e-300]
    assert decoded["flag"] is True


def test_resumed_run_replays_restored_epochs_to_the_loggers(tmp_path: Path) -> None:
    full = CaptureLogger()
    fit(tmp_path / "reference", loggers=(full,))
    interrupted(tmp_path / "run", tmp_path / "ckpt", 2)
    resumed = CaptureLogger()
    fit(tmp_path / "run", tmp_path / "ckpt", loggers=(resumed,))
    assert resumed.calls == full.calls
    assert [step for step, _ in resumed.calls] == list(range(TINY["max_epochs"]))


def test_checkpoint_does_not_change_training(tmp_path: Path) -> None:
    plain = fit(tmp_path / "plain", dropout=0.3)
    with_checkpoint = fit(tmp_path / "ckpt_run", tmp_path / "ckpt", dropout=0.3)
    assert outputs(tmp_path / "plain") == outputs(tmp_path / "ckpt_run")
    assert plain.checkpoint_path is None
    assert with_checkpoint.checkpoint_path == tmp_path / "ckpt" / CHECKPOINT_FILE


# ----------------------------------------------------------------------------------------------- finetune


def toy_images(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """32x32 RGB: a solid random colour (label 0) or the same with bright stripes (label 1)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        pixels = np.empty((32, 32, 3), np.uint8)
        pixels[:] = rng.integers(0, 160, 3)
        if i % 2:
            pixels[::4] = 255
        images.append(Image.fromarray(pixels))
    return images, np.arange(n) % 2


@pytest.mark.slow  # ~25 s: two finetune runs, one interrupted
def test_finetune_resumes_to_byte_identical_outputs(tmp_path: Path) -> None:
    """Same mechanism in train.mode=finetune: adapters (DoRA), head, EMA, dropout and augmentation."""
    tiny = load_backbone("tiny")
    (train, train_y), (val, val_y) = toy_images(16, 0), toy_images(8, 1)
    head_cfg = HeadTrainConfig(
        max_epochs=3, batch_size=8, warmup_epochs=0.0, lr=1e-2, ema_decay=0.5, dropout=0.2
    )
    ft_cfg = FinetuneConfig(use_dora=True, lora_rank=2, lora_alpha=4, backbone_lr=1e-3, lora_dropout=0.1)
    kwargs: dict[str, Any] = {
        "augment": TrainAugment((0.5, 0.5, 0.0, 0.0)),
        "show_progress": False,
        "accelerator": "cpu",
    }
    args = (tiny, train, train_y, val, val_y, head_cfg, ft_cfg)
    finetune(*args, out_dir=tmp_path / "reference", **kwargs)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            finetune(
                *args,
                out_dir=tmp_path / "run",
                checkpoint_dir=tmp_path / "ckpt",
                callbacks=[Interrupt(1)],
                **kwargs,
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    state = read_checkpoint(tmp_path / "ckpt" / FINETUNE_CHECKPOINT_FILE)
    assert state["epochs_done"] == 1
    assert all("lora_" in k or k.startswith("head.") for k in state["module"]["model"])  # no frozen weights

    counter = EpochCounter()
    result = finetune(
        *args, out_dir=tmp_path / "run", checkpoint_dir=tmp_path / "ckpt", callbacks=[counter], **kwargs
    )
    assert (result.resumed_epochs, counter.epochs) == (1, [1, 2])
    reference = sorted(p.relative_to(tmp_path / "reference") for p in (tmp_path / "reference").rglob("*"))
    assert reference == sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*"))
    for name in reference:
        if (tmp_path / "reference" / name).is_file():
            assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), (
                name
            )


if __name__ == "__main__":  # the SIGKILL test's child: a slow run that the test kills mid-way
    fit(Path(sys.argv[1]), Path(sys.argv[2]), callbacks=(SlowEpochs(),), **SIGKILL_RUN)
