"""Tests of roadwork.deploy: policy folding, Hugging Face export (real offline pipeline), ONNX export."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    DINOv3ViTConfig,
    DINOv3ViTModel,
)

from roadwork.data.preprocess import to_tensor_batch
from roadwork.deploy import (
    MODEL_CARD_FIELDS,
    export_hf,
    export_onnx,
    folded_classifier,
    hf_probabilities,
    onnx_outputs,
    onnx_probabilities,
    validate_model_card,
)
from roadwork.deploy.onnx_export import FoldedClassifier
from roadwork.models.backbone import Backbone, load_backbone
from roadwork.models.head import HeadModel, predict_logits
from roadwork.policy import Policy, TemperatureScaling, fit_policy

CARD = {
    "model_name": "roadwork-tiny",
    "description": "Frozen backbone, linear head, calibrated MCC threshold.",
    "version": "1.2.3",
    "submitted_by": "5FakeHotkeyAddress",
    "submission_time": "2025-06-01T12:00:00Z",
}
# ours vs exported: same float32 operations up to summation order, so far below this
TOL = 1e-4


def _head(
    feature_dim: int, *, head: str = "linear", num_views: int = 1, aggregation: str = "topk_mean"
) -> HeadModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(feature_dim)
        return HeadModel(
            feature_dim=feature_dim, num_views=num_views, head=head, mlp_hidden=8, dropout=0.1,
            aggregation=aggregation, topk=3, attention_hidden=8,
        ).eval()  # fmt: skip


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """Smooth random RGB images of (width, height) sizes (upsampled noise, so resizing matters)."""
    rng = np.random.default_rng(seed)
    out = []
    for width, height in sizes:
        coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        out.append(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return out


@dataclass
class Trained:
    """A backbone with a head and a policy whose decisions split a handful of images."""

    backbone: Backbone
    head: HeadModel
    policy: Policy
    images: list[Image.Image]
    pixels: torch.Tensor
    probability: np.ndarray  # our path: to_tensor_batch -> backbone -> head -> policy
    decision: np.ndarray


def _train(backbone: Backbone, images: list[Image.Image], seed: int = 0) -> Trained:
    """A linear head scaled so the images' margins are ~N(0, 2), and a policy fitted on random margins."""
    pixels = to_tensor_batch(images, backbone.preprocess)
    with torch.no_grad():
        features = backbone(pixels).numpy()[:, None]
    head = _head(backbone.feature_dim)
    logits = predict_logits(head, features)
    z = logits[:, 1] - logits[:, 0]
    with torch.no_grad():
        linear = head.classifier[1]
        linear.weight.mul_(2.0 / float(z.std()))
        linear.bias.mul_(2.0 / float(z.std()))
        linear.bias[1] -= 2.0 * float(z.mean()) / float(z.std())
    rng = np.random.default_rng(seed)
    z_cal = rng.normal(0.0, 2.0, 400)
    y_cal = (z_cal + rng.normal(0.0, 1.5, 400) > 0.3).astype(int)
    policy = fit_policy(z_cal, y_cal, split_hash="test-split")
    logits = predict_logits(head, features)
    applied = policy.apply(logits[:, 1] - logits[:, 0])
    assert 0 < applied["decision"].sum() < len(images), "the test needs both decisions among the images"
    return Trained(backbone, head, policy, images, pixels, applied["probability"], applied["decision"])


@pytest.fixture(scope="module")
def tiny() -> Trained:
    sizes = [(160, 120), (130, 200), (112, 112), (300, 257), (300, 402), (140, 90), (301, 300), (150, 150)]
    return _train(load_backbone("tiny"), _images(sizes))


@pytest.fixture(scope="module")
def effnet() -> Trained:
    sizes = [(224, 224), (300, 402), (640, 480), (227, 300), (224, 224), (500, 375)]
    return _train(load_backbone("efficientnet_lite0"), _images(sizes, seed=1))


def _softmax32(logits: np.ndarray) -> np.ndarray:
    """transformers.pipelines.image_classification.softmax, in float32 like the pipeline."""
    logits = logits.astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("calibrator", ["temperature", "platt", "beta", "isotonic"])
def test_folded_softmax_is_the_policy_probability(calibrator: str) -> None:
    rng = np.random.default_rng(1)
    dim = 32
    head = _head(dim)
    features = rng.normal(0.0, 1.0, (3000, dim))
    weight64 = head.classifier[1].weight.detach().double().numpy()
    bias64 = head.classifier[1].bias.detach().double().numpy()
    z = features @ (weight64[1] - weight64[0]) + (bias64[1] - bias64[0])
    labels = (z + rng.normal(0.0, 0.5, z.size) > np.quantile(z, 0.4)).astype(int)
    policy = fit_policy(z, labels, calibrator=calibrator, split_hash="s")
    applied = policy.apply(z)
    weight, bias = folded_classifier(head, policy)
    assert weight.shape == (2, dim) and bias.shape == (2,) and weight.dtype == torch.float64

    logits = features @ weight.numpy().T + bias.numpy()
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = shifted[:, 1] / shifted.sum(axis=1)
    assert np.max(np.abs(p - applied["probability"])) < 1e-6
    away = np.abs(z - policy.decision_margin) > 1e-6
    assert away.mean() > 0.99
    np.testing.assert_array_equal((p > 0.5)[away], applied["decision"][away])

    # float32 all the way, as the exported model and the pipeline compute it; plus margins close to z*
    direction = (weight64[1] - weight64[0]) / np.sum((weight64[1] - weight64[0]) ** 2)
    deltas = np.concatenate([-np.logspace(-5, 0, 50), np.logspace(-5, 0, 50)])
    near = features[: deltas.size] + np.outer(policy.decision_margin + deltas - z[: deltas.size], direction)
    x32 = torch.from_numpy(np.concatenate([features, near])).float()
    with torch.no_grad():
        folded32 = torch.nn.functional.linear(x32, weight.float(), bias.float()).numpy()
        head_logits32 = head(x32[:, None]).numpy()
    p32 = _softmax32(folded32)[:, 1]
    ours = policy.apply((head_logits32[:, 1] - head_logits32[:, 0]).astype(np.float64))
    z_true = x32.double().numpy() @ (weight64[1] - weight64[0]) + (bias64[1] - bias64[0])
    outside_band = np.abs(z_true - policy.decision_margin) > 1e-5
    np.testing.assert_array_equal((p32 > 0.5)[outside_band], ours["decision"][outside_band])
    assert np.max(np.abs(p32 - ours["probability"])) < 1e-6


def test_margin_exactly_at_z_star_gives_exactly_one_half() -> None:
    # at z == z*, the folded softmax is exactly 0.5: round(0.5) == 0 and 0.5 > 0.5 is False, as decision says
    head = _head(4)
    with torch.no_grad():
        head.classifier[1].bias.copy_(torch.tensor([0.0, 0.75]))
    policy = Policy(
        calibrator=TemperatureScaling(1.0).to_dict(), threshold=0.5, decision_margin=0.75, scale=1.0,
        split_hash="s",
    )  # fmt: skip
    weight, bias = folded_classifier(head, policy)
    logits = (weight @ torch.zeros(4, dtype=torch.float64) + bias).numpy()
    p = _softmax32(logits)[1]
    assert p == 0.5 and round(float(p)) == 0
    assert not policy.apply(np.array([0.75]))["decision"][0]


def test_fold_rejects_what_cannot_be_folded() -> None:
    policy = fit_policy(np.linspace(-3, 3, 50), (np.arange(50) > 20).astype(int), split_hash="s")
    with pytest.raises(ValueError, match=r"MLP head.*train\.head=linear"):
        folded_classifier(_head(8, head="mlp"), policy)
    with pytest.raises(ValueError, match=r"10 views.*embed\.views=global"):
        folded_classifier(_head(8, num_views=10), policy)
    with pytest.raises(ValueError, match=r"embed\.views=global"):
        folded_classifier(_head(8, num_views=10, aggregation="attention"), policy)
    calibrator = TemperatureScaling(1.0).to_dict()
    never = Policy(
        calibrator=calibrator, threshold=1.0, decision_margin=float("inf"), scale=1.0, split_hash="s"
    )
    always = Policy(
        calibrator=calibrator, threshold=0.0, decision_margin=-float("inf"), scale=1.0, split_hash="s"
    )
    with pytest.raises(ValueError, match="never decides roadwork"):
        folded_classifier(_head(8), never)
    with pytest.raises(ValueError, match="always decides roadwork"):
        folded_classifier(_head(8), always)
    with pytest.raises(TypeError, match="HeadModel"):
        folded_classifier(torch.nn.Linear(8, 2), policy)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Policy"):
        folded_classifier(_head(8), {"decision_margin": 0.0})  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- Hugging Face export


def test_hf_export_round_trips_through_the_real_pipeline(tiny: Trained, tmp_path: Path) -> None:
    card = {**CARD, "metrics": {"val_test MCC": 0.8123, "n images": 850}}
    out = export_hf(tiny.backbone, tiny.head, tiny.policy, tmp_path / "export", model_card=card)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["README.md", "config.json", "model.safetensors", "model_card.json", "preprocessor_config.json"]
    )
    assert not list(tmp_path.glob(".export.*")), "the temporary build folder must be gone"

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Dinov2ForImageClassification"]
    assert config["id2label"] == {"0": "None", "1": "Roadwork"}
    assert config["label2id"] == {"None": 0, "Roadwork": 1}
    loaded = AutoConfig.from_pretrained(str(out))
    assert loaded.id2label == {0: "None", 1: "Roadwork"} and loaded.label2id == {"None": 0, "Roadwork": 1}
    weights = load_file(str(out / "model.safetensors"))
    weight, bias = folded_classifier(tiny.head, tiny.policy)
    torch.testing.assert_close(weights["classifier.weight"], weight.float())
    torch.testing.assert_close(weights["classifier.bias"], bias.float())

    assert json.loads((out / "model_card.json").read_text()) == CARD
    readme = (out / "README.md").read_text()
    assert "## Metrics" in readme and "| val_test MCC | 0.8123 |" in readme and "| n images | 850 |" in readme
    assert f"{tiny.policy.decision_margin:.6g}" in readme

    scores = hf_probabilities(out, tiny.images)
    assert np.max(np.abs(scores - tiny.probability)) < TOL
    np.testing.assert_array_equal(scores > 0.5, tiny.decision)
    np.testing.assert_array_equal(np.round(scores).astype(bool), tiny.decision)
    assert isinstance(AutoImageProcessor.from_pretrained(str(out)), BitImageProcessor)


def test_hf_export_with_registers_excludes_them_like_ours(tmp_path: Path) -> None:
    config = Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56,
        num_register_tokens=4,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Dinov2WithRegistersModel(config).eval()
        with torch.no_grad():  # registers start at zero; make them matter
            model.embeddings.register_tokens.normal_(0, 1.0)
    model.save_pretrained(str(tmp_path / "backbone"))
    BitImageProcessor(
        size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, resample=3, image_mean=[0.5] * 3,
        image_std=[0.25] * 3,
    ).save_pretrained(str(tmp_path / "backbone"))  # fmt: skip
    backbone = load_backbone(str(tmp_path / "backbone"))
    assert backbone.family == "dinov2_with_registers"
    trained = _train(backbone, _images([(80, 60), (64, 64), (100, 130), (90, 90), (70, 120), (200, 150)]))
    out = export_hf(backbone, trained.head, trained.policy, tmp_path / "export", model_card=CARD)
    assert json.loads((out / "config.json").read_text())["architectures"] == [
        "Dinov2WithRegistersForImageClassification"
    ]
    scores = hf_probabilities(out, trained.images)
    assert np.max(np.abs(scores - trained.probability)) < TOL
    np.testing.assert_array_equal(scores > 0.5, trained.decision)


def _tiny_dinov3(directory: Path) -> Backbone:
    config = DINOv3ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
        image_size=64, num_register_tokens=2,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        DINOv3ViTModel(config).eval().save_pretrained(str(directory))
    return load_backbone(str(directory))


def test_exports_interpolate_position_embeddings_like_torch(tmp_path: Path) -> None:
    # the real DINOv2 checkpoints have 37 x 37 position embeddings (518 / 14) and see 224 x 224 inputs, so
    # both exports must run transformers' bicubic interpolation of the position embeddings as torch does
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=518
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Dinov2Model(config).eval()
        with torch.no_grad():
            model.embeddings.position_embeddings.normal_(0, 1.0)
    model.save_pretrained(str(tmp_path / "backbone"))
    BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
    ).save_pretrained(str(tmp_path / "backbone"))  # fmt: skip
    backbone = load_backbone(str(tmp_path / "backbone"))
    trained = _train(backbone, _images([(224, 224), (300, 402), (640, 480), (256, 256), (500, 375)]))
    path = export_onnx(backbone, trained.head, trained.policy, tmp_path / "model.onnx")
    assert np.max(np.abs(onnx_probabilities(path, trained.pixels) - trained.probability)) < TOL
    out = export_hf(backbone, trained.head, trained.policy, tmp_path / "export", model_card=CARD)
    assert np.max(np.abs(hf_probabilities(out, trained.images) - trained.probability)) < TOL


def test_hf_export_of_dinov3_is_not_implemented(tmp_path: Path) -> None:
    backbone = _tiny_dinov3(tmp_path / "backbone")
    trained = _train(backbone, _images([(80, 60), (64, 64), (100, 130), (90, 90), (70, 120), (200, 150)]))
    with pytest.raises(NotImplementedError, match=r"'dinov3'.*DINOv3ViTForImageClassification"):
        export_hf(backbone, trained.head, trained.policy, tmp_path / "export", model_card=CARD)
    assert not (tmp_path / "export").exists()
    # the ONNX export is the route for DINOv3
    path = export_onnx(backbone, trained.head, trained.policy, tmp_path / "dinov3.onnx")
    probability = onnx_probabilities(path, trained.pixels)
    assert np.max(np.abs(probability - trained.probability)) < TOL


def test_hf_export_of_the_timm_backbone_matches_ours(effnet: Trained, tmp_path: Path) -> None:
    out = export_hf(effnet.backbone, effnet.head, effnet.policy, tmp_path / "export", model_card=CARD)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "efficientnet" and config["hidden_act"] == "relu6"
    assert config["architectures"] == ["EfficientNetForImageClassification"]
    assert "problem_type" not in config or config["problem_type"] is None
    loaded = AutoConfig.from_pretrained(str(out))
    assert loaded.id2label == {0: "None", 1: "Roadwork"} and loaded.label2id == {"None": 0, "Roadwork": 1}

    # the pipeline uses our exact preprocessing (this backbone's own: BitImageProcessor), so even non-square
    # images agree
    processor = AutoImageProcessor.from_pretrained(str(out))
    assert isinstance(processor, BitImageProcessor)
    scores = hf_probabilities(out, effnet.images)
    assert np.max(np.abs(scores - effnet.probability)) < TOL
    np.testing.assert_array_equal(scores > 0.5, effnet.decision)


def test_hf_export_holds_max_pooling_and_refuses_gem(effnet: Trained, tmp_path: Path) -> None:
    from roadwork.deploy.predictor import Predictor, PredictorSpec

    maxed = effnet.backbone.reconfigured(input_size=224, pooling="max")
    out = export_hf(maxed, effnet.head, effnet.policy, tmp_path / "maxed", model_card=CARD)
    assert json.loads((out / "config.json").read_text())["pooling_type"] == "max"
    squares = [image for image in effnet.images if image.size == (224, 224)]
    assert squares
    ours = Predictor(maxed, effnet.head, effnet.policy, PredictorSpec()).predict(
        [_jpeg(image) for image in squares]
    )
    scores = hf_probabilities(out, [Image.open(io.BytesIO(_jpeg(image))) for image in squares])
    assert np.max(np.abs(scores - ours["probability"].to_numpy())) < TOL
    gem = effnet.backbone.reconfigured(input_size=None, pooling="gem")
    with pytest.raises(ValueError, match=r"backbone\.pooling=avg or max"):
        export_hf(gem, effnet.head, effnet.policy, tmp_path / "gem", model_card=CARD)
    assert not (tmp_path / "gem").exists()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_model_card_is_validated_field_by_field(tiny: Trained, tmp_path: Path) -> None:
    assert validate_model_card(CARD) == CARD
    assert tuple(validate_model_card(CARD)) == MODEL_CARD_FIELDS
    moment = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
    assert (
        validate_model_card({**CARD, "submission_time": moment})["submission_time"] == "2025-06-01T12:00:00Z"
    )
    assert (
        validate_model_card({**CARD, "submission_time": "2025-06-01T12:00:00.250+00:00"})["submission_time"]
        == "2025-06-01T12:00:00.250000Z"
    )
    bad = {
        "version": ["1.2", "v1.2.3", "1.2.3.4", "1.2.x", 1.2, ""],
        "submission_time": [
            "2025-06-01T12:00:00",  # no zone
            "2025-06-01T14:00:00+02:00",  # not UTC
            "2025-06-01",
            "yesterday",
            1748779200,
            datetime(2025, 6, 1, 12, 0),
            datetime(2025, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=1))),
        ],
        "model_name": ["", "   ", None],
        "description": [3],
        "submitted_by": [""],
    }
    for field, values in bad.items():
        for value in values:
            with pytest.raises(ValueError, match=rf"model_card\['{field}'\]"):
                validate_model_card({**CARD, field: value})
    with pytest.raises(ValueError, match=r"missing \['submitted_by'\]"):
        validate_model_card({k: v for k, v in CARD.items() if k != "submitted_by"})
    with pytest.raises(ValueError, match=r"unknown fields \['licence'\]"):
        validate_model_card({**CARD, "licence": "MIT"})
    with pytest.raises(ValueError, match=r"model_card\['metrics'\]"):
        validate_model_card({**CARD, "metrics": [0.5]})
    # a bad card fails before anything is written
    with pytest.raises(ValueError, match=r"model_card\['version'\]"):
        export_hf(
            tiny.backbone, tiny.head, tiny.policy, tmp_path / "export", model_card={**CARD, "version": "1"}
        )
    assert not (tmp_path / "export").exists()


def test_hf_export_errors(tiny: Trained, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        export_hf(tiny.backbone, tiny.head, tiny.policy, occupied, model_card=CARD)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_hf(tiny.backbone, tiny.head, tiny.policy, empty, model_card=CARD) == empty
    assert (empty / "config.json").is_file()
    with pytest.raises(ValueError, match="32-d features but the backbone gives 128-d"):
        export_hf(tiny.backbone, _head(32), tiny.policy, tmp_path / "a", model_card=CARD)
    with pytest.raises(ValueError, match="MLP head"):
        export_hf(tiny.backbone, _head(128, head="mlp"), tiny.policy, tmp_path / "b", model_card=CARD)
    with pytest.raises(ValueError, match=r"embed\.views=global"):
        export_onnx(tiny.backbone, _head(128, num_views=10), tiny.policy, tmp_path / "c.onnx")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------------ ONNX


def _check_onnx(trained: Trained, path: Path, opset: int) -> None:
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["probability", "logits"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["roadwork.id2label"]) == {"0": "None", "1": "Roadwork"}
    assert json.loads(metadata["roadwork.preprocess"]) == trained.backbone.preprocess.to_dict()
    assert json.loads(metadata["roadwork.policy"])["decision_margin"] == trained.policy.decision_margin

    weight, bias = folded_classifier(trained.head, trained.policy)
    reference = FoldedClassifier(trained.backbone, weight.float(), bias.float())
    for batch in (trained.pixels, trained.pixels[:1]):  # dynamic batch
        outputs = onnx_outputs(path, batch)
        with torch.no_grad():
            probability, logits = reference(batch)
        assert outputs["probability"].shape == (len(batch),) and outputs["logits"].shape == (len(batch), 2)
        assert np.max(np.abs(outputs["logits"] - logits.numpy())) < TOL
        assert np.max(np.abs(outputs["probability"] - probability.numpy())) < TOL
    probability = onnx_probabilities(path, trained.pixels.numpy())
    assert np.max(np.abs(probability - trained.probability)) < TOL
    np.testing.assert_array_equal(probability > 0.5, trained.decision)


def test_onnx_export_matches_torch_and_the_policy(tiny: Trained, tmp_path: Path) -> None:
    path = export_onnx(tiny.backbone, tiny.head, tiny.policy, tmp_path / "sub" / "model.onnx")
    _check_onnx(tiny, path, 17)
    with pytest.raises(ValueError, match=r"pixel_values must have shape \[B, 3, 112, 112\]"):
        onnx_outputs(path, np.zeros((1, 3, 64, 64), dtype=np.float32))


@pytest.mark.slow  # the torch.export-based exporter takes ~15 s even for the tiny backbone
def test_onnx_export_with_the_dynamo_exporter(tiny: Trained, tmp_path: Path) -> None:
    path = export_onnx(tiny.backbone, tiny.head, tiny.policy, tmp_path / "model.onnx", opset=18)
    _check_onnx(tiny, path, 18)


@pytest.mark.slow  # ~10 s: tracing and exporting EfficientNet-Lite0
def test_onnx_export_of_the_timm_backbone(effnet: Trained, tmp_path: Path) -> None:
    path = export_onnx(effnet.backbone, effnet.head, effnet.policy, tmp_path / "model.onnx")
    _check_onnx(effnet, path, 17)


def test_folded_none_logit_is_zero_so_softmax_and_sigmoid_decide_alike() -> None:
    # transformers versions differ in the pipeline's post-processing (4.48 applies a sigmoid to a config
    # naming a problem_type): with the "None" logit identically 0 both give the same score and decision
    rng = np.random.default_rng(4)
    head = _head(6)
    features = rng.normal(0.0, 1.0, (2000, 6))
    weight64 = head.classifier[1].weight.detach().double().numpy()
    bias64 = head.classifier[1].bias.detach().double().numpy()
    z = features @ (weight64[1] - weight64[0]) + (bias64[1] - bias64[0])
    policy = fit_policy(z, (z + rng.normal(0.0, 1.0, z.size) > 0.3).astype(int), split_hash="s")
    weight, bias = folded_classifier(head, policy)
    assert torch.count_nonzero(weight[0]) == 0 and bias[0] == 0
    logits = features @ weight.numpy().T + bias.numpy()
    softmax = _softmax32(logits.astype(np.float32))[:, 1]
    sigmoid = 1.0 / (1.0 + np.exp(-logits[:, 1].astype(np.float32)))
    np.testing.assert_allclose(softmax, sigmoid, atol=1e-6)
    away = np.abs(z - policy.decision_margin) > 1e-6
    decision = policy.apply(z)["decision"]
    np.testing.assert_array_equal((softmax > 0.5)[away], decision[away])
    np.testing.assert_array_equal((sigmoid > 0.5)[away], decision[away])


def test_probe_becomes_a_linear_head_with_the_probes_margin() -> None:
    """The exportable stand-in: scikit-learn's own decision_function is the oracle for the folded
    standardisation; the result folds and exports like any linear head, and only that form is accepted."""
    from dataclasses import replace

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from roadwork.deploy.fallback import linear_head_from_probe, probe_head_config
    from roadwork.train.head_config import HeadTrainConfig
    from roadwork.train.probe import Probe

    rng = np.random.default_rng(5)
    x = (rng.normal(size=(200, 16)) * rng.uniform(0.1, 20.0, 16) + rng.normal(size=16) * 7).astype(np.float32)
    y = (x[:, :3].sum(axis=1) + rng.normal(size=200) > np.median(x[:, :3].sum(axis=1))).astype(int)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)).fit(x, y)
    probe = Probe(pipeline, C=0.5, select_mcc=0.0, select_log_loss=0.0)
    trained = HeadTrainConfig(head="mlp", feature_transform="sqrt_l2", dropout=0.3)
    config = probe_head_config(trained)
    assert (config.head, config.feature_transform, config.dropout) == ("linear", "none", 0.0)
    head = linear_head_from_probe(probe, config)
    with torch.inference_mode():
        logits = head(torch.from_numpy(x[:, None, :])).double().numpy()
    assert np.all(logits[:, 0] == 0.0)
    np.testing.assert_allclose(logits[:, 1], pipeline.decision_function(x), atol=1e-4 * np.abs(logits).max())
    policy = Policy(
        calibrator=TemperatureScaling(1.0).to_dict(), threshold=0.5, decision_margin=0.0, scale=1.0,
        split_hash="s",
    )  # fmt: skip
    weight, bias = folded_classifier(head, policy)  # the form export_hf writes
    assert torch.equal(weight[0], torch.zeros(16, dtype=weight.dtype)) and float(bias[0]) == 0.0
    with pytest.raises(ValueError, match="linear head on raw features"):
        linear_head_from_probe(probe, replace(config, head="mlp"))
