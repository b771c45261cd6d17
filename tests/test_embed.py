"""Renders, the feature cache and batched multi-view embedding (roadwork.train.embed and
roadwork.models.inference, the one inference path) on the tiny backbone."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roadwork.data.preprocess import TrainAugment, render_as_validator, tile_boxes, to_tensor_batch
from roadwork.data.render import Render, RenderStore, render_bytes
from roadwork.models.backbone import load_backbone
from roadwork.models.inference import FeatureCache, ViewSpec, fixed_geometry, input_key
from roadwork.train.embed import embed_images

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


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def embed(backbone, paths, shas, tmp_path: Path, **kwargs):
    kwargs.setdefault("render", Render())
    kwargs.setdefault("spec", ViewSpec())
    kwargs.setdefault("cache", cache_for(tmp_path, backbone))
    kwargs.setdefault("show_progress", False)
    return embed_images(backbone, paths, shas, store=RenderStore(tmp_path / "renders"), **kwargs)


def reference_features(backbone, path: Path, sha: str, render: Render, spec: ViewSpec) -> np.ndarray:
    """One image at a time, views one by one: the obvious loop the batched path must agree with."""
    with Image.open(path) as image:
        rendered = fixed_geometry(decoded(render_bytes(image.convert("RGB"), render, sha)))
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
    features, stats = embed(backbone, paths, shas, tmp_path, spec=spec, batch_size=3)
    assert features.shape == (7, spec.num_views, backbone.feature_dim) and features.dtype == np.float32
    assert stats.n_computed == 7 and stats.n_views_computed == 7 * spec.num_views
    for i in (0, 6):
        expected = reference_features(backbone, paths[i], shas[i], Render(), spec)
        np.testing.assert_allclose(features[i], expected, atol=1e-5)


def test_cache_is_reused_and_shared_between_view_settings(tmp_path, backbone, images) -> None:
    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    first, _ = embed(backbone, paths, shas, tmp_path, spec=ViewSpec("global"), cache=cache)
    again, stats = embed(backbone, paths, shas, tmp_path, spec=ViewSpec("global"), cache=cache)
    assert stats.n_computed == 0 and np.array_equal(first, again)
    tiles, stats = embed(backbone, paths, shas, tmp_path, spec=ViewSpec("global+tiles"), cache=cache)
    # the global part came from the cache; only the tiles were computed
    assert stats.n_views_computed == 7 * 9
    assert np.array_equal(tiles[:, :1], first)


def test_cache_is_keyed_by_the_input_bytes(tmp_path, backbone, images) -> None:
    """An entry can only hold what the inference path computes for exactly those bytes."""
    from roadwork.models.inference import embed_inputs

    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    store = RenderStore(tmp_path / "renders")
    inputs = [store.get(p, s, Render()) for p, s in zip(paths, shas, strict=True)]
    features, stats = embed_inputs(backbone, inputs, spec=ViewSpec(), cache=cache, show_progress=False)
    assert all(cache.has(input_key(x), "global") for x in inputs)
    # the keys it reports (embed's index.csv records them) are those of the bytes, hashed here independently
    assert stats.input_keys == tuple(hashlib.sha256(x).hexdigest() for x in inputs)
    # the same pixels decoded and handed over as images: computed afresh, cached nowhere, equal
    pictures = [decoded(x) for x in inputs]
    uncached, stats = embed_inputs(backbone, pictures, spec=ViewSpec(), cache=cache, show_progress=False)
    assert stats.n_computed == 7 and np.allclose(uncached, features, atol=1e-5)
    assert stats.input_keys == (None,) * 7
    # other bytes (one byte of JPEG comment changed) get their own entry; the flip has its own folder
    other = inputs[0][:2] + b"\xff\xfe\x00\x03x" + inputs[0][2:]
    assert input_key(other) != input_key(inputs[0])
    _, stats = embed_inputs(backbone, [other], spec=ViewSpec(), cache=cache, show_progress=False)
    assert stats.n_computed == 1
    flipped, stats = embed_inputs(
        backbone, inputs[:1], spec=ViewSpec(), flip=True, cache=cache, show_progress=False
    )
    assert stats.n_computed == 1 and not np.allclose(flipped, features[:1])
    mirror = [decoded(inputs[0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    by_hand, _ = embed_inputs(backbone, mirror, spec=ViewSpec(), show_progress=False)
    np.testing.assert_allclose(flipped, by_hand, atol=1e-5)


def test_fixed_geometry_is_the_validators_level0_and_the_identity_on_what_it_sends(images) -> None:
    paths, _ = images
    with Image.open(paths[2]) as image:
        image = image.convert("RGB")
    level0 = decoded(render_as_validator(image, 0, np.random.default_rng(0)))
    assert level0.size == (224, 224)
    assert fixed_geometry(level0) is level0  # a validator image reaches the backbone untouched
    from roadwork.data.preprocess import ValidatorParams, apply_validator_params

    assert np.array_equal(
        np.asarray(fixed_geometry(image)), np.asarray(apply_validator_params(image, ValidatorParams(0)))
    )


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
        embed(backbone, paths, shas, tmp_path, cache=cache, batch_size=2)
    monkeypatch.setattr(type(backbone), "forward", original)
    leftovers = list(cache.root.rglob("*.tmp"))
    assert leftovers == []
    resumed, stats = embed(backbone, paths, shas, tmp_path, cache=cache, batch_size=2)
    assert stats.n_computed == 7 - 4  # two whole batches of 2 had been cached before the interruption
    fresh, _ = embed(
        backbone, paths, shas, tmp_path, cache=FeatureCache(tmp_path / "fresh", backbone.fingerprint())
    )
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_augmented_copies_are_deterministic_per_image_and_differ_between_copies(images) -> None:
    paths, shas = images
    with Image.open(paths[0]) as image:
        image = image.convert("RGB")
    a = Render("augmented", copy=0, augment=AUGMENT, seed=0)
    b = Render("augmented", copy=1, augment=AUGMENT, seed=0)
    c = Render("augmented", copy=0, augment=AUGMENT, seed=1)
    first = render_bytes(image, a, shas[0])
    assert first == render_bytes(image, a, shas[0])
    assert first != render_bytes(image, b, shas[0])
    assert first != render_bytes(image, c, shas[0])
    assert len({a.key, b.key, c.key, Render().key}) == 4
    other = Render("augmented", copy=0, augment=TrainAugment(color_jitter=0.2), seed=0)
    assert other.key != a.key  # other augmentation settings never reuse stored renders


def test_clean_render_is_the_validator_level0_jpeg_and_the_store_keeps_it(tmp_path, images) -> None:
    paths, shas = images
    with Image.open(paths[1]) as image:
        image = image.convert("RGB")
    clean = render_bytes(image, Render(), shas[1])
    assert clean == render_as_validator(image, 0, np.random.default_rng(0))
    assert decoded(clean).size == (224, 224)
    store = RenderStore(tmp_path / "renders")
    assert store.get(paths[1], shas[1], Render()) == clean
    assert len(list((tmp_path / "renders").rglob("*.jpg"))) == 1
    assert store.get(paths[1], shas[1], Render()) == clean  # read back


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
        embed(backbone, paths, shas[:-1], tmp_path, cache=cache)
    with pytest.raises(ValueError, match="sha256"):
        embed(backbone, paths[:1], ["xyz"], tmp_path, cache=cache)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        embed(backbone, [tmp_path / "missing.jpg"], ["0" * 64], tmp_path, cache=cache)
    with pytest.raises(ValueError, match=r"Render\.augment"):
        Render("augmented")


def test_numerics_key_keeps_cpu_float32_and_separates_everything_else() -> None:
    from roadwork.models.inference import numerics_key

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
    from roadwork.models.inference import forward_views

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


class CountingForward:
    """Counts the backbone's forward passes (the expensive call a cache hit must avoid)."""

    def __init__(self, backbone, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = type(backbone).forward

        def counting(module, pixel_values):
            self.calls += 1
            return original(module, pixel_values)

        monkeypatch.setattr(type(backbone), "forward", counting)


def _entry(cache: FeatureCache, store: RenderStore, path: Path, sha: str) -> Path:
    return cache.path(input_key(store.get(path, sha, Render())), "global")


@pytest.mark.parametrize("poison", ["zeroed", "nan"])
def test_tampered_cache_entry_is_recomputed_with_a_warning_naming_it(
    tmp_path, backbone, images, monkeypatch, poison
) -> None:
    """The attack: an entry replaced by a zeroed or NaN-filled ``.npy`` of the right shape."""
    import warnings

    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    spec = ViewSpec("global")
    first, _ = embed(backbone, paths, shas, tmp_path, spec=spec, cache=cache)
    entry = _entry(cache, RenderStore(tmp_path / "renders"), paths[3], shas[3])
    shape = np.load(entry).shape
    np.save(entry, np.zeros(shape, np.float32) if poison == "zeroed" else np.full(shape, np.nan, np.float32))

    # an independent oracle for image 3: the one-image-at-a-time reference, not the cache
    expected = reference_features(backbone, paths[3], shas[3], Render(), spec)

    forwards = CountingForward(backbone, monkeypatch)
    with pytest.warns(UserWarning, match="feature cache") as caught:
        again, stats = embed(backbone, paths, shas, tmp_path, spec=spec, cache=cache)
    assert str(entry) in str(caught[0].message) and "checksum mismatch" in str(caught[0].message)
    assert stats.n_computed == 1 and forwards.calls == 1
    np.testing.assert_allclose(again[3], expected, atol=1e-5)
    np.testing.assert_allclose(again, first, atol=1e-5)
    # the recomputed entry is whole again: a third run reads everything, no forward, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third, stats = embed(backbone, paths, shas, tmp_path, spec=spec, cache=cache)
    assert stats.n_computed == 0 and forwards.calls == 1
    np.testing.assert_array_equal(third, again)


def test_non_finite_entry_is_rejected_even_with_a_matching_checksum(tmp_path, backbone, images) -> None:
    import io

    from roadwork.models.inference import CacheEntryRejected

    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    embed(backbone, paths[:2], shas[:2], tmp_path, spec=ViewSpec("global"), cache=cache)
    entry = _entry(cache, RenderStore(tmp_path / "renders"), paths[0], shas[0])
    poisoned = np.load(entry)
    poisoned[0, 0] = np.inf
    buffer = io.BytesIO()
    np.save(buffer, poisoned)
    entry.write_bytes(buffer.getvalue())
    cache.digest_path(entry).write_text(hashlib.blake2b(buffer.getvalue(), digest_size=32).hexdigest())
    with pytest.raises(CacheEntryRejected, match="NaN or infinite"):
        cache.get(entry.stem, "global")
    with pytest.warns(UserWarning, match=str(entry)):
        _, stats = embed(backbone, paths[:2], shas[:2], tmp_path, spec=ViewSpec("global"), cache=cache)
    assert stats.n_computed == 1


def test_entry_without_checksum_or_of_the_wrong_shape_is_recomputed(tmp_path, backbone, images) -> None:
    paths, shas = images
    cache = cache_for(tmp_path, backbone)
    embed(backbone, paths[:2], shas[:2], tmp_path, spec=ViewSpec("global"), cache=cache)
    store = RenderStore(tmp_path / "renders")
    unsigned, wrong = (_entry(cache, store, p, s) for p, s in zip(paths[:2], shas[:2], strict=True))
    cache.digest_path(unsigned).unlink()
    features = np.load(wrong)
    cache.put(wrong.stem, "global", np.concatenate([features, features]))  # two views where one belongs
    with pytest.warns(UserWarning) as caught:
        _, stats = embed(backbone, paths[:2], shas[:2], tmp_path, spec=ViewSpec("global"), cache=cache)
    message = str(caught[0].message)
    assert f"{unsigned}: no checksum" in message and f"{wrong}: holds float32 [2, " in message
    assert stats.n_computed == 2


def test_non_finite_features_are_never_cached(tmp_path, backbone) -> None:
    cache = cache_for(tmp_path, backbone)
    with pytest.raises(ValueError, match="NaN or infinite features"):
        cache.put("ab" * 32, "global", np.full((1, backbone.feature_dim), np.nan, np.float32))
    assert not cache.has("ab" * 32, "global")


def test_feature_files_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    """Same features => same file, so dvc.lock does not change between identical runs (safetensors writes
    a metadata map with several keys in an order that varies from one write to the next)."""
    from roadwork.stages.embed import _write_features

    tensors = {"features": np.arange(24, dtype=np.float32).reshape(2, 3, 4)}
    written = set()
    for i in range(20):
        _write_features(tmp_path / f"{i}.safetensors", tensors, "f" * 64)
        written.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(written) == 1


def test_features_do_not_depend_on_batching_or_on_what_the_cache_holds(tmp_path, images) -> None:
    """On the CPU a batch of one runs another oneDNN path (EfficientNet-Lite0 features differed by up to
    9.5e-7), so an input computed alone, e.g. because the cache held the rest, must still get the bits it
    gets in a batch; only serving one uncached image keeps the cheaper batch of one."""
    from roadwork.models.inference import embed_inputs, forward_views

    lite = load_backbone("efficientnet_lite0")
    paths, shas = images
    store = RenderStore(tmp_path / "renders")
    inputs = [store.get(p, s, Render()) for p, s in zip(paths, shas, strict=True)][:5]
    pictures = [[fixed_geometry(decoded(x))] for x in inputs]
    batched = forward_views(lite, pictures)
    for alone, in_batch in zip((forward_views(lite, [views])[0] for views in pictures), batched, strict=True):
        np.testing.assert_array_equal(alone, in_batch)
    cold, _ = embed_inputs(lite, inputs, spec=ViewSpec(), show_progress=False)
    warm_cache = FeatureCache(tmp_path / "warm", lite.fingerprint())
    embed_inputs(lite, inputs[:4], spec=ViewSpec(), cache=warm_cache, show_progress=False)
    warm, stats = embed_inputs(lite, inputs, spec=ViewSpec(), cache=warm_cache, show_progress=False)
    assert stats.n_computed == 1  # the fifth, alone
    np.testing.assert_array_equal(warm, cold)
    # the last of six in batches of five is alone too
    six, _ = embed_inputs(lite, [*inputs, inputs[0]], spec=ViewSpec(), batch_size=5, show_progress=False)
    np.testing.assert_array_equal(six[:5], cold)
    np.testing.assert_array_equal(six[5], cold[0])
    # one input stored in a cache gets the batch bits as well: the cache must not keep the alone ones
    alone_cache = FeatureCache(tmp_path / "alone", lite.fingerprint())
    stored, _ = embed_inputs(lite, inputs[4:], spec=ViewSpec(), cache=alone_cache, show_progress=False)
    np.testing.assert_array_equal(stored, cold[4:])
    # serving one uncached image keeps the batch of one: close, not necessarily the same bits
    served, _ = embed_inputs(lite, inputs[:1], spec=ViewSpec(), show_progress=False)
    np.testing.assert_allclose(served, cold[:1], atol=1e-5)
