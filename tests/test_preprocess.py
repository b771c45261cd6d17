"""Tests of roadwork.data.preprocess and roadwork.data.distortions: processor parity, multi-view tiling,
validator augmentations."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import ndimage, stats
from transformers import BitImageProcessor, DINOv3ViTImageProcessor, ViTImageProcessor

from roadwork.data import distortions as D
from roadwork.data import preprocess as P
from roadwork.data.distortions import DISTORTION_PARAMS
from roadwork.data.preprocess import (
    LEVEL_DISTORTIONS,
    TrainAugment,
    ValidatorParams,
    apply_validator_params,
    render_as_validator,
    sample_validator_params,
    tile_boxes,
    to_tensor_batch,
    validator_augment,
)
from roadwork.models.backbone import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig
from roadwork.models.inference import ViewSpec, image_views


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth-plus-noise RGB image (resizing smooth content is where filters differ most)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


IMAGES = [_random_image(320, 240, 0), _random_image(181, 307, 1), _random_image(256, 256, 2)]


# ------------------------------------------------------------------------------------------ to_tensor


@pytest.mark.parametrize("interpolation, resample", [("bicubic", 3), ("bilinear", 2)])
def test_to_tensor_batch_matches_bit_image_processor(interpolation: str, resample: int) -> None:
    cfg = PreprocessConfig(224, 256, IMAGENET_MEAN, IMAGENET_STD, interpolation)
    processor = BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=resample,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    expected = processor(images=IMAGES, return_tensors="pt")["pixel_values"]
    ours = to_tensor_batch(IMAGES, cfg)
    assert ours.shape == (3, 3, 224, 224) and ours.dtype == torch.float32
    assert torch.max(torch.abs(ours - expected)).item() < 1e-5


def test_to_tensor_batch_matches_dinov3_processor_in_square_mode() -> None:
    cfg = PreprocessConfig(112, 112, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear", resize_mode="square")
    processor = DINOv3ViTImageProcessor(
        size={"height": 112, "width": 112}, resample=2, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]
    )
    expected = processor(images=IMAGES, return_tensors="pt")["pixel_values"]
    assert torch.max(torch.abs(to_tensor_batch(IMAGES, cfg) - expected)).item() < 1e-5


@pytest.mark.parametrize("interpolation, resample", [("bicubic", 3), ("bilinear", 2)])
def test_to_tensor_batch_matches_vit_image_processor_in_squash_mode(
    interpolation: str, resample: int
) -> None:
    mean, std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)
    cfg = PreprocessConfig(224, 224, mean, std, interpolation, resize_mode="squash")
    processor = ViTImageProcessor(
        size={"height": 224, "width": 224}, resample=resample, image_mean=list(mean), image_std=list(std)
    )
    expected = processor(images=IMAGES, return_tensors="pt")["pixel_values"]
    assert torch.max(torch.abs(to_tensor_batch(IMAGES, cfg) - expected)).item() < 1e-5
    # a 224 x 224 image (what the validator sends) is only normalised
    square = IMAGES[2].resize((224, 224))
    pixels = torch.from_numpy(np.asarray(square)).permute(2, 0, 1).float() / 255.0
    normalised = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.max(torch.abs(to_tensor_batch([square], cfg)[0] - normalised)).item() < 1e-5


def test_to_tensor_batch_edge_cases_and_errors() -> None:
    cfg = PreprocessConfig(64, 72, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert to_tensor_batch([], cfg).shape == (0, 3, 64, 64)
    with pytest.raises(ValueError, match=r"images\[0\] has mode 'L'"):
        to_tensor_batch([IMAGES[0].convert("L")], cfg)
    with pytest.raises(TypeError, match="sequence of PIL images"):
        to_tensor_batch(IMAGES[0], cfg)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"images\[1\]"):
        to_tensor_batch([IMAGES[0], np.zeros((4, 4, 3))], cfg)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="PreprocessConfig"):
        to_tensor_batch(IMAGES, {"image_size": 64})  # type: ignore[arg-type]


def test_preprocess_config_validation_and_round_trip() -> None:
    cfg = PreprocessConfig(224, 256, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="resize_size"):
        PreprocessConfig(224, 200, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessConfig(224, 256, IMAGENET_MEAN, IMAGENET_STD, "nearest")
    with pytest.raises(ValueError, match="std"):
        PreprocessConfig(224, 256, IMAGENET_MEAN, (0.2, 0.0, 0.2), "bicubic")
    with pytest.raises(ValueError, match="unknown keys"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "crop_pct": 0.875})


# ----------------------------------------------------------------------------------------- multi-view


@pytest.mark.parametrize(
    "width, height, grid, overlap", [(300, 200, 3, 0.25), (97, 131, 4, 0.4), (50, 50, 2, 0.0)]
)
def test_tiles_cover_the_image_with_the_stated_overlap(
    width: int, height: int, grid: int, overlap: float
) -> None:
    boxes = tile_boxes(width, height, grid, overlap)
    assert len(boxes) == grid * grid
    covered = np.zeros((height, width), dtype=int)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1  # full coverage
    for axis_len, index in ((width, (0, 2)), (height, (1, 3))):
        tile = axis_len / (grid - (grid - 1) * overlap)
        spans = sorted({(box[index[0]], box[index[1]]) for box in boxes})
        assert spans[0][0] == 0 and spans[-1][1] == axis_len
        for (a0, a1), (b0, _) in itertools.pairwise(spans):
            assert abs((a1 - b0) - overlap * tile) <= 1.0  # shared pixels between neighbours
            assert abs((a1 - a0) - tile) <= 1.0
    if overlap == 0.0:
        assert covered.max() == 1  # an exact partition


def test_tile_boxes_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="grid"):
        tile_boxes(100, 100, 0)
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes(100, 100, 3, 1.0)
    with pytest.raises(ValueError, match="too small"):
        tile_boxes(2, 100, 3, 0.25)


def test_image_views_are_the_picture_then_its_tiles() -> None:
    """The views the pipeline embeds (roadwork.models.inference.image_views) against crops at tile_boxes."""
    image = IMAGES[0]
    spec = ViewSpec("global+tiles", grid=3, overlap=0.25)
    views = image_views(image, spec)
    assert len(views) == spec.num_views == 10 and views[0] is image
    for view, box in zip(views[1:], tile_boxes(image.width, image.height, 3, 0.25), strict=True):
        assert np.array_equal(np.asarray(view), np.asarray(image.crop(box)))
    assert image_views(image, ViewSpec("global")) == [image]


# -------------------------------------------------------------------------------- validator: geometry


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [(320, 240), (150, 333), (224, 224)])
def test_each_level_gives_224_rgb_and_is_deterministic(level: int, size: tuple[int, int]) -> None:
    image = _random_image(*size, seed=level)
    out = validator_augment(image, level, np.random.default_rng(7))
    assert out.size == (224, 224) and out.mode == "RGB"
    again = validator_augment(image, level, np.random.default_rng(7))
    assert np.array_equal(np.asarray(out), np.asarray(again))
    jpeg = render_as_validator(image, level, np.random.default_rng(7))
    assert jpeg == render_as_validator(image, level, np.random.default_rng(7))
    with Image.open(io.BytesIO(jpeg)) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (224, 224)


def test_random_levels_depend_on_the_seed() -> None:
    image = IMAGES[0]
    a = validator_augment(image, 1, np.random.default_rng(1))
    b = validator_augment(image, 1, np.random.default_rng(2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_level0_is_centre_square_crop_plus_bilinear_resize() -> None:
    image = IMAGES[0]  # 320 x 240 -> centre 240 x 240 square at x = 40
    expected = image.crop((40, 0, 280, 240)).resize((224, 224), Image.Resampling.BILINEAR)
    got = validator_augment(image, 0, np.random.default_rng(0))
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def test_identity_params_equal_a_plain_resize_and_flips_mirror() -> None:
    image = IMAGES[2]  # 256 x 256
    plain = ValidatorParams(level=1, angle=0.0, crop=(0, 0, 256, 256))
    got = np.asarray(apply_validator_params(image, plain)).astype(int)
    oracle = image.resize((224, 224), Image.Resampling.BILINEAR)  # PIL's antialiased bilinear
    assert np.abs(got - np.asarray(oracle).astype(int)).max() <= 2
    h = np.asarray(apply_validator_params(image, ValidatorParams(1, 0.0, (0, 0, 256, 256), hflip=True)))
    v = np.asarray(apply_validator_params(image, ValidatorParams(1, 0.0, (0, 0, 256, 256), vflip=True)))
    base = np.asarray(apply_validator_params(image, plain))
    assert np.array_equal(h, base[:, ::-1]) and np.array_equal(v, base[::-1])


def test_rotation_leaves_black_corners() -> None:
    white = Image.new("RGB", (200, 200), (255, 255, 255))
    out = np.asarray(apply_validator_params(white, ValidatorParams(1, angle=20.0, crop=(0, 0, 200, 200))))
    assert out[0, 0].max() == 0 and out[112, 112].min() == 255
    straight = np.asarray(apply_validator_params(white, ValidatorParams(1, angle=0.0, crop=(0, 0, 200, 200))))
    assert straight.min() == 255


def test_sampled_parameters_follow_the_stated_distributions() -> None:
    rng = np.random.default_rng(123)
    n = 3000
    draws = [sample_validator_params(300, 300, 3, rng, flip_p=0.5) for _ in range(n)]
    angles = np.array([d.angle for d in draws])
    assert stats.kstest(angles, stats.uniform(loc=-20, scale=40).cdf).pvalue > 1e-3
    # square source: the first RandomResizedCrop try always fits, so the area fraction is U(0.2, 1)
    # up to rounding
    fractions = np.array([d.crop[2] * d.crop[3] / 300**2 for d in draws])
    assert all(d.crop[2] == d.crop[3] for d in draws)
    assert stats.kstest(fractions, stats.uniform(loc=0.2, scale=0.8).cdf).pvalue > 1e-3
    for attr in ("hflip", "vflip"):
        hits = sum(getattr(d, attr) for d in draws)
        assert stats.binomtest(hits, n, 0.5).pvalue > 1e-3
    for name, max_level in LEVEL_DISTORTIONS[3]:
        counts = np.bincount([dict(d.distortions).get(name, 0) for d in draws], minlength=max_level + 1)
        assert stats.chisquare(counts).pvalue > 1e-3
    # the subnet's flips are inert: by default none happen
    default = [sample_validator_params(300, 300, 1, rng) for _ in range(200)]
    assert not any(d.hflip or d.vflip for d in default)
    assert sample_validator_params(300, 300, 0, rng) == ValidatorParams(level=0)
    assert all(not d.distortions for d in default)


def test_crop_fallback_on_very_wide_images() -> None:
    # 1000 x 10: no square of >= 20 % of the area fits, so every try fails and the central crop is used
    params = sample_validator_params(1000, 10, 1, np.random.default_rng(0))
    assert params.crop == (0, 495, 10, 10)


def test_validator_argument_errors() -> None:
    with pytest.raises(ValueError, match="level"):
        validator_augment(IMAGES[0], 4, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        validator_augment(IMAGES[0], 1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flip_p"):
        validator_augment(IMAGES[0], 1, np.random.default_rng(0), flip_p=1.5)
    with pytest.raises(ValueError, match="crop"):
        apply_validator_params(IMAGES[0], ValidatorParams(level=2))


# ----------------------------------------------------------------------------- validator: distortions


def _photo(seed: int = 0) -> np.ndarray:
    return np.asarray(_random_image(224, 224, seed))


def test_contrast_is_truncated_scaling() -> None:
    img = _photo()
    expected = np.floor(img.astype(np.float64) * 0.85).astype(np.uint8)
    assert np.array_equal(D.color_contrast(img, 0.85), expected)


def test_saturation_keeps_luma_and_shrinks_chroma() -> None:
    img = _photo().astype(np.float64)
    luma = img @ np.array([0.299, 0.587, 0.114])
    for factor in (1.0, 0.4, 0.0):
        out = D.color_saturation(img.astype(np.uint8), factor).astype(np.float64)
        expected = luma[..., None] + factor * (img - luma[..., None])
        assert np.abs(out - expected).max() <= 1.5  # float32 maths + truncation


def test_blur_matches_scipy_gaussian_within_rounding() -> None:
    img = _photo(3)
    for k in (7, 9):
        offsets = np.arange(k) - (k - 1) / 2
        kernel = np.exp(-(offsets**2) / (2 * (k / 6) ** 2))
        kernel /= kernel.sum()
        ref = ndimage.correlate1d(img.astype(np.float64), kernel, axis=0, mode="mirror")
        ref = ndimage.correlate1d(ref, kernel, axis=1, mode="mirror")
        assert np.abs(D.gaussian_blur(img, k).astype(float) - ref).max() <= 1.5


def test_downscale_by_two_is_block_mean_and_round_trip_shape() -> None:
    img = _photo(4)
    small = D.resize_linear_u8(img, 112, 112)
    blocks = img.astype(np.int64).reshape(112, 2, 112, 2, 3).sum(axis=(1, 3))
    assert np.array_equal(small, ((blocks + 2) >> 2).astype(np.uint8))
    constant = np.full((224, 224, 3), 77, dtype=np.uint8)
    assert np.array_equal(D.jpeg_downscale(constant, 3), constant)
    assert D.jpeg_downscale(img, 3).shape == img.shape


def test_noise_has_the_stated_variance_and_follows_its_seed() -> None:
    grey = np.full((224, 224, 3), 128, dtype=np.uint8)
    a = D.gaussian_noise_color(grey, 0.001, np.random.default_rng(5))
    b = D.gaussian_noise_color(grey, 0.001, np.random.default_rng(5))
    assert np.array_equal(a, b)
    luma = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    # noise of variance v on Y' (scaled by 255 / 219 back to Y), in 0..255 units
    expected_sd = np.sqrt(0.001) * 255 * 255 / 219
    assert abs(luma.std() / expected_sd - 1) < 0.1
    assert abs(luma.mean() - 128) < 1.5


def test_distortion_levels_use_the_subnet_parameters() -> None:
    assert DISTORTION_PARAMS["CS"][:2] == (0.4, 0.3) and DISTORTION_PARAMS["GB"][:2] == (7, 9)
    image = _random_image(224, 224, 9)
    base = ValidatorParams(3, 0.0, (0, 0, 224, 224))
    clean = np.asarray(apply_validator_params(image, base)).astype(int)
    for name in ("CS", "CC", "JPEG", "GNC", "GB"):
        params = ValidatorParams(3, 0.0, (0, 0, 224, 224), distortions=((name, 2),), noise_seed=1)
        assert np.abs(np.asarray(apply_validator_params(image, params)).astype(int) - clean).mean() > 1.0, (
            name
        )


# --------------------------------------------------------------------------------------- TrainAugment


def test_train_augment_is_deterministic_and_level_probs_are_used() -> None:
    image = IMAGES[1]
    aug = TrainAugment()
    a, b = aug(image, np.random.default_rng(3)), aug(image, np.random.default_rng(3))
    assert a.size == (224, 224) and np.array_equal(np.asarray(a), np.asarray(b))
    only_l0 = TrainAugment(level_probs=(1, 0, 0, 0), jpeg=False)
    expected = validator_augment(image, 0, np.random.default_rng(0))
    assert np.array_equal(np.asarray(only_l0(image, np.random.default_rng(11))), np.asarray(expected))


@pytest.mark.parametrize(
    "extra",
    [{"color_jitter": 0.4}, {"erase_p": 1.0}, {"flip_p": 1.0}, {"jpeg": True}],
    ids=lambda e: next(iter(e)),
)
def test_each_train_augment_extra_changes_the_output(extra: dict) -> None:
    image = IMAGES[0]
    base_kwargs = {"level_probs": (0, 1, 0, 0), "jpeg": False}
    base = TrainAugment(**base_kwargs)(image, np.random.default_rng(21))
    changed = TrainAugment(**{**base_kwargs, **extra})(image, np.random.default_rng(21))
    assert np.abs(np.asarray(changed).astype(int) - np.asarray(base).astype(int)).mean() > 0.5


def test_train_augment_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        TrainAugment(level_probs=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="4 non-negative"):
        TrainAugment(level_probs=(0.5, 0.5))
    with pytest.raises(ValueError, match="color_jitter"):
        TrainAugment(color_jitter=1.0)
    with pytest.raises(ValueError, match="erase_p"):
        TrainAugment(erase_p=-0.1)


def test_renders_from_a_copy_with_a_512_pixel_short_side_never_upsample_the_crop() -> None:
    """The rule ingest keeps (``ingest.working_min_side: 512``): a validator crop covers at least 20 % of the
    area, so on such a copy its side is >= sqrt(0.2) * 512 = 229 >= 224 pixels, whatever the draw."""
    rng = np.random.default_rng(0)
    for width, height in [(512, 512), (683, 512), (512, 910), (2000, 512)]:
        for _ in range(300):
            params = P.sample_validator_params(width, height, int(rng.integers(1, 4)), rng)
            _, _, side_h, side_w = params.crop
            assert min(side_h, side_w) >= P.VALIDATOR_IMAGE_SIZE, (width, height, params.crop)
    # the rule is tight: a 384-pixel copy (the old working size) does upsample small crops
    small = [P.sample_validator_params(512, 384, 1, rng).crop[2] for _ in range(300)]
    assert min(small) < P.VALIDATOR_IMAGE_SIZE


def test_the_rotated_window_is_the_crop_of_torchvisions_full_rotation() -> None:
    """Rotating only the crop window is a shortcut; it must give torchvision's pixels exactly."""
    rng = np.random.default_rng(1)
    for width, height in [(97, 61), (224, 224), (683, 512), (300, 533)]:
        tensor = torch.from_numpy(rng.random((3, height, width), dtype=np.float32))
        for _ in range(20):
            params = P.sample_validator_params(width, height, 1, rng)
            top, left, h, w = params.crop
            expected = TF.rotate(tensor, params.angle)[..., top : top + h, left : left + w]
            assert torch.equal(P._rotated_window(tensor, params.angle, params.crop), expected)
