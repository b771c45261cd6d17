"""What happens after the painting: the dashcam bonnet, ambient light and glowing lights, fog haze, rain
and snow, blur and sensor noise."""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from roadwork.data.synth.painter import Camera, Light, jitter

# Standard normal quantiles at (k + 0.5) / 256: indexing them with random bytes draws 256-level Gaussian noise
# at a fraction of the cost of Generator.standard_normal (sensor noise needs no finer tails).
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)

# Ambient light multiplier (per channel) per time of day.
_AMBIENT: dict[str, tuple[float, float, float]] = {
    "day": (1.0, 1.0, 1.0),
    "dusk": (0.85, 0.7, 0.62),
    "night": (0.28, 0.3, 0.4),
}


def _glow(size: tuple[int, int], lights: Sequence[Light]) -> Image.Image:
    """Additive halo layer: every light drawn at quarter resolution, blurred and scaled back to ``size``."""
    w, h = size
    small = Image.new("RGB", (max(1, w // 4), max(1, h // 4)))
    d = ImageDraw.Draw(small)
    for light in lights:
        r = 1.5 * light.radius / 4 + 1
        rgb = tuple(int(min(255, c * 0.6 * light.strength)) for c in light.rgb)
        d.ellipse((light.u / 4 - r, light.v / 4 - r, light.u / 4 + r, light.v / 4 + r), fill=rgb)
    return small.filter(ImageFilter.GaussianBlur(3)).resize((w, h), Image.Resampling.BILINEAR)


def finish(
    image: Image.Image,
    cam: Camera,
    lights: Sequence[Light],
    rng: np.random.Generator,
    time: str,
    weather: str,
    camera: str,
) -> Image.Image:
    """Camera, light and weather effects on the drawn scene (in place where possible); returns the result."""
    w, h = image.size
    if camera == "dashcam" and rng.random() < 0.5:
        # The bonnet is fixed to the camera, so it is drawn unrolled: a dark bulge along the bottom edge.
        hood = rng.uniform(0.05, 0.12) * h
        ImageDraw.Draw(image).ellipse(
            (-0.3 * w, h - hood, 1.3 * w, h + 3 * hood), fill=jitter(rng, (35, 35, 40), 15)
        )
    image, ambient = _light(image, lights, rng, time, weather)
    if weather == "fog":
        image = _fog(image, cam, rng, ambient)
    elif weather in ("rain", "snow"):
        _precipitation(image, rng, weather)
    return _optics_and_sensor(image, rng, time)


def _light(
    image: Image.Image, lights: Sequence[Light], rng: np.random.Generator, time: str, weather: str
) -> tuple[Image.Image, list[float]]:
    """Ambient light of the time of day (dimmer in rain and fog) and, after dark, the lights' glow and bright
    cores; returns the lit image and the per-channel ambient gain."""
    gain = rng.uniform(0.8, 1.1) if time == "day" else rng.uniform(0.8, 1.2)
    if weather in ("rain", "fog"):
        gain *= 0.85
    ambient = [a * gain for a in _AMBIENT[time]]
    image = image.point([min(255, round(i * a)) for a in ambient for i in range(256)])
    if time != "day" and lights:
        image = ImageChops.add(image, _glow(image.size, lights))
        d = ImageDraw.Draw(image)
        for light in lights:
            if light.strength < 0.5:  # faint sources (lit windows) only glow; they have no bright core
                continue
            r = light.radius
            d.ellipse(
                (light.u - r, light.v - r, light.u + r, light.v + r),
                fill=tuple(min(255, int(c * 0.9 + 60)) for c in light.rgb),
            )
    return image, ambient


def _fog(image: Image.Image, cam: Camera, rng: np.random.Generator, ambient: Sequence[float]) -> Image.Image:
    """Haze of the ambient-lit fog colour, densest along the horizon."""
    w, h = image.size
    horizon = cam.to_image((cam.vx, cam.horizon))[1]
    rows = np.arange(h, dtype=np.float64)
    haze = rng.uniform(0.3, 0.6) * np.exp(-np.abs(rows - horizon) / (0.35 * h))
    column = Image.fromarray(np.round(255 * haze).astype(np.uint8)[:, None])
    mask = column.resize((w, h), Image.Resampling.NEAREST)
    fog = tuple(round(255 * f * a) for f, a in zip((0.78, 0.8, 0.83), ambient, strict=True))
    return Image.composite(Image.new("RGB", (w, h), fog), image, mask)


def _precipitation(image: Image.Image, rng: np.random.Generator, weather: str) -> None:
    """Translucent rain streaks (one slant) or snow flakes, drawn on ``image`` in place."""
    w, h = image.size
    d = ImageDraw.Draw(image, "RGBA")
    density = rng.uniform(0.0005, 0.0015) if weather == "rain" else rng.uniform(0.0008, 0.0025)
    count = int(w * h * density)
    xs, ys = rng.uniform(0, w, count).tolist(), rng.uniform(0, h, count).tolist()
    alphas = (
        rng.integers(40, 110, count).tolist() if weather == "rain" else rng.integers(120, 230, count).tolist()
    )
    if weather == "rain":
        slant = rng.uniform(-0.3, 0.3)
        for x, y, length, alpha in zip(xs, ys, rng.uniform(8, 30, count).tolist(), alphas, strict=True):
            d.line([(x, y), (x + slant * length, y + length)], fill=(210, 215, 225, alpha), width=1)
    else:
        for x, y, r, alpha in zip(xs, ys, rng.uniform(0.6, 2.5, count).tolist(), alphas, strict=True):
            d.ellipse((x - r, y - r, x + r, y + r), fill=(245, 245, 250, alpha))


def _optics_and_sensor(image: Image.Image, rng: np.random.Generator, time: str) -> Image.Image:
    """Motion blur of a camera pan (15 %) or defocus (20 %), then Gaussian sensor noise (more at night)."""
    w, h = image.size
    blur = rng.random()
    if blur < 0.15:
        image = image.filter(ImageFilter.BoxBlur((int(rng.integers(1, 5)), 0)))  # camera pan
    elif blur < 0.35:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.8)))
    sigma = 255 * (rng.uniform(0.01, 0.04) if time == "night" else rng.uniform(0.0, 0.02))
    noisy = _NORMAL_QUANTILES[np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8).reshape(h, w, 3)]
    noisy *= np.float32(sigma)
    noisy += np.asarray(image, dtype=np.float32)
    noisy += np.float32(0.5)  # round, not truncate, in the cast below
    return Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8))
