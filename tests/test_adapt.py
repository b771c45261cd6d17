"""ExPLoRA (roadwork.adapt): adapter layout, self-supervised steps, teacher, merge check, resume, config."""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import default_collate

from roadwork.adapt import AdaptConfig, MergeCheckError, adapt_backbone, merge_check
from roadwork.adapt import explora as explora_module
from roadwork.adapt.explora import CHECKPOINT_FILE, HISTORY_COLUMNS
from roadwork.adapt.layout import base_parameter_name, build_student, plan_layout
from roadwork.adapt.ssl import (
    ExploraSSL,
    MultiCropDataset,
    block_masks,
    multi_crop_transform,
    seeded,
    teacher_temperature,
)
from roadwork.adapt.step import make_optimizer, ssl_step
from roadwork.data.preprocess import to_tensor_batch
from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.merge import MERGE_TOLERANCE, backbone_features, merge_adapters
from roadwork.train.checkpoint import read_checkpoint

# small heads and batches keep every run to a few CPU seconds on `tiny`
TINY: dict[str, Any] = {"batch_size": 2, "out_dim": 64, "head_hidden_dim": 32, "head_bottleneck_dim": 16}


def _write_images(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        # two "domains": smooth gradients with a bright band, and noise
        if i % 2:
            pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        else:
            ramp = np.linspace(0, 255, 64, dtype=np.float32)
            pixels = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)
            pixels[20 + i : 30 + i, :, 0] = 250
        path = directory / f"img_{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _write_images(tmp_path_factory.mktemp("adapt_images"), 12)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny")


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def run(
    backbone: Backbone, paths: list[Path], out: Path, *, n_images: int = 4, **overrides: Any
) -> explora_module.AdaptResult:
    cfg = AdaptConfig(**{**TINY, **overrides})
    return adapt_backbone(backbone, paths[:n_images], cfg, out_dir=out, show_progress=False)


def state(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fixed_batch(backbone: Backbone, cfg: AdaptConfig, paths: list[Path]) -> list[torch.Tensor]:
    dataset = MultiCropDataset(paths, _load, multi_crop_transform(backbone, cfg), seed=cfg.seed)
    return default_collate([dataset[i] for i in range(cfg.batch_size)])


def eval_loss(model: ExploraSSL, crops: list[torch.Tensor]) -> float:
    global_crops = torch.cat(crops[:2])
    local_crops = torch.cat(crops[2:]) if len(crops) > 2 else None
    with seeded(123):
        masks = block_masks(global_crops.shape[0], model.patch_grid(global_crops.shape[-1]), model.cfg)
    model.eval()
    with torch.no_grad():
        out = model.losses(
            global_crops, local_crops, masks, teacher_temp=model.cfg.teacher_temp, update_centers=False
        )
    model.train()
    return float(out["loss"])


def trained_model(backbone: Backbone, paths: list[Path], steps: int, **overrides: Any) -> ExploraSSL:
    cfg = AdaptConfig(**{**TINY, "batch_size": 4, "lr": 1e-3, **overrides})
    with seeded(cfg.seed):
        model = ExploraSSL(backbone, cfg)
    optimizer = make_optimizer(model, cfg)
    crops = fixed_batch(backbone, cfg, paths)
    model.train()
    for step in range(steps):
        ssl_step(model, optimizer, crops, step=step, total_steps=100, steps_per_epoch=10)
    return model


# --------------------------------------------------------------------------------------------- config


def test_defaults_are_valid_and_documented() -> None:
    cfg = AdaptConfig()
    assert cfg.unfreeze_last_blocks == 1 and cfg.lora_rank == 8 and cfg.precision == "32"
    doc = AdaptConfig.__doc__ or ""
    for f in fields(AdaptConfig):
        assert f"{f.name}:" in doc, f"AdaptConfig.{f.name} is not documented"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("unfreeze_last_blocks", -1, ValueError),
        ("lora_rank", 0, ValueError),
        ("lora_alpha", 0.0, ValueError),
        ("lora_dropout", 1.0, ValueError),
        ("use_dora", "yes", TypeError),
        ("epochs", 0, ValueError),
        ("max_steps", -1, ValueError),
        ("batch_size", 1.5, TypeError),
        ("lr", float("nan"), ValueError),
        ("weight_decay", -0.1, ValueError),
        ("local_crop_size", 4, ValueError),
        ("global_crop_min_scale", 1.0, ValueError),
        ("out_dim", 1, ValueError),
        ("teacher_momentum", 1.5, ValueError),
        ("teacher_temp", 0.0, ValueError),
        ("center_momentum", 1.0, ValueError),
        ("mask_probability", -0.5, ValueError),
        ("mask_ratio_max", 0.05, ValueError),  # below mask_ratio_min
        ("precision", "16-mixed", ValueError),
        ("seed", True, TypeError),
    ],
)
def test_config_errors_name_the_field(field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        AdaptConfig(**{field: value})


def test_unfreeze_last_blocks_must_leave_adapted_blocks(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match="unfreeze_last_blocks"):
        plan_layout(tiny, AdaptConfig(unfreeze_last_blocks=4))  # tiny has 4 blocks


# ---------------------------------------------------------------------------------------------- layout


def test_vit_layout_and_trainable_count(tiny: Backbone) -> None:
    cfg = AdaptConfig(unfreeze_last_blocks=1)
    student, layout = build_student(tiny, cfg)
    assert layout.unfrozen_blocks == ("encoder.layer.3",)
    assert layout.lora_targets == tuple(
        f"encoder.layer.{i}.attention.{p}" for i in range(3) for p in ("q_proj", "v_proj")
    )
    assert "layernorm" in layout.norm_layers and "encoder.layer.0.norm1" in layout.norm_layers
    trainable = {base_parameter_name(n) for n, p in student.model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_" in n}
    assert len(lora) == 2 * 2 * 3  # A and B on q and v of 3 blocks
    assert trainable - lora == set(layout.unfrozen_parameters)
    assert "encoder.layer.3.mlp.fc1.weight" in trainable and "encoder.layer.1.norm2.bias" in trainable
    assert "encoder.layer.1.mlp.fc1.weight" not in trainable and "embeddings.mask_token" not in trainable
    assert not any(p.requires_grad for p in tiny.model.parameters())  # the original stays frozen


def test_efficientnet_layout_puts_lora_on_pointwise_convs() -> None:
    backbone = load_backbone("efficientnet_lite0")
    layout = plan_layout(backbone, AdaptConfig(unfreeze_last_blocks=1))
    modules = dict(backbone.model.named_modules())
    assert layout.lora_targets and all(
        isinstance(modules[t], nn.Conv2d) and modules[t].kernel_size == (1, 1) and modules[t].groups == 1
        for t in layout.lora_targets
    )
    assert any(t.endswith("conv_pw") for t in layout.lora_targets)
    assert any(t.endswith("conv_pwl") for t in layout.lora_targets)
    assert layout.unfrozen_blocks == ("blocks.6.0",) and layout.unfrozen_modules == ("conv_head",)
    assert not any(t.startswith("blocks.6.0.") or t == "conv_head" for t in layout.lora_targets)
    assert "bn1" in layout.norm_layers and "blocks.0.0.bn1" in layout.norm_layers
    assert "conv_stem.weight" not in layout.unfrozen_parameters


# ------------------------------------------------------------------------------------------- SSL steps


def test_ssl_steps_lower_the_loss_on_a_fixed_batch(tiny: Backbone, images: list[Path]) -> None:
    model = trained_model(tiny, images, 0)  # lr 1e-3, batch 4: the same 4 images every step
    crops = fixed_batch(tiny, model.cfg, images)
    before = eval_loss(model, crops)
    optimizer = make_optimizer(model, model.cfg)
    for step in range(6):
        ssl_step(model, optimizer, crops, step=step, total_steps=100, steps_per_epoch=10)
    after = eval_loss(model, crops)
    assert after < before - 0.05, (before, after)


def test_teacher_gets_no_gradient_and_follows_the_student(tiny: Backbone, images: list[Path]) -> None:
    model = trained_model(tiny, images, 3)
    for module in (model.teacher, model.teacher_head):
        for name, param in module.named_parameters():
            assert not param.requires_grad, name
            assert param.grad is None, name
    student = dict(model.student.model.named_parameters())
    teacher = dict(model.teacher.model.named_parameters())
    lora_b = [n for n in model.ema_names if ".lora_B." in n]
    assert lora_b and all(teacher[n].abs().sum() > 0 for n in lora_b)  # EMA moved the teacher's adapters
    assert not torch.equal(teacher[lora_b[0]], student[lora_b[0]])  # ... but more slowly than the student
    assert not model.teacher.model.training
    assert all(not m.training for m in model.teacher.modules())


def test_frozen_weights_bit_identical_adapters_and_unfrozen_moved(tiny: Backbone, images: list[Path]) -> None:
    original = state(tiny)
    model = trained_model(tiny, images, 3)
    unfrozen = set(model.layout.unfrozen_parameters)
    moved_unfrozen, frozen_checked = set(), 0
    for net in (model.student, model.teacher):
        for name, param in net.model.named_parameters():
            base = base_parameter_name(name)
            if ".lora_" in base:
                continue
            if base in unfrozen:
                if not torch.equal(param, original[base]):
                    moved_unfrozen.add(base)
            else:
                assert torch.equal(param, original[base]), f"frozen weight {name} changed"
                frozen_checked += 1
    assert frozen_checked > 20
    assert moved_unfrozen == unfrozen
    for name, param in model.student.model.named_parameters():
        if ".lora_B." in name:
            assert param.abs().sum() > 0, f"{name} still zero"
    assert same_state(state(tiny), original)  # the caller's backbone is untouched


def test_ibot_loss_is_active_for_vits(tiny: Backbone, images: list[Path], tmp_path: Path) -> None:
    result = run(tiny, images, tmp_path / "out", mask_probability=1.0)
    assert (result.history["loss_ibot"] > 0).all()
    assert (result.history["loss_koleo"] == 0).all()


def test_teacher_temperature_warms_up_linearly() -> None:
    cfg = AdaptConfig(warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_epochs=2)
    assert teacher_temperature(0, 10, cfg) == pytest.approx(0.02)
    assert teacher_temperature(10, 10, cfg) == pytest.approx(0.04)
    assert teacher_temperature(20, 10, cfg) == pytest.approx(0.06)
    assert teacher_temperature(35, 10, cfg) == pytest.approx(0.06)


# ----------------------------------------------------------------------------------------------- merge


def test_merge_check_passes_and_catches_a_corrupted_merge(tiny: Backbone, images: list[Path]) -> None:
    model = trained_model(tiny, images, 2)
    student = model.student
    batch = to_tensor_batch([_load(p) for p in images[:4]], tiny.preprocess)
    reference = backbone_features(student, batch)
    unmerged = copy.deepcopy(student)
    merged = merge_adapters(student, backbone_id="merged")
    diff = merge_check(unmerged, merged, batch)
    assert 0 <= diff <= 1e-4
    assert merge_check(reference, merged, batch) == diff
    with torch.no_grad():
        merged.model.encoder.layer[0].attention.q_proj.weight.add_(1e-2)  # a merge gone wrong
    with pytest.raises(MergeCheckError, match="merge check failed"):
        merge_check(unmerged, merged, batch)
    assert issubclass(MergeCheckError, RuntimeError)


def test_adapt_backbone_fails_when_the_merge_is_corrupted(
    tiny: Backbone, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_merge = explora_module.merge_adapters

    def corrupting_merge(student: Backbone, *, backbone_id: str) -> Backbone:
        merged = real_merge(student, backbone_id=backbone_id)
        with torch.no_grad():
            merged.model.encoder.layer[1].attention.v_proj.weight.mul_(1.01)
        return merged

    monkeypatch.setattr(explora_module, "merge_adapters", corrupting_merge)
    with pytest.raises(MergeCheckError):
        run(tiny, images, tmp_path / "out")
    assert not (tmp_path / "out" / "backbone").exists()


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_adapt_merge_check_fails_beyond_the_one_tolerance(
    tiny: Backbone, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factor: float
) -> None:
    """Merged features off by ``factor`` x MERGE_TOLERANCE: the check passes below it, fails above."""
    real_merge = explora_module.merge_adapters
    shift = factor * MERGE_TOLERANCE

    def shifted_merge(student: Backbone, *, backbone_id: str) -> Backbone:
        merged = real_merge(student, backbone_id=backbone_id)
        merged.register_forward_hook(lambda module, args, out: out + shift)
        return merged

    monkeypatch.setattr(explora_module, "merge_adapters", shifted_merge)
    if factor > 1:
        with pytest.raises(MergeCheckError, match=f"tolerance {MERGE_TOLERANCE:.3g}"):
            run(tiny, images, tmp_path / "out")
        assert not (tmp_path / "out" / "backbone").exists()
    else:
        result = run(tiny, images, tmp_path / "out")
        assert result.merge_max_abs_diff == pytest.approx(shift, abs=1e-6)


def test_adapted_backbone_is_saved_loadable_and_changed(
    tiny: Backbone, images: list[Path], tmp_path: Path
) -> None:
    result = run(tiny, images, tmp_path / "out", lr=1e-3)
    assert result.merge_max_abs_diff <= 1e-4
    loaded = load_backbone(str(result.backbone_dir))
    assert loaded.family == tiny.family and loaded.preprocess == tiny.preprocess
    assert loaded.fingerprint() == result.backbone.fingerprint() != tiny.fingerprint()
    batch = to_tensor_batch([_load(p) for p in images[:3]], tiny.preprocess)
    assert torch.allclose(loaded(batch), result.backbone(batch), atol=1e-6)
    assert not torch.allclose(loaded(batch), tiny(batch), atol=1e-4)
    assert not any(p.requires_grad for p in result.backbone.parameters())
    meta = json.loads(result.meta_path.read_text())
    assert meta["merge_max_abs_diff"] == result.merge_max_abs_diff
    assert meta["base_backbone"]["fingerprint"] == tiny.fingerprint()
    assert list(result.history.columns) == list(HISTORY_COLUMNS)
    assert result.history_path.is_file()
    assert result.loss_start == result.history["loss"].iloc[0]
    assert result.loss_end == result.history["loss"].iloc[-1]
    assert 0 <= result.agreement_end <= 1


# ------------------------------------------------------------------------------ counts, logs, determinism


class RecordingLogger:
    """The part of Lightning's Logger interface adapt_backbone uses."""

    def __init__(self, raise_at_step: int | None = None) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []
        self.raise_at_step = raise_at_step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.raise_at_step is not None and step == self.raise_at_step:
            raise KeyboardInterrupt("simulated interruption")
        self.rows.append((step, dict(metrics)))

    def save(self) -> None:
        pass


def test_trainable_share_is_reported_and_logged(tiny: Backbone, images: list[Path], tmp_path: Path) -> None:
    logger = RecordingLogger()
    cfg = AdaptConfig(**TINY)
    result = adapt_backbone(
        tiny, images[:4], cfg, out_dir=tmp_path / "out", loggers=[logger], show_progress=False
    )
    student, _ = build_student(tiny, cfg)
    params = list(student.model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    assert (result.trainable_params, result.total_params) == (trainable, total)
    assert result.trainable_pct == pytest.approx(100 * trainable / total)
    assert 0 < result.trainable_pct < 100
    logged = {k: v for _, metrics in logger.rows for k, v in metrics.items()}
    assert logged["trainable_pct"] == pytest.approx(result.trainable_pct)
    assert logged["merge_max_abs_diff"] == result.merge_max_abs_diff
    for key in (
        "ssl_loss",
        "ssl_loss_dino",
        "ssl_loss_ibot",
        "agreement",
        "lr",
        "teacher_temp",
        "epoch_ssl_loss",
    ):
        assert key in logged, key
    assert [s for s, m in logger.rows if "ssl_loss" in m] == [1, 2]


def test_runs_are_deterministic_and_leave_global_rng_alone(
    tiny: Backbone, images: list[Path], tmp_path: Path
) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = run(tiny, images, tmp_path / "a", lora_dropout=0.2)
    assert torch.equal(torch.rand(3), expected)
    b = run(tiny, images, tmp_path / "b", lora_dropout=0.2)
    assert a.history.equals(b.history)
    assert same_state(state(a.backbone), state(b.backbone))


def test_resume_gives_the_same_result_as_an_uninterrupted_run(
    tiny: Backbone, images: list[Path], tmp_path: Path
) -> None:
    cfg = AdaptConfig(**{**TINY, "epochs": 2, "lr": 1e-3, "lora_dropout": 0.1})
    paths = images[:4]  # 2 steps per epoch
    whole = adapt_backbone(tiny, paths, cfg, out_dir=tmp_path / "whole", show_progress=False)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        adapt_backbone(
            tiny,
            paths,
            cfg,
            out_dir=tmp_path / "resumed",
            checkpoint_dir=ckpt,
            loggers=[RecordingLogger(raise_at_step=3)],  # dies during epoch 2
            show_progress=False,
        )
    assert read_checkpoint(ckpt / CHECKPOINT_FILE)["step"] == 2
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT_FILE]  # one file, no temporary left
    resumed = adapt_backbone(
        tiny, paths, cfg, out_dir=tmp_path / "resumed", checkpoint_dir=ckpt, show_progress=False
    )
    assert resumed.resumed_from_step == 2 and resumed.steps == whole.steps == 4
    assert resumed.history.equals(whole.history)
    assert same_state(state(resumed.backbone), state(whole.backbone))
    # a finished run's checkpoint resumes straight to the merge
    again = adapt_backbone(
        tiny, paths, cfg, out_dir=tmp_path / "again", checkpoint_dir=ckpt, show_progress=False
    )
    assert again.resumed_from_step == 4 and same_state(state(again.backbone), state(whole.backbone))
    # a checkpoint from other settings is refused
    with pytest.raises(ValueError, match="different run"):
        adapt_backbone(
            tiny, paths, AdaptConfig(**{**TINY, "epochs": 2}), out_dir=tmp_path / "x", checkpoint_dir=ckpt
        )


def test_input_errors(tiny: Backbone, images: list[Path], tmp_path: Path) -> None:
    cfg = AdaptConfig(**TINY)
    with pytest.raises(ValueError, match="empty"):
        adapt_backbone(tiny, [], cfg, out_dir=tmp_path)
    with pytest.raises(FileNotFoundError):
        adapt_backbone(tiny, [tmp_path / "missing.png"], cfg, out_dir=tmp_path)
    with pytest.raises(TypeError, match="sequence"):
        adapt_backbone(tiny, str(images[0]), cfg, out_dir=tmp_path)
    with pytest.raises(ValueError, match="local_crop_size"):
        adapt_backbone(tiny, images[:2], AdaptConfig(**{**TINY, "local_crop_size": 8}), out_dir=tmp_path)


# ---------------------------------------------------------------------------- every field changes behaviour

# field -> (context overrides, changed value); the base run is TINY + context on 4 images (2 steps)
FIELD_CHANGES: dict[str, tuple[dict[str, Any], Any]] = {
    "unfreeze_last_blocks": ({}, 2),
    "lora_rank": ({}, 4),
    "lora_alpha": ({}, 64.0),
    "lora_dropout": ({}, 0.5),
    "use_dora": ({}, True),
    "epochs": ({}, 2),
    "max_steps": ({}, 1),
    "batch_size": ({}, 4),
    "lr": ({}, 1e-3),
    "warmup_steps": ({}, 2),
    "weight_decay": ({}, 0.5),
    "gradient_clip_val": ({}, 1e-4),
    "n_local_crops": ({}, 0),
    "local_crop_size": ({}, 32),
    "global_crop_min_scale": ({}, 0.6),
    "out_dim": ({}, 32),
    "head_hidden_dim": ({}, 16),
    "head_bottleneck_dim": ({}, 8),
    "teacher_momentum": ({}, 0.5),
    "teacher_temp": ({}, 0.07),
    "warmup_teacher_temp": ({"warmup_teacher_temp_epochs": 1.0}, 0.02),
    "warmup_teacher_temp_epochs": ({"warmup_teacher_temp": 0.02}, 1.0),
    "student_temp": ({}, 0.2),
    "center_momentum": ({}, 0.5),
    "freeze_last_layer_steps": ({}, 0),
    "ibot_weight": ({}, 0.0),
    "mask_probability": ({}, 1.0),
    "mask_ratio_min": ({"mask_probability": 1.0}, 0.4),
    "mask_ratio_max": ({"mask_probability": 1.0}, 0.9),
    "koleo_weight": ({}, 0.1),
    "precision": ({}, "bf16-mixed"),
    "seed": ({}, 1),
}


def test_field_table_covers_every_config_field() -> None:
    assert set(FIELD_CHANGES) == {f.name for f in fields(AdaptConfig)}


@pytest.fixture(scope="module")
def base_runs() -> dict[str, explora_module.AdaptResult]:
    """Base runs shared by the field tests, keyed by their context."""
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("field", list(FIELD_CHANGES))
def test_every_field_changes_behaviour(
    tiny: Backbone,
    images: list[Path],
    tmp_path: Path,
    base_runs: dict[str, explora_module.AdaptResult],
    field: str,
) -> None:
    context, value = FIELD_CHANGES[field]
    assert getattr(AdaptConfig(**{**TINY, **context}), field) != value
    key = json.dumps(context, sort_keys=True)
    if key not in base_runs:
        base_runs[key] = run(tiny, images, tmp_path / "base", **context)
    base = base_runs[key]
    changed = run(tiny, images, tmp_path / "changed", **{**context, field: value})
    assert not base.history.equals(changed.history) or not same_state(
        state(base.backbone), state(changed.backbone)
    )


# ------------------------------------------------------------------------------------ other backbones


def _random_vit(family: str) -> Backbone:
    """A small randomly initialised DINOv3 / DINOv2-with-registers backbone (no hub needed)."""
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        DINOv3ViTConfig,
        DINOv3ViTModel,
    )

    from roadwork.models.backbone import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
    from roadwork.models.hf_backbones import freeze_hf

    config_cls, model_cls = {
        "dinov3": (DINOv3ViTConfig, DINOv3ViTModel),
        "dinov2_with_registers": (Dinov2WithRegistersConfig, Dinov2WithRegistersModel),
    }[family]
    config = config_cls(
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        patch_size=16,
        image_size=112,
        num_register_tokens=2,
    )
    torch.manual_seed(0)
    preprocess = PreprocessConfig(112, 112, IMAGENET_MEAN, IMAGENET_STD, "bilinear", resize_mode="square")
    return freeze_hf(model_cls(config).eval(), family, preprocess)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["dinov3", "dinov2_with_registers"])
def test_other_vit_families_adapt_with_ibot_and_merge(
    images: list[Path], tmp_path: Path, family: str
) -> None:
    backbone = _random_vit(family)
    assert backbone.family == family and backbone.num_register_tokens == 2
    result = run(backbone, images, tmp_path / "out", mask_probability=1.0)
    assert result.layout.unfrozen_blocks and all(
        "q_proj" in t or "v_proj" in t for t in result.layout.lora_targets
    )
    assert (result.history["loss_ibot"] > 0).all() and result.merge_max_abs_diff <= 1e-4
    loaded = load_backbone(str(result.backbone_dir))
    assert loaded.family == family and loaded.fingerprint() == result.backbone.fingerprint()


# ---------------------------------------------------------------------------------------- efficientnet


@pytest.mark.slow
def test_efficientnet_trains_a_step_and_merges(images: list[Path], tmp_path: Path) -> None:
    backbone = load_backbone("efficientnet_lite0")
    original = state(backbone)
    cfg = {"n_local_crops": 1, "local_crop_size": 64, "max_steps": 1, "lr": 1e-3}
    result = run(backbone, images, tmp_path / "out", n_images=2, **cfg)
    assert result.steps == 1 and result.merge_max_abs_diff <= 1e-4
    assert (result.history["loss_ibot"] == 0).all()
    merged = state(result.backbone)
    layout = result.layout
    changed = {k for k in original if not torch.equal(original[k], merged[k])}
    lora_weights = {f"{t}.weight" for t in layout.lora_targets}
    assert changed <= lora_weights | set(layout.unfrozen_parameters)
    assert changed & lora_weights and "conv_head.weight" in changed
    loaded = load_backbone(str(result.backbone_dir))
    assert loaded.family == "timm" and loaded.fingerprint() == result.backbone.fingerprint()
