"""``train.mode: finetune``: LoRA targets, adapter wrapping, end-to-end training, merge and saved outputs."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from roadwork.data.preprocess import PreprocessConfig, TrainAugment, to_tensor_batch
from roadwork.metrics import mcc
from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.head import HEAD_CONFIG, load_head, predict_logits
from roadwork.models.lora import apply_lora, backbone_blocks, lora_layers, lora_target_modules, merge_lora
from roadwork.models.merge import MERGE_TOLERANCE, MergeCheckError
from roadwork.train import finetune as finetune_module
from roadwork.train.finetune import FinetuneConfig, FinetuneResult, finetune
from roadwork.train.head_config import HeadTrainConfig
from roadwork.train.head_module import HISTORY_COLUMNS

HEAD_KW: dict[str, Any] = {
    "max_epochs": 3,
    "batch_size": 8,
    "warmup_epochs": 0.0,
    "lr": 1e-2,
    "early_stopping_patience": 3,
}
FT_KW: dict[str, Any] = {"backbone_lr": 1e-2, "lora_dropout": 0.1}


def toy_images(n: int, seed: int) -> tuple[list[Image.Image], np.ndarray]:
    """32x32 RGB: a solid random colour (label 0) or the same with bright horizontal stripes (label 1)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % 2
        pixels = np.empty((32, 32, 3), np.uint8)
        pixels[:] = rng.integers(0, 160, 3)
        if label:
            pixels[::4] = 255
        images.append(Image.fromarray(pixels))
        labels.append(label)
    return images, np.array(labels)


TRAIN_IMAGES, TRAIN_LABELS = toy_images(16, 0)
VAL_IMAGES, VAL_LABELS = toy_images(8, 1)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny")


def _base_name(peft_name: str) -> str:
    """``backbone.model.base_model.model.X.base_layer.weight`` -> ``X.weight`` (name in the plain model)."""
    name = peft_name.removeprefix("backbone.model.").removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


class Probe(pl.Callback):
    """Records parameters at the start and end of training and the train/eval mode of every module."""

    def __init__(self) -> None:
        self.trainable: list[str] = []
        self.start: dict[str, torch.Tensor] = {}
        self.end: dict[str, torch.Tensor] = {}
        self.end_buffers: dict[str, torch.Tensor] = {}
        self.train_modes: dict[str, bool] = {}
        self.val_modes: dict[str, bool] = {}
        self.lora_prefixes: list[str] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        net = pl_module.model
        self.trainable = [n for n, p in net.named_parameters() if p.requires_grad]
        self.start = {n: p.detach().clone() for n, p in net.named_parameters()}
        self.lora_prefixes = [f"backbone.model.{name}" for name in lora_layers(net.backbone.model)]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.train_modes = self.train_modes or {n: m.training for n, m in pl_module.model.named_modules()}

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.val_modes = self.val_modes or {n: m.training for n, m in pl_module.model.named_modules()}

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.end = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        self.end_buffers = {n: b.detach().clone() for n, b in pl_module.model.named_buffers()}


class RecordingAugment:
    """Returns the image unchanged; records ``(id(image), first draw of rng)`` per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        self.calls.append((id(image), float(rng.random())))
        return image


@pytest.fixture(scope="module")
def trained(tiny: Backbone, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("finetune")
    probe, augment = Probe(), RecordingAugment()
    fingerprint = tiny.fingerprint()
    result = finetune(
        tiny,
        TRAIN_IMAGES,
        TRAIN_LABELS,
        VAL_IMAGES,
        VAL_LABELS,
        HeadTrainConfig(**HEAD_KW),
        FinetuneConfig(**FT_KW),
        out_dir=out,
        augment=augment,
        callbacks=[probe],
        show_progress=False,
        accelerator="cpu",
    )
    return {"result": result, "probe": probe, "augment": augment, "out": out, "fingerprint": fingerprint}


# ------------------------------------------------------------------------------------------- LoRA targets


def test_lora_targets_tiny_vit(tiny: Backbone) -> None:
    assert backbone_blocks(tiny) == [f"encoder.layer.{i}" for i in range(4)]
    expected = [f"encoder.layer.{i}.attention.{p}" for i in range(4) for p in ("q_proj", "v_proj")]
    assert lora_target_modules(tiny) == expected
    assert lora_target_modules(tiny, exclude_last_blocks=1) == expected[:6]
    assert lora_target_modules(tiny, exclude_last_blocks=3) == expected[:2]
    modules = dict(tiny.model.named_modules())
    assert all(isinstance(modules[name], nn.Linear) for name in expected)
    for bad in (-1, 4, 1.0, True):
        with pytest.raises(ValueError, match="exclude_last_blocks"):
            lora_target_modules(tiny, exclude_last_blocks=bad)


def test_lora_targets_dinov3_layout() -> None:
    """DINOv3 keeps its blocks under ``model.layer`` (not ``encoder.layer``); found from the structure."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    config = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    with torch.random.fork_rng(devices=[]):
        model = DINOv3ViTModel(config)
    preprocess = PreprocessConfig(32, 32, (0.5,) * 3, (0.5,) * 3, "bilinear", resize_mode="square")
    backbone = Backbone(
        model=model,
        backbone_id="dinov3-test",
        family="dinov3",
        feature_dim=64,
        preprocess=preprocess,
        arch_config=config.to_dict(),
    )
    assert lora_target_modules(backbone) == [
        f"model.layer.{i}.attention.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]


def test_lora_targets_efficientnet_lite0() -> None:
    backbone = load_backbone("efficientnet_lite0")
    blocks = backbone_blocks(backbone)
    assert len(blocks) == 16 and blocks[0] == "blocks.0.0" and blocks[-1] == "blocks.6.0"
    targets = lora_target_modules(backbone)
    # the first block (depthwise-separable) has one pointwise conv, the 15 inverted residuals two; conv_head
    assert len(targets) == 1 + 15 * 2 + 1
    assert targets[:3] == ["blocks.0.0.conv_pw", "blocks.1.0.conv_pw", "blocks.1.0.conv_pwl"]
    assert targets[-1] == "conv_head"
    modules = dict(backbone.model.named_modules())
    for name in targets:
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.groups == 1, name
        assert name == "conv_head" or name.rsplit(".", 1)[1] in ("conv_pw", "conv_pwl")
    assert not any("conv_dw" in t or "conv_stem" in t for t in targets)
    reduced = lora_target_modules(backbone, exclude_last_blocks=1)
    assert reduced == [t for t in targets if not t.startswith("blocks.6.") and t != "conv_head"]
    # peft wraps the 1x1 convolutions (DoRA too) and the adapted model starts equal to the original
    wrapped = apply_lora(
        copy.deepcopy(backbone.model), rank=2, alpha=4, dropout=0.0, use_dora=True, targets=targets
    )
    assert len(lora_layers(wrapped)) == len(targets)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), backbone.model(x))


# ---------------------------------------------------------------------------------------- apply / merge


def test_apply_lora_wraps_exactly_the_targets_and_merges(tiny: Backbone) -> None:
    targets = lora_target_modules(tiny, exclude_last_blocks=2)
    model = copy.deepcopy(tiny.model)
    wrapped = apply_lora(model, rank=2, alpha=4.0, dropout=0.0, use_dora=False, targets=targets)
    assert [n.removeprefix("base_model.model.") for n in lora_layers(wrapped)] == targets
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * len(targets)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)
        expected = wrapped(pixel_values=x).last_hidden_state
        merged = merge_lora(wrapped)
        assert not lora_layers(merged) and type(merged) is type(tiny.model)
        torch.testing.assert_close(merged(pixel_values=x).last_hidden_state, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.0}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"use_dora": 1}, "use_dora"),
        ({"targets": []}, "targets"),
        ({"targets": "encoder.layer.0.attention.q_proj"}, "targets"),
        ({"targets": ["q_proj"]}, "targets"),
        ({"targets": ["encoder.layer.0.norm1"]}, "targets"),
        ({"targets": ["encoder.layer.0.attention.q_proj"] * 2}, "targets"),
    ],
)
def test_apply_lora_rejects_bad_arguments(tiny: Backbone, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "rank": 2,
        "alpha": 4.0,
        "dropout": 0.0,
        "use_dora": False,
        "targets": ["encoder.layer.0.attention.q_proj"],
    }
    with pytest.raises(ValueError, match=match):
        apply_lora(copy.deepcopy(tiny.model), **{**args, **kwargs})


def test_apply_lora_rejects_an_adapted_model(tiny: Backbone) -> None:
    targets = lora_target_modules(tiny)
    wrapped = apply_lora(
        copy.deepcopy(tiny.model), rank=2, alpha=4, dropout=0.0, use_dora=False, targets=targets
    )
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(wrapped, rank=2, alpha=4, dropout=0.0, use_dora=False, targets=targets)


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("lora_rank", 0, ValueError),
        ("lora_rank", 2.5, TypeError),
        ("lora_rank", True, TypeError),
        ("lora_alpha", 0.0, ValueError),
        ("lora_alpha", float("nan"), ValueError),
        ("lora_alpha", "16", TypeError),
        ("lora_dropout", -0.1, ValueError),
        ("lora_dropout", 1.0, ValueError),
        ("use_dora", 1, TypeError),
        ("use_dora", "false", TypeError),
        ("backbone_lr", 0.0, ValueError),
        ("backbone_lr", float("inf"), ValueError),
    ],
)
def test_finetune_config_rejects_bad_values(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"FinetuneConfig\.{field}"):
        FinetuneConfig(**{field: value})


def test_finetune_config_defaults_match_params() -> None:
    from roadwork.config import FinetuneParams

    assert asdict(FinetuneConfig()) == asdict(FinetuneParams())
    assert FinetuneConfig(lora_rank=np.int64(4), lora_alpha=8).lora_alpha == 8.0


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"train_labels": np.zeros(16, np.int64)}, ValueError, "train_labels has no example of class 1"),
        ({"val_labels": VAL_LABELS[:-1]}, ValueError, "val_labels must have shape"),
        ({"val_labels": VAL_LABELS * 2}, ValueError, "val_labels must be 0 or 1"),
        (
            {"train_images": [TRAIN_IMAGES[0].convert("L"), *TRAIN_IMAGES[1:]]},
            ValueError,
            r"train_images\[0\]",
        ),
        ({"train_images": [*TRAIN_IMAGES[:-1], 3]}, TypeError, r"train_images\[15\]"),
        ({"val_images": ["/nonexistent/image.jpg"] * 8}, FileNotFoundError, r"val_images\[0\]"),
        ({"train_images": TRAIN_IMAGES[0]}, TypeError, "train_images must be a sequence"),
        ({"accelerator": "tpu"}, ValueError, "accelerator"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"augment": "yes"}, TypeError, "augment"),
        ({"head_cfg": FinetuneConfig()}, TypeError, "head_cfg"),
        ({"ft_cfg": HeadTrainConfig()}, TypeError, "ft_cfg"),
    ],
)
def test_finetune_rejects_bad_arguments(
    tiny: Backbone, tmp_path: Path, change: dict[str, Any], error: type[Exception], match: str
) -> None:
    args: dict[str, Any] = {
        "backbone": tiny,
        "train_images": TRAIN_IMAGES,
        "train_labels": TRAIN_LABELS,
        "val_images": VAL_IMAGES,
        "val_labels": VAL_LABELS,
        "head_cfg": HeadTrainConfig(**HEAD_KW),
        "ft_cfg": FinetuneConfig(),
        "out_dir": tmp_path,
        "show_progress": False,
    }
    with pytest.raises(error, match=match):
        finetune(**{**args, **change})


# --------------------------------------------------------------------------------------------- training


def test_only_adapters_and_head_train(trained: dict[str, Any], tiny: Backbone) -> None:
    probe: Probe = trained["probe"]
    assert probe.trainable
    assert all(n.startswith("head.") or ".lora_A." in n or ".lora_B." in n for n in probe.trainable)
    assert any(n.startswith("head.") for n in probe.trainable)
    original = tiny.model.state_dict()
    base = [n for n in probe.start if n not in probe.trainable]
    assert len(base) == len(dict(tiny.model.named_parameters()))
    for name in base:
        assert torch.equal(probe.end[name], probe.start[name]), name
        assert torch.equal(probe.end[name], original[_base_name(name)]), name
    for name, buffer in probe.end_buffers.items():
        assert torch.equal(buffer, original[_base_name(name)]), name
    for name in probe.trainable:
        assert not torch.equal(probe.end[name], probe.start[name]), f"{name} did not move"
    lora_b = [n for n in probe.trainable if ".lora_B." in n]
    assert lora_b and all(not torch.any(probe.start[n]) for n in lora_b)  # B starts at zero
    # the caller's backbone was copied, not adapted
    assert not lora_layers(tiny.model) and tiny.fingerprint() == trained["fingerprint"]


def test_train_eval_modes_are_explicit(trained: dict[str, Any]) -> None:
    probe: Probe = trained["probe"]

    def adapted(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in probe.lora_prefixes)

    assert probe.lora_prefixes and probe.train_modes and probe.val_modes
    for name, training in probe.train_modes.items():
        expected = name == "" or name.startswith("head") or adapted(name)
        assert training is expected, name
    assert any(".lora_dropout.default" in n and t for n, t in probe.train_modes.items())
    assert not any(probe.val_modes.values())


def test_augment_is_per_epoch_on_training_images_only(trained: dict[str, Any]) -> None:
    calls = trained["augment"].calls
    assert len(calls) == HEAD_KW["max_epochs"] * len(TRAIN_IMAGES)
    by_image: dict[int, list[float]] = {}
    for image_id, draw in calls:
        by_image.setdefault(image_id, []).append(draw)
    assert set(by_image) == {id(im) for im in TRAIN_IMAGES}
    assert all(len(set(draws)) == HEAD_KW["max_epochs"] for draws in by_image.values())


def test_training_loss_goes_down(trained: dict[str, Any]) -> None:
    history = trained["result"].history
    assert list(history.columns) == list(HISTORY_COLUMNS)
    assert len(history) == HEAD_KW["max_epochs"]
    assert history["train_loss"].iloc[-1] < 0.9 * history["train_loss"].iloc[0]


def test_saved_model_reproduces_selected_predictions(trained: dict[str, Any]) -> None:
    result: FinetuneResult = trained["result"]
    out: Path = trained["out"]
    assert result.backbone_dir == out / "backbone"
    backbone = load_backbone(str(out / "backbone"))
    assert not lora_layers(backbone.model)
    assert backbone.fingerprint() == result.backbone.fingerprint() != trained["fingerprint"]
    with torch.no_grad():
        features = backbone(to_tensor_batch(VAL_IMAGES, backbone.preprocess)).numpy()
    logits = predict_logits(load_head(out), features[:, None])
    np.testing.assert_allclose(logits, result.val_logits, rtol=0, atol=1e-5)
    assert result.merge_max_abs_diff <= 1e-5
    # the saved logits are those the selection saw at best_epoch
    row = result.history.iloc[result.best_epoch]
    margins = result.val_logits[:, 1] - result.val_logits[:, 0]
    assert mcc(VAL_LABELS, (margins > 0).astype(np.int64)) == pytest.approx(row["val_mcc"])
    assert result.best_metric == pytest.approx(row["val_mcc"])
    assert result.best_metric == result.history["val_mcc"].max()
    meta = json.loads((out / HEAD_CONFIG).read_text())
    assert meta["num_views"] == 1 and meta["feature_dim"] == backbone.feature_dim
    assert meta["best_epoch"] == result.best_epoch and meta["epochs_run"] == len(result.history)
    assert meta["config"] == asdict(HeadTrainConfig(**HEAD_KW))
    ft_meta = json.loads(result.finetune_path.read_text())
    assert ft_meta["lora_targets"] == list(result.lora_targets) == lora_target_modules(load_backbone("tiny"))
    assert ft_meta["backbone_fingerprint"] == backbone.fingerprint()
    assert ft_meta["base_backbone"]["fingerprint"] == trained["fingerprint"]
    assert ft_meta["finetune"]["backbone_lr"] == FT_KW["backbone_lr"]
    head_params = sum(p.numel() for p in result.head.parameters())
    assert result.trainable_parameters == head_params + 8 * 8 * (64 + 64)  # 8 layers, rank 8, 64 -> 64


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_finetune_merge_check_fails_beyond_the_one_tolerance(
    trained: dict[str, Any], tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factor: float
) -> None:
    """The run of ``trained`` (so the same linear head W) with the merged backbone's features moved by v,
    W v = factor x MERGE_TOLERANCE on both logits: the check passes below the tolerance, fails above."""
    weight = trained["result"].head.classifier[-1].weight.detach().double()
    target = torch.full((2,), factor * MERGE_TOLERANCE, dtype=torch.float64)
    shift = (torch.linalg.pinv(weight) @ target).float()
    real_merge = finetune_module.merge_adapters

    def shifted_merge(backbone: Backbone, *, backbone_id: str) -> Backbone:
        merged = real_merge(backbone, backbone_id=backbone_id)
        merged.register_forward_hook(lambda module, args, out: out + shift)
        return merged

    monkeypatch.setattr(finetune_module, "merge_adapters", shifted_merge)
    args = (tiny, TRAIN_IMAGES, TRAIN_LABELS, VAL_IMAGES, VAL_LABELS, HeadTrainConfig(**HEAD_KW))
    kwargs: dict[str, Any] = {"augment": RecordingAugment(), "show_progress": False, "accelerator": "cpu"}
    if factor > 1:
        with pytest.raises(MergeCheckError, match=f"tolerance {MERGE_TOLERANCE:.3g}"):
            finetune(*args, FinetuneConfig(**FT_KW), out_dir=tmp_path / "out", **kwargs)
        assert not (tmp_path / "out" / "backbone").exists()
    else:
        result = finetune(*args, FinetuneConfig(**FT_KW), out_dir=tmp_path / "out", **kwargs)
        assert result.merge_max_abs_diff == pytest.approx(factor * MERGE_TOLERANCE, abs=2e-6)
        np.testing.assert_array_equal(result.val_logits, trained["result"].val_logits)  # the same training


def test_deterministic_with_paths_and_workers(tiny: Backbone, tmp_path: Path) -> None:
    """Same seed, same result: image files decode to the in-memory pixels, and augmentation draws do not
    depend on which process loads an image (run b uses a DataLoader worker)."""
    train, train_y, val, val_y = TRAIN_IMAGES[:8], TRAIN_LABELS[:8], VAL_IMAGES[:4], VAL_LABELS[:4]
    paths = []
    for k, image in enumerate(train + val):
        paths.append(tmp_path / f"{k}.png")
        image.save(paths[-1])
    head_cfg = HeadTrainConfig(**{**HEAD_KW, "max_epochs": 2, "batch_size": 4})
    augment = TrainAugment((0.5, 0.5, 0.0, 0.0))  # levels 0-1 (crop, rotation, resized crop) + JPEG: fast
    runs = []
    for name, train_in, val_in, workers in (
        ("a", train, val, 0),
        ("b", paths[:8], [str(p) for p in paths[8:]], 1),
    ):
        runs.append(
            finetune(
                tiny,
                train_in,
                train_y,
                val_in,
                val_y,
                head_cfg,
                FinetuneConfig(**FT_KW),
                out_dir=tmp_path / name,
                augment=augment,
                show_progress=False,
                accelerator="cpu",
                num_workers=workers,
            )
        )
    a, b = runs
    assert a.optimizer_steps == 4
    assert a.history.equals(b.history)
    np.testing.assert_array_equal(a.val_logits, b.val_logits)
    assert a.backbone.fingerprint() == b.backbone.fingerprint()
    assert (tmp_path / "a" / "head.safetensors").read_bytes() == (
        tmp_path / "b" / "head.safetensors"
    ).read_bytes()


def test_dora_ema_onecycle(tiny: Backbone, tmp_path: Path) -> None:
    """DoRA magnitudes train and merge; EMA is selected and saved; onecycle keeps each group's own peak lr."""
    lrs: list[list[float]] = []

    class LrProbe(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    head_cfg = HeadTrainConfig(
        **{**HEAD_KW, "max_epochs": 2, "schedule": "onecycle", "warmup_epochs": 1.0},
        ema_decay=0.5,
    )
    ft_cfg = FinetuneConfig(use_dora=True, lora_rank=2, lora_alpha=4, backbone_lr=1e-3, lora_dropout=0.1)
    result = finetune(
        tiny,
        TRAIN_IMAGES,
        TRAIN_LABELS,
        VAL_IMAGES,
        VAL_LABELS,
        head_cfg,
        ft_cfg,
        out_dir=tmp_path,
        callbacks=[LrProbe()],
        show_progress=False,
        accelerator="cpu",
    )
    head_lrs, adapter_lrs = np.array(lrs).T
    np.testing.assert_allclose(adapter_lrs / head_lrs, 0.1, rtol=1e-6)
    assert head_lrs.max() == pytest.approx(1e-2, rel=1e-6)
    backbone = load_backbone(str(tmp_path / "backbone"))
    with torch.no_grad():
        features = backbone(to_tensor_batch(VAL_IMAGES, backbone.preprocess)).numpy()
    np.testing.assert_allclose(
        predict_logits(load_head(tmp_path), features[:, None]), result.val_logits, atol=1e-5
    )
    assert backbone.fingerprint() != tiny.fingerprint()


@pytest.mark.slow
def test_finetune_efficientnet_lite0_keeps_batchnorm_frozen(tmp_path: Path) -> None:
    """timm backbone end to end: conv adapters train, batch-norm statistics stay as they were."""
    backbone = load_backbone("efficientnet_lite0")
    original = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    result = finetune(
        backbone,
        TRAIN_IMAGES[:8],
        TRAIN_LABELS[:8],
        VAL_IMAGES[:4],
        VAL_LABELS[:4],
        HeadTrainConfig(**{**HEAD_KW, "max_epochs": 1}),
        FinetuneConfig(lora_rank=2),
        out_dir=tmp_path,
        show_progress=False,
        accelerator="cpu",
    )
    reloaded = load_backbone(str(tmp_path / "backbone"))
    state = reloaded.model.state_dict()
    for name, value in original.items():
        if "running_" in name or "num_batches_tracked" in name or ".bn" in name or name.startswith("bn"):
            assert torch.equal(state[name], value), name
    changed = [n for n, v in original.items() if not torch.equal(state[n], v)]
    assert changed and all(n.endswith("weight") and ("conv_pw" in n or "conv_head" in n) for n in changed)
    with torch.no_grad():
        features = reloaded(to_tensor_batch(VAL_IMAGES[:4], reloaded.preprocess)).numpy()
    np.testing.assert_allclose(
        predict_logits(load_head(tmp_path), features[:, None]), result.val_logits, atol=1e-4
    )


def test_bf16_mixed_trains_and_saves_float32(tiny: Backbone, tmp_path: Path) -> None:
    """bf16 autocast in training steps; selection and the merge check run in float32, weights stay float32."""
    result = finetune(
        tiny,
        TRAIN_IMAGES,
        TRAIN_LABELS,
        VAL_IMAGES,
        VAL_LABELS,
        HeadTrainConfig(**{**HEAD_KW, "max_epochs": 1}, precision="bf16-mixed"),
        FinetuneConfig(**FT_KW),
        out_dir=tmp_path,
        show_progress=False,
        accelerator="cpu",
    )
    backbone = load_backbone(str(tmp_path / "backbone"))
    assert all(p.dtype == torch.float32 for p in backbone.model.parameters())
    assert result.backbone.fingerprint() == backbone.fingerprint()
    with torch.no_grad():
        features = backbone(to_tensor_batch(VAL_IMAGES, backbone.preprocess)).numpy()
    np.testing.assert_allclose(
        predict_logits(load_head(tmp_path), features[:, None]), result.val_logits, atol=1e-5
    )
