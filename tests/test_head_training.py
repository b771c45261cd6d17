"""Head training on cached features: learning, saving, determinism, one behaviour proof per config field."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import warnings
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf
from safetensors.torch import load_file
from sklearn.metrics import matthews_corrcoef
from sklearn.utils.class_weight import compute_class_weight

from roadwork.models.head import HeadModel, load_head, predict_logits, predict_margins
from roadwork.policy.threshold import best_mcc_threshold
from roadwork.train.head import FitResult, fit_head
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_data import FeatureSet
from roadwork.train.head_module import HISTORY_COLUMNS
from roadwork.train.losses import focal_loss, inverse_frequency_weights
from roadwork.train.trainer import head_trainer

# Small and fast: 96 train rows in batches of 16 -> 6 optimizer steps per epoch.
TINY: dict[str, Any] = {"lr": 0.05, "max_epochs": 2, "batch_size": 16, "warmup_epochs": 0.5}
N_TRAIN, N_VAL, VIEWS, DIM = 96, 40, 3, 6


def make_split(
    seed: int, n: int, *, views: int = VIEWS, dim: int = DIM, positive_rate: float = 0.7, prefix: str = "img"
) -> FeatureSet:
    """Linearly separable: feature 0 of every view is +-2 (by label) plus unit noise; the rest is noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    labels[:2] = [0, 1]
    features = rng.normal(size=(n, views, dim)).astype(np.float32)
    features[:, :, 0] += 2.0 * (2 * labels[:, None] - 1)
    return FeatureSet(features, labels, np.array([f"{prefix}{i:04d}" for i in range(n)]))


def plateau_val(n: int = N_VAL, views: int = VIEWS) -> FeatureSet:
    """All-zero features: every margin is the same, so val MCC is 0 at every epoch (a flat plateau)."""
    labels = np.arange(n) % 2
    return FeatureSet(
        np.zeros((n, views, DIM), np.float32), labels, np.array([f"val{i:04d}" for i in range(n)])
    )


def shifted_val(n: int = N_VAL) -> FeatureSet:
    """Separable but shifted by +6 on the signal feature: margin 0 calls almost everything roadwork."""
    split = make_split(7, n, prefix="val", positive_rate=0.5)
    features = split.features.copy()
    features[:, :, 0] += 6.0
    return FeatureSet(features, split.labels, split.ids)


TRAIN = make_split(1, N_TRAIN)
VAL = make_split(2, N_VAL, prefix="val", positive_rate=0.5)


class Probe(pl.Callback):
    """Records what the trainer really used: optimizer, scheduler, per-step lr and weights, forward dtypes."""

    def __init__(self) -> None:
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.class_weight: torch.Tensor | None = None
        self.lrs: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.dtypes: set[torch.dtype] = set()

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.optimizer = trainer.optimizers[0]
        self.scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.class_weight = pl_module.class_weight
        self.weights.append(_snapshot(pl_module.model))

        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training:
                self.dtypes.add(output.dtype)

        pl_module.model.classifier[-1].register_forward_hook(hook)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.weights.append(_snapshot(pl_module.model))


class CaptureLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []
        self.saves = 0

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

    def save(self) -> None:
        self.saves += 1


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit(
    tmp_path: Path,
    train: FeatureSet = TRAIN,
    val: FeatureSet = VAL,
    *,
    name: str = "run",
    callbacks: tuple[pl.Callback, ...] = (),
    loggers: tuple[Logger, ...] = (),
    **overrides: Any,
) -> FitResult:
    cfg = HeadTrainConfig(**{**TINY, **overrides})
    return fit_head(
        train, val, cfg, out_dir=tmp_path / name, callbacks=callbacks, loggers=loggers, show_progress=False
    )


def saved(result: FitResult) -> dict[str, torch.Tensor]:
    return load_file(str(result.head_path))


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ learning


@pytest.mark.parametrize("views", [1, 10])
def test_learns_linearly_separable_problem(tmp_path: Path, views: int) -> None:
    train = make_split(3, 200, views=views)
    val = make_split(4, 100, views=views, prefix="val", positive_rate=0.5)
    result = fit(tmp_path, train, val, max_epochs=4)
    margins = predict_margins(tmp_path / "run", val.features)
    assert matthews_corrcoef(val.labels, margins > 0) > 0.9
    assert result.best_metric > 0.9
    assert result.best_metric == result.history["val_mcc"].max()


def test_saved_head_equals_in_memory_module_and_what_was_evaluated(tmp_path: Path) -> None:
    result = fit(tmp_path, max_epochs=3)
    from_disk = predict_logits(tmp_path / "run", VAL.features)
    np.testing.assert_array_equal(from_disk, predict_logits(result.model, VAL.features))
    np.testing.assert_array_equal(
        predict_margins(tmp_path / "run", VAL.features), from_disk[:, 1] - from_disk[:, 0]
    )
    # The history row of the best epoch was computed on exactly these weights.
    best = result.history.iloc[result.best_epoch]
    expected_loss = F.cross_entropy(torch.from_numpy(from_disk), torch.from_numpy(VAL.labels)).item()
    assert best["val_loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert best["val_mcc"] == pytest.approx(matthews_corrcoef(VAL.labels, from_disk[:, 1] > from_disk[:, 0]))
    assert best["val_best_mcc"] == pytest.approx(
        best_mcc_threshold(VAL.labels, from_disk[:, 1] - from_disk[:, 0])[1]
    )


def test_outputs_no_pickles_and_history_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = fit(tmp_path)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "head.json",
        "head.safetensors",
        "history.csv",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no lightning_logs/ or checkpoints/
    history = pd.read_csv(result.history_path)
    assert tuple(history.columns) == HISTORY_COLUMNS
    pd.testing.assert_frame_equal(history, result.history, check_dtype=False)
    meta = json.loads(result.config_path.read_text())
    assert meta["config"] == {
        f.name: getattr(HeadTrainConfig(**TINY), f.name) for f in fields(HeadTrainConfig)
    }
    assert (meta["feature_dim"], meta["num_views"]) == (DIM, VIEWS)
    assert (meta["best_epoch"], meta["best_metric"]) == (result.best_epoch, result.best_metric)
    assert meta["inactive_fields"] == ["mlp_hidden", "attention_hidden", "focal_gamma", "momentum"]


def test_logs_every_epoch_through_the_given_loggers(tmp_path: Path) -> None:
    logger = CaptureLogger()
    result = fit(tmp_path, loggers=(logger,), max_epochs=3)
    assert [step for step, _ in logger.calls] == [0, 1, 2]
    for (_, metrics), (_, row) in zip(logger.calls, result.history.iterrows(), strict=True):
        assert metrics == pytest.approx({k: row[k] for k in HISTORY_COLUMNS if k != "epoch"})
    assert logger.saves == 1


def test_deterministic_for_a_seed_and_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fit(tmp_path, name="a", dropout=0.3)
    assert torch.equal(torch.get_rng_state(), before)
    b = fit(tmp_path, name="b", dropout=0.3)
    assert a.head_path.read_bytes() == b.head_path.read_bytes()
    pd.testing.assert_frame_equal(a.history, b.history)


# ----------------------------------------------------------------------------------------- one test per field

# field -> (overrides that make the field active, datasets, new value). The baseline is the same overrides
# with the field's default; the test demands a different trained model, history or selection.
FIELD_CHANGES: dict[str, tuple[dict[str, Any], str, Any]] = {
    "head": ({}, "default", "mlp"),
    "mlp_hidden": ({"head": "mlp"}, "default", 16),
    "feature_transform": ({}, "default", "sqrt_l2"),
    "dropout": ({}, "default", 0.5),
    "aggregation": ({}, "default", "attention"),
    "topk": ({}, "default", 1),
    "attention_hidden": ({"aggregation": "attention"}, "default", 16),
    "loss": ({}, "default", "focal"),
    "label_smoothing": ({}, "default", 0.2),
    "focal_gamma": ({"loss": "focal"}, "default", 0.5),
    "class_weights": ({}, "default", "none"),
    "optimizer": ({}, "default", "sgd"),
    "lr": ({}, "default", 0.01),
    "weight_decay": ({}, "default", 0.5),
    "momentum": ({"optimizer": "sgd"}, "default", 0.0),
    "schedule": ({}, "default", "constant"),
    "warmup_epochs": ({}, "default", 1.5),
    "max_epochs": ({}, "default", 3),
    "batch_size": ({}, "default", 32),
    "accumulate_grad_batches": ({}, "default", 2),
    "gradient_clip_val": ({}, "default", 0.01),
    "precision": ({}, "default", "bf16-mixed"),
    "ema_decay": ({}, "default", 0.5),
    "early_stopping_patience": ({"max_epochs": 4, "early_stopping_patience": 1}, "plateau", 2),
    "selection_metric": ({"max_epochs": 4}, "shifted", "best_mcc"),
    "seed": ({}, "default", 1),
}
DATASETS = {"default": VAL, "plateau": plateau_val(), "shifted": shifted_val()}


def test_field_table_covers_every_config_field() -> None:
    assert set(FIELD_CHANGES) == {f.name for f in fields(HeadTrainConfig)}


@pytest.mark.parametrize("field", list(FIELD_CHANGES))
def test_every_field_changes_behaviour(tmp_path: Path, field: str) -> None:
    context, dataset, value = FIELD_CHANGES[field]
    base = fit(tmp_path, val=DATASETS[dataset], name="base", **context)
    changed = fit(tmp_path, val=DATASETS[dataset], name="changed", **{**context, field: value})
    assert getattr(HeadTrainConfig(**{**TINY, **context}), field) != value
    assert (
        not same_weights(saved(base), saved(changed))
        or not base.history.equals(changed.history)
        or (base.best_epoch, base.best_metric) != (changed.best_epoch, changed.best_metric)
    )


def test_head_and_widths_shape_the_model(tmp_path: Path) -> None:
    mlp = fit(tmp_path, name="mlp", head="mlp", mlp_hidden=12, aggregation="attention", attention_hidden=5)
    weights = saved(mlp)
    assert weights["classifier.0.weight"].shape == (12, DIM)
    assert weights["classifier.3.weight"].shape == (2, 12)
    assert weights["pool.value.weight"].shape == (5, DIM)
    linear = saved(fit(tmp_path, name="linear"))
    assert linear["classifier.1.weight"].shape == (2, DIM)
    assert not any(k.startswith("pool.") for k in linear)


def test_topk_mean_matches_brute_force() -> None:
    torch.manual_seed(0)
    for topk in (1, 3, 4, 25):
        model = HeadModel(
            feature_dim=DIM,
            num_views=10,
            head="mlp",
            mlp_hidden=7,
            dropout=0.0,
            aggregation="topk_mean",
            topk=topk,
            attention_hidden=4,
        ).eval()
        x = torch.randn(20, 10, DIM)
        with torch.no_grad():
            got = model(x)
            per_view = model.view_logits(x)
        k = min(topk, 10)
        for i in range(20):
            margins = [(float(per_view[i, v, 1] - per_view[i, v, 0]), v) for v in range(10)]
            chosen = [v for _, v in sorted(margins, reverse=True)[:k]]
            expected = per_view[i, chosen].mean(dim=0)
            torch.testing.assert_close(got[i], expected)
            assert float(got[i, 1] - got[i, 0]) == pytest.approx(
                sum(m for m, _ in sorted(margins, reverse=True)[:k]) / k, abs=1e-5
            )


def test_attention_pooling_matches_ilse_formula() -> None:
    torch.manual_seed(0)
    model = HeadModel(
        feature_dim=DIM,
        num_views=4,
        head="linear",
        mlp_hidden=1,
        dropout=0.0,
        aggregation="attention",
        topk=1,
        attention_hidden=5,
    ).eval()
    x = torch.randn(8, 4, DIM, dtype=torch.float64)
    model = model.double()
    p = {k: v.numpy() for k, v in model.state_dict().items()}
    h = x.numpy()
    scores = (
        np.tanh(h @ p["pool.value.weight"].T + p["pool.value.bias"])
        / (1 + np.exp(-(h @ p["pool.gate.weight"].T + p["pool.gate.bias"])))
    ) @ p["pool.score.weight"].T
    a = np.exp(scores[..., 0]) / np.exp(scores[..., 0]).sum(axis=1, keepdims=True)
    pooled = (a[..., None] * h).sum(axis=1)
    expected = pooled @ p["classifier.1.weight"].T + p["classifier.1.bias"]
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-6)


def test_single_view_makes_aggregation_irrelevant(tmp_path: Path) -> None:
    train, val = make_split(5, N_TRAIN, views=1), make_split(6, N_VAL, views=1, prefix="val")
    topk = fit(tmp_path, train, val, name="topk", aggregation="topk_mean")
    attention = fit(tmp_path, train, val, name="attention", aggregation="attention")
    assert same_weights(saved(topk), saved(attention))
    meta = json.loads(attention.config_path.read_text())
    assert {"aggregation", "topk", "attention_hidden"} <= set(meta["inactive_fields"])


def test_auto_class_weights_are_inverse_frequency(tmp_path: Path) -> None:
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=TRAIN.labels)
    np.testing.assert_allclose(inverse_frequency_weights(TRAIN.labels), expected)
    auto, none = Probe(), Probe()
    fit(tmp_path, name="auto", callbacks=(auto,), max_epochs=1)
    fit(tmp_path, name="none", callbacks=(none,), max_epochs=1, class_weights="none")
    assert auto.class_weight is not None
    np.testing.assert_allclose(auto.class_weight.numpy(), expected, rtol=1e-6)
    assert none.class_weight is None


def test_focal_loss_reduces_to_torch_cross_entropy_and_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(33, 2, generator=g) * 3
    target = torch.randint(0, 2, (33,), generator=g)
    weight = torch.tensor([2.5, 0.625])
    for w in (None, weight):
        for eps in (0.0, 0.15):
            expected = F.cross_entropy(logits, target, weight=w, label_smoothing=eps)
            got = focal_loss(logits, target, gamma=0.0, weight=w, label_smoothing=eps)
            torch.testing.assert_close(got, expected)
    p = torch.softmax(logits.double(), dim=1)
    rows = [
        -weight[int(t)] * (1 - p[i, int(t)]) ** 2.0 * math.log(p[i, int(t)])
        for i, t in enumerate(target.tolist())
    ]
    brute = sum(rows) / weight[target].sum()
    torch.testing.assert_close(focal_loss(logits, target, gamma=2.0, weight=weight), brute.float())


def test_focal_with_gamma_zero_trains_like_cross_entropy(tmp_path: Path) -> None:
    ce = saved(fit(tmp_path, name="ce", label_smoothing=0.1))
    focal = saved(fit(tmp_path, name="focal", loss="focal", focal_gamma=0.0, label_smoothing=0.1))
    for key in ce:
        torch.testing.assert_close(focal[key], ce[key], atol=1e-5, rtol=1e-4)


def test_training_loss_applies_label_smoothing_like_torch(tmp_path: Path) -> None:
    class LossProbe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            g = torch.Generator().manual_seed(0)
            logits, target = torch.randn(10, 2, generator=g), torch.randint(0, 2, (10,), generator=g)
            self.got = pl_module.loss(logits, target)
            self.expected = F.cross_entropy(
                logits, target, weight=pl_module.class_weight, label_smoothing=0.3
            )
            self.unsmoothed = F.cross_entropy(logits, target, weight=pl_module.class_weight)

    probe = LossProbe()
    fit(tmp_path, callbacks=(probe,), max_epochs=1, label_smoothing=0.3)
    torch.testing.assert_close(probe.got, probe.expected)
    assert not torch.allclose(probe.got, probe.unsmoothed)


@pytest.mark.parametrize(
    ("overrides", "optimizer_type", "scheduler_type"),
    [
        ({}, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR),
        ({"optimizer": "sgd", "momentum": 0.7}, torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR),
        ({"schedule": "onecycle"}, torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR),
    ],
)
def test_optimizer_and_scheduler_types(
    tmp_path: Path, overrides: dict[str, Any], optimizer_type: type, scheduler_type: type
) -> None:
    probe = Probe()
    fit(tmp_path, callbacks=(probe,), max_epochs=1, weight_decay=0.03, **overrides)
    assert type(probe.optimizer) is optimizer_type
    assert type(probe.scheduler) is scheduler_type
    group = probe.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.03
    if optimizer_type is torch.optim.SGD:
        assert group["momentum"] == 0.7


@pytest.mark.parametrize(("schedule", "warmup_epochs"), [("cosine", 0.5), ("cosine", 0.0), ("constant", 1.0)])
def test_learning_rate_per_step_follows_schedule(tmp_path: Path, schedule: str, warmup_epochs: float) -> None:
    probe = Probe()
    result = fit(tmp_path, callbacks=(probe,), max_epochs=3, schedule=schedule, warmup_epochs=warmup_epochs)
    steps_per_epoch, total = 6, 18
    warmup = round(warmup_epochs * steps_per_epoch)
    expected = []
    for s in range(total):
        if s < warmup:
            expected.append(0.05 * (s + 1) / (warmup + 1))
        elif schedule == "constant":
            expected.append(0.05)
        else:
            expected.append(0.05 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    np.testing.assert_allclose(probe.lrs, expected, rtol=1e-9)
    np.testing.assert_allclose(result.history["lr"], [expected[5], expected[11], expected[17]], rtol=1e-9)


def test_onecycle_peaks_at_end_of_warmup(tmp_path: Path) -> None:
    probe = Probe()
    fit(tmp_path, callbacks=(probe,), max_epochs=3, schedule="onecycle", warmup_epochs=1.0)
    assert probe.lrs[0] == pytest.approx(0.05 / 25)
    assert int(np.argmax(probe.lrs)) == 5
    assert max(probe.lrs) == pytest.approx(0.05)


@pytest.mark.parametrize(("batch_size", "accumulate"), [(16, 1), (16, 4), (10, 3), (32, 2)])
def test_optimizer_step_count(tmp_path: Path, batch_size: int, accumulate: int) -> None:
    result = fit(
        tmp_path, max_epochs=2, batch_size=batch_size, accumulate_grad_batches=accumulate, warmup_epochs=0.0
    )
    batches = range(math.ceil(N_TRAIN / batch_size))
    per_epoch = sum(1 for b in batches if (b + 1) % accumulate == 0 or b == len(batches) - 1)
    assert result.optimizer_steps == 2 * per_epoch
    assert json.loads(result.config_path.read_text())["optimizer_steps"] == 2 * per_epoch


def test_gradient_clipping_bounds_each_sgd_step(tmp_path: Path) -> None:
    probe = Probe()
    clip, lr = 0.05, 0.05
    fit(
        tmp_path,
        callbacks=(probe,),
        max_epochs=1,
        optimizer="sgd",
        momentum=0.0,
        weight_decay=0.0,
        schedule="constant",
        warmup_epochs=0.0,
        gradient_clip_val=clip,
        dropout=0.0,
    )
    norms = []
    for before, after in zip(probe.weights, probe.weights[1:], strict=False):
        step = torch.cat([(after[k] - before[k]).flatten() for k in before])
        norms.append(float(step.norm()))
    # Plain SGD moves by lr * clipped gradient: never further than lr * clip, and exactly that when clipped.
    assert max(norms) <= lr * clip * (1 + 1e-4)
    assert max(norms) == pytest.approx(lr * clip, rel=1e-4)


def test_bf16_mixed_really_runs_in_bfloat16(tmp_path: Path) -> None:
    bf16, fp32 = Probe(), Probe()
    bf16_result = fit(tmp_path, name="bf16", callbacks=(bf16,), max_epochs=1, precision="bf16-mixed")
    fit(tmp_path, name="fp32", callbacks=(fp32,), max_epochs=1)
    assert bf16.dtypes == {torch.bfloat16}
    assert fp32.dtypes == {torch.float32}
    assert all(v.dtype == torch.float32 for v in saved(bf16_result).values())


def test_ema_weights_of_the_best_epoch_are_selected_and_saved(tmp_path: Path) -> None:
    decay = 0.8
    probe = Probe()
    # On the plateau the first epoch stays best while training (and the EMA) moves on for two more.
    result = fit(
        tmp_path,
        val=plateau_val(),
        callbacks=(probe,),
        max_epochs=6,
        early_stopping_patience=2,
        ema_decay=decay,
    )
    assert (result.best_epoch, result.epochs_run) == (0, 3)
    raw = probe.weights  # initial weights, then after each of 6 steps per epoch
    assert len(raw) == 1 + 3 * 6
    ema = [raw[0]]
    for weights in raw[1:]:
        ema.append({k: decay * ema[-1][k] + (1 - decay) * weights[k] for k in weights})
    stored = saved(result)
    for key in stored:
        torch.testing.assert_close(stored[key], ema[6][key], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(stored[key], raw[6][key], atol=1e-4)
        assert not torch.allclose(stored[key], ema[-1][key], atol=1e-4)
    logits = predict_logits(result.model, plateau_val().features)
    assert result.history["val_loss"][0] == pytest.approx(
        F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(plateau_val().labels)).item(), rel=1e-6
    )


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_at_expected_epoch_on_plateau(tmp_path: Path, patience: int) -> None:
    result = fit(tmp_path, val=plateau_val(), max_epochs=8, early_stopping_patience=patience)
    assert (result.history["val_mcc"] == 0).all()
    assert result.best_epoch == 0
    assert result.epochs_run == patience + 1
    assert result.history["epoch"].tolist() == list(range(patience + 1))


def test_selection_metric_picks_the_matching_column(tmp_path: Path) -> None:
    val = shifted_val()
    at_zero = fit(tmp_path, val=val, name="mcc", max_epochs=4)
    best = fit(tmp_path, val=val, name="best", max_epochs=4, selection_metric="best_mcc")
    pd.testing.assert_frame_equal(at_zero.history, best.history)
    for result, column in ((at_zero, "val_mcc"), (best, "val_best_mcc")):
        assert result.best_metric == result.history[column].max()
        assert result.best_epoch == int(result.history[column].idxmax())
    assert best.best_metric > at_zero.best_metric


# --------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("head", "transformer", ValueError),
        ("mlp_hidden", 0, ValueError),
        ("mlp_hidden", 2.5, TypeError),
        ("dropout", 1.0, ValueError),
        ("aggregation", "max", ValueError),
        ("topk", 0, ValueError),
        ("attention_hidden", -1, ValueError),
        ("loss", "bce", ValueError),
        ("label_smoothing", 1.0, ValueError),
        ("focal_gamma", -0.5, ValueError),
        ("class_weights", "balanced", ValueError),
        ("optimizer", "adam", ValueError),
        ("lr", 0.0, ValueError),
        ("lr", "fast", TypeError),
        ("weight_decay", -1e-4, ValueError),
        ("momentum", 1.0, ValueError),
        ("schedule", "step", ValueError),
        ("warmup_epochs", 30.0, ValueError),
        ("max_epochs", 0, ValueError),
        ("max_epochs", True, TypeError),
        ("batch_size", 0, ValueError),
        ("accumulate_grad_batches", 0, ValueError),
        ("gradient_clip_val", -1.0, ValueError),
        ("precision", "16-mixed", ValueError),
        ("precision", 32, TypeError),
        ("ema_decay", 1.0, ValueError),
        ("early_stopping_patience", 0, ValueError),
        ("selection_metric", "auroc", ValueError),
        ("seed", -1, ValueError),
    ],
)
def test_invalid_config_raises_naming_the_field(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"HeadTrainConfig\.{field}\b"):
        HeadTrainConfig(**{field: value})


def test_config_maps_one_to_one_onto_a_yaml_schema() -> None:
    schema = OmegaConf.structured(HeadTrainConfig)
    assert list(schema.keys()) == [f.name for f in fields(HeadTrainConfig)]
    OmegaConf.set_readonly(schema, False)
    merged = OmegaConf.merge(schema, OmegaConf.create("lr: 1\nprecision: 32\nhead: mlp\n"))
    assert OmegaConf.to_object(merged) == HeadTrainConfig(lr=1.0, precision="32", head="mlp")
    with pytest.raises(ValueError, match=r"HeadTrainConfig\.head"):
        OmegaConf.to_object(OmegaConf.merge(schema, {"head": "mpl"}))


def test_onecycle_needs_warmup() -> None:
    with pytest.raises(ValueError, match="warmup_epochs"):
        HeadTrainConfig(schedule="onecycle", warmup_epochs=0.0)
    assert replace(HeadTrainConfig(), lr=1).lr == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": np.zeros((4, 6))}, r"FeatureSet\.features.*\[N, V, D\]"),
        ({"features": np.zeros((4, 1, 6), dtype=np.int64)}, r"FeatureSet\.features.*floating"),
        ({"features": np.full((4, 1, 6), np.nan)}, r"FeatureSet\.features.*non-finite"),
        ({"labels": np.array([0, 1, 2, 1])}, r"FeatureSet\.labels.*0 or 1"),
        ({"labels": np.array([0, 1, 1])}, r"FeatureSet\.labels.*shape"),
        ({"ids": np.array(["a", "b", "", "d"])}, r"FeatureSet\.ids.*empty"),
        ({"ids": np.array([1, 2, 3, 4])}, r"FeatureSet\.ids.*strings"),
        ({"ids": np.array(["a", "a", "b", "c"])}, r"FeatureSet\.labels.*same id"),
    ],
)
def test_invalid_feature_set_raises_naming_the_field(kwargs: dict[str, Any], match: str) -> None:
    good = {
        "features": np.zeros((4, 1, 6), np.float32),
        "labels": np.array([0, 1, 0, 1]),
        "ids": np.array(["a", "b", "c", "d"]),
    }
    with pytest.raises((TypeError, ValueError), match=match):
        FeatureSet(**{**good, **kwargs})


def test_feature_set_accepts_shared_ids_and_converts_dtypes() -> None:
    fs = FeatureSet(np.ones((3, 2, 4), np.float16), np.array([1, 1, 0], np.int32), np.array(["x", "x", "y"]))
    assert (fs.features.dtype, fs.labels.dtype, fs.num_views, fs.feature_dim) == (np.float32, np.int64, 2, 4)


@pytest.mark.parametrize(
    ("train", "val", "match"),
    [
        (FeatureSet(TRAIN.features[:4], np.ones(4, np.int64), TRAIN.ids[:4]), VAL, r"train\.labels.*class 0"),
        (TRAIN, make_split(2, 20, views=2, prefix="val"), r"val_select\.features"),
        (TRAIN, make_split(2, 20), r"both train and val_select"),
    ],
)
def test_fit_head_rejects_bad_splits(tmp_path: Path, train: FeatureSet, val: FeatureSet, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit(tmp_path, train, val)


def test_predict_rejects_wrong_shapes_and_missing_files(tmp_path: Path) -> None:
    result = fit(tmp_path, max_epochs=1)
    with pytest.raises(ValueError, match=r"features must have shape \[N, 3, 6\]"):
        predict_margins(result.model, np.zeros((2, 1, DIM), np.float32))
    with pytest.raises(FileNotFoundError, match=r"head\.json"):
        load_head(tmp_path / "nowhere")
    assert predict_margins(tmp_path / "run", np.zeros((0, VIEWS, DIM), np.float32)).shape == (0,)


def test_sqrt_l2_transform_matches_numpy_and_blocks_the_hf_fold() -> None:
    from roadwork.deploy.fold import linear_layer
    from roadwork.models.head import HeadModel

    x = np.random.default_rng(0).normal(size=(5, 1, 7)).astype(np.float32)
    x[0] = 0.0
    head = HeadModel(
        feature_dim=7,
        num_views=1,
        head="linear",
        mlp_hidden=4,
        dropout=0.0,
        aggregation="topk_mean",
        topk=1,
        attention_hidden=4,
        feature_transform="sqrt_l2",
    ).eval()
    rooted = np.sign(x[:, 0]) * np.sqrt(np.abs(x[:, 0]))
    norms = np.linalg.norm(rooted, axis=1, keepdims=True)
    expected_features = np.divide(rooted, norms, out=np.zeros_like(rooted), where=norms > 0)
    linear = head.classifier[-1]
    expected = expected_features @ linear.weight.detach().numpy().T + linear.bias.detach().numpy()
    with torch.no_grad():
        np.testing.assert_allclose(head(torch.from_numpy(x)).numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="feature transform"):
        linear_layer(head)


def test_last_selection_keeps_the_final_epoch_and_alone_allows_overlapping_splits(tmp_path: Path) -> None:
    # "plateau" val stops an mcc-selected run early; "last" runs every epoch and keeps the final weights
    plateau = plateau_val()
    last = fit(
        tmp_path, val=plateau, name="last", max_epochs=4, early_stopping_patience=1, selection_metric="last"
    )
    assert last.epochs_run == 4 and last.best_epoch == 3
    assert last.best_metric == pytest.approx(float(last.history["val_mcc"].iloc[-1]))
    union = FeatureSet(
        np.concatenate([TRAIN.features, VAL.features]),
        np.concatenate([TRAIN.labels, VAL.labels]),
        np.concatenate([TRAIN.ids, VAL.ids]),
    )
    refit = fit(tmp_path, union, VAL, name="refit", max_epochs=2, selection_metric="last")
    assert refit.best_epoch == 1
    with pytest.raises(ValueError, match="occur in both train and val_select"):
        fit(tmp_path, union, VAL, name="leak", max_epochs=2)


# ------------------------------------------------------------------------------------------------ logs


def test_lightning_bar_only_where_progress_bars_are_on(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = HeadTrainConfig(**TINY)
    monkeypatch.delenv("ROADWORK_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert head_trainer(cfg, max_epochs=1).progress_bar_callback is None
    monkeypatch.setenv("ROADWORK_PROGRESS", "1")
    assert head_trainer(cfg, max_epochs=1).progress_bar_callback is not None
    assert head_trainer(cfg, max_epochs=1, show_progress=False).progress_bar_callback is None


def test_training_shows_none_of_lightnings_noise(tmp_path: Path) -> None:
    """Lightning's hints, its deprecations inside torch and its chatter stay out of a stage's log; its
    report of the hardware used stays."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(tmp_path, max_epochs=2)
    finally:
        rank_zero.removeHandler(handler)
    assert any(line.startswith("GPU available:") for line in lines)
    chatter = ("💡 Tip", "TPU available", "`Trainer.fit` stopped")
    assert not [line for line in lines if line.startswith(chatter)]
    shown = [str(w.message) for w in caught]
    assert not [m for m in shown if "does not have many workers" in m or "LeafSpec" in m], shown
