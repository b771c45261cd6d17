"""Feature cache and batched multi-view embedding (roadwork.train.embed) on the tiny backbone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roadwork.data.preprocess import TrainAugment, tile_boxes, to_tensor_batch
from roadwork.models.backbone import load_backbone
from roadwork.train.embed import FeatureCache, Render, ViewSpec, embed_images, render_image

AUGMENT = TrainAugment()


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str]]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths, shas = [], []
    for i in range(7):
        pixels = rng.integers(0, 256, size=(60 + 4 * i, 90, 3), dtype=np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(pixels).save(path, quality=95)
        paths.append(path)
        shas.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return paths, shas


def cache_for(tmp_path: Path, backbone) -> FeatureCache:
    return FeatureCache(tmp_path / "cache", backbone.fingerprint())


def reference_features(backbone, path: Path, sha: str, render: Render, spec: ViewSpec) -> np.ndarray:
    """One image at a time, views one by one: the obvious loop the batched path must agree with."""
    with Image.open(path) as image:
        rendered = render_image(image.convert("RGB"), render, sha)
    views = [rendered]
    if spec.views == "global+tiles":
        views += [
            rendered.crop(b) for b in tile_boxes(rendered.width, rendered.height, spec.grid, spec.overlap)
        ]
    with torch.inference_mode():
        return np.stack([backbone(to_tensor_batch([v], backbone.preprocess))[0].numpy() for v in views])


@pytest.mark.parametrize("views", ["global", "global+tiles"])
def test_batched_multiview_equals_one_view_at_a_time(tmp_path, backbone, images, views) -> None:
    paths, shas = images
    spec = ViewSpec(views, grid=3, overlap=0.25)
    features, stats = embed_images(
        backbone,
        paths,
        shas,
        render=Render(),
        spec=spec,
        cache=cache_for(tmp_path, backbone),
        batch_size=3,
        show_progress=False,
    )
    assert features.shape == (7, spec.num_views, backbone.feature_dim) and features.dtype == np.float32
    assert stats.n_computed == 7 and stats.n_views_computed == 7 * spec.num_views
    for i in (0, 6):
        expected = reference_features(backbone, paths[i], shas[i], Render(), spec)
        np.testing.assert_allclose(features[i], expected, atol=1e-5)


def test_cache_is_reused_and_shared_between_view_settings(tmp_path, backbone, images) -> None:
    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    first, _ = embed_images(
        backbone, paths, shas, render=Render(), spec=ViewSpec("global"), cache=cache, show_progress=False
    )
    again, stats = embed_images(
        backbone, paths, shas, render=Render(), spec=ViewSpec("global"), cache=cache, show_progress=False
    )
    assert stats.n_computed == 0 and np.array_equal(first, again)
    tiles, stats = embed_images(
        backbone,
        paths,
        shas,
        render=Render(),
        spec=ViewSpec("global+tiles"),
        cache=cache,
        show_progress=False,
    )
    # the global part came from the cache; only the tiles were computed
    assert stats.n_views_computed == 7 * 9
    assert np.array_equal(tiles[:, :1], first)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, backbone, images, monkeypatch) -> None:
    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    calls = {"n": 0}
    original = type(backbone).forward

    def failing_forward(self, pixel_values):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, pixel_values)

    monkeypatch.setattr(type(backbone), "forward", failing_forward)
    with pytest.raises(KeyboardInterrupt):
        embed_images(
            backbone,
            paths,
            shas,
            render=Render(),
            spec=ViewSpec(),
            cache=cache,
            batch_size=2,
            show_progress=False,
        )
    monkeypatch.setattr(type(backbone), "forward", original)
    leftovers = list(cache.root.rglob("*.tmp"))
    assert leftovers == []
    resumed, stats = embed_images(
        backbone,
        paths,
        shas,
        render=Render(),
        spec=ViewSpec(),
        cache=cache,
        batch_size=2,
        show_progress=False,
    )
    assert stats.n_computed == 7 - 4  # two whole batches of 2 had been cached before the interruption
    fresh, _ = embed_images(
        backbone,
        paths,
        shas,
        render=Render(),
        spec=ViewSpec(),
        cache=FeatureCache(tmp_path / "fresh", backbone.fingerprint()),
        show_progress=False,
    )
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_augmented_copies_are_deterministic_per_image_and_differ_between_copies(images) -> None:
    paths, shas = images
    with Image.open(paths[0]) as image:
        image = image.convert("RGB")
    a = Render("augmented", copy=0, augment=AUGMENT, seed=0)
    b = Render("augmented", copy=1, augment=AUGMENT, seed=0)
    c = Render("augmented", copy=0, augment=AUGMENT, seed=1)
    first = np.asarray(render_image(image, a, shas[0]))
    assert np.array_equal(first, np.asarray(render_image(image, a, shas[0])))
    assert not np.array_equal(first, np.asarray(render_image(image, b, shas[0])))
    assert not np.array_equal(first, np.asarray(render_image(image, c, shas[0])))
    assert len({a.key, b.key, c.key, Render().key, Render(flip=True).key}) == 5
    other = Render("augmented", copy=0, augment=TrainAugment(color_jitter=0.2), seed=0)
    assert other.key != a.key  # other augmentation settings never reuse cached copies


def test_clean_render_is_the_validator_level0_jpeg_and_flip_mirrors_it(images) -> None:
    paths, shas = images
    with Image.open(paths[1]) as image:
        image = image.convert("RGB")
    clean = render_image(image, Render(), shas[1])
    assert clean.size == (224, 224)
    flipped = render_image(image, Render(flip=True), shas[1])
    assert np.array_equal(np.asarray(flipped), np.asarray(clean)[:, ::-1])


def test_cache_refuses_a_folder_of_another_backbone(tmp_path: Path) -> None:
    FeatureCache(tmp_path, "a" * 64)
    with pytest.raises(ValueError, match="belongs to backbone"):
        FeatureCache(tmp_path, "a" * 16 + "b" * 48)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"views": "tiles"}, "ViewSpec.views"),
        ({"grid": 1}, "ViewSpec.grid"),
        ({"overlap": 1.0}, "ViewSpec.overlap"),
    ],
)
def test_bad_view_spec_names_the_field(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ViewSpec(**kwargs)


def test_bad_inputs_name_the_problem(tmp_path, backbone, images) -> None:
    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    with pytest.raises(ValueError, match="equal lengths"):
        embed_images(backbone, paths, shas[:-1], render=Render(), spec=ViewSpec(), cache=cache)
    with pytest.raises(ValueError, match="sha256"):
        embed_images(backbone, paths[:1], ["xyz"], render=Render(), spec=ViewSpec(), cache=cache)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        embed_images(
            backbone,
            [tmp_path / "missing.jpg"],
            ["0" * 64],
            render=Render(),
            spec=ViewSpec(),
            cache=cache,
            show_progress=False,
        )
    with pytest.raises(ValueError, match=r"Render\.augment"):
        Render("augmented")


def test_numerics_key_keeps_cpu_float32_and_separates_everything_else() -> None:
    from roadwork.train.embed import numerics_key

    fingerprint = "ab" * 32
    keys = {
        (device, precision): numerics_key(fingerprint, device, precision)
        for device in ("cpu", "cuda")
        for precision in ("32", "bf16")
    }
    assert keys["cpu", "32"] == fingerprint  # existing CPU caches stay valid
    assert len(set(keys.values())) == 4
    with pytest.raises(ValueError, match="precision must be one of"):
        numerics_key(fingerprint, "cpu", "16")


def test_bf16_forward_is_close_to_float32_but_not_equal(backbone, images) -> None:
    from roadwork.train.embed import forward_views

    paths, _ = images
    views = []
    for path in paths[:3]:
        with Image.open(path) as image:
            views.append([image.convert("RGB").resize((112, 112))])
    full = np.concatenate(forward_views(backbone, views))
    half = np.concatenate(forward_views(backbone, views, precision="bf16"))
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)  # autocast really ran in bfloat16
    # bfloat16 keeps 8 significant bits: relative error ~2^-8 per op, a few % after a few layers
    np.testing.assert_allclose(half, full, atol=0.1 * float(np.abs(full).max()))
    with pytest.raises(ValueError, match="precision"):
        forward_views(backbone, views, precision="fp16")
