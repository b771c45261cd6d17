"""One street scene from one generator: slices, camera, road, then the parts painted far to near."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from roadwork.data.synth.background import (
    backdrop,
    draw_road,
    draw_shadows,
    draw_silhouette,
    draw_sky_and_ground,
)
from roadwork.data.synth.effects import finish
from roadwork.data.synth.painter import LANE_WIDTH_M, Camera, Painter, Road, jitter, pick
from roadwork.data.synth.street import street_items
from roadwork.data.synth.workzone import place_work_zone, roadwork_items

TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")
WEATHERS: tuple[str, ...] = ("clear", "rain", "fog", "snow")
CAMERAS: tuple[str, ...] = ("dashcam", "phone")

_TIME_P = (0.55, 0.2, 0.25)
_WEATHER_P = (0.5, 0.2, 0.13, 0.17)
_CAMERA_P = (0.6, 0.4)
_LAYOUTS: tuple[str, ...] = ("urban", "suburban", "rural", "highway")
_LAYOUT_P = (0.35, 0.3, 0.15, 0.2)
_FOG_RGB = (200, 205, 212)  # fog albedo, before ambient light


@dataclass(frozen=True)
class SceneInfo:
    """The slice metadata of one drawn scene (the columns of ``metadata.csv`` besides ``path``)."""

    time_of_day: str
    weather: str
    camera: str


def _image_size(rng: np.random.Generator, camera: str) -> tuple[int, int]:
    """(width, height): dashcam 16:9; phone 4:3 (65 %), 16:9 (15 %) or portrait 3:4 (20 %); widths 320–800."""
    if camera == "dashcam":
        aspect = (16, 9)
    else:
        aspect = ((4, 3), (16, 9), (3, 4))[int(rng.choice(3, p=(0.65, 0.15, 0.2)))]
    width = 2 * int(rng.integers(160, 401) if aspect[0] > aspect[1] else rng.integers(150, 301))
    return width, 2 * round(width * aspect[1] / aspect[0] / 2)


def _make_camera(rng: np.random.Generator, camera: str, width: int, height: int, road_half: float) -> Camera:
    if camera == "dashcam":
        roll = rng.normal(0, 1.5)
        horizon_frac, vx_frac = rng.uniform(0.3, 0.55), rng.uniform(0.3, 0.7)
        cam_height, focal = rng.uniform(1.2, 1.5), width * rng.uniform(0.55, 0.9)
        cam_x = rng.uniform(-0.8, 0.8) * road_half
    else:
        roll = rng.normal(0, 4.0)
        horizon_frac, vx_frac = rng.uniform(0.22, 0.7), rng.uniform(0.1, 0.9)
        cam_height, focal = rng.uniform(1.4, 1.8), max(width, height) * rng.uniform(0.7, 1.2)
        # Phones are often held on the sidewalk, looking along (and partly across) the road.
        cam_x = rng.uniform(-1.6, 1.6) * road_half
    roll = math.radians(float(np.clip(roll, -10, 10)))
    c, si = math.cos(roll), math.sin(roll)
    # Half the growth of the frame's bounding box when rolled back into the camera plane.
    margin_u = (width * c + height * abs(si) - width) / 2 + 2
    margin_v = (width * abs(si) + height * c - height) / 2 + 2
    curve = float(rng.uniform(-0.0012, 0.0012)) if rng.random() < 0.5 else 0.0
    return Camera(
        width,
        height,
        margin_u,
        margin_v,
        horizon_frac * height,
        vx_frac * width,
        focal,
        float(cam_height),
        float(cam_x),
        curve,
        c,
        si,
    )


def draw_scene(label: int, rng: np.random.Generator) -> tuple[Image.Image, SceneInfo]:
    """Draw one street scene; ``label`` 1 adds a work zone, 0 adds more colour look-alikes.

    Everything random comes from ``rng`` (consumed in a fixed order), so the same generator state gives the
    same RGB image. Returns the image (its size is part of the draw) and its slice metadata.
    """
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (no roadwork) or 1 (roadwork), got {label!r}")
    time = TIMES_OF_DAY[int(rng.choice(3, p=_TIME_P))]
    weather = WEATHERS[int(rng.choice(4, p=_WEATHER_P))]
    camera = CAMERAS[int(rng.choice(2, p=_CAMERA_P))]
    layout = _LAYOUTS[int(rng.choice(4, p=_LAYOUT_P))]
    snowy = weather == "snow"
    width, height = _image_size(rng, camera)

    lanes = int(rng.integers(2, 5)) if layout == "highway" else int(rng.integers(1, 4))
    lanes += lanes == 1 and rng.random() < 0.7
    road = Road(
        half=lanes * LANE_WIDTH_M / 2,
        lanes=lanes,
        sidewalk=0.0 if layout in ("rural", "highway") else float(rng.uniform(1.5, 4.0)),
        asphalt=jitter(rng, pick(rng, ((70, 70, 72), (95, 95, 98), (120, 118, 115), (55, 55, 58))), 6),
        ground=(240, 242, 245)
        if snowy
        else pick(rng, ((90, 120, 60), (120, 125, 80), (140, 120, 90), (150, 150, 145))),
        yellow_centre=rng.random() < 0.3,
    )
    cam = _make_camera(rng, camera, width, height, road.half)
    fog_density = rng.uniform(0.015, 0.05) if weather == "fog" else rng.uniform(0.0005, 0.003)
    image = Image.new("RGB", (cam.width, cam.height))
    # Camera-side light: dashcam head lights at night, street lights for phones, a little fill at dusk.
    headlights = {"day": 0.0, "dusk": 0.3, "night": 3.0 if camera == "dashcam" else 1.5}[time]
    p = Painter(ImageDraw.Draw(image, "RGBA"), cam, _FOG_RGB, fog_density, headlights, time == "night")

    draw_sky_and_ground(p, cam, rng, time, weather == "fog", road.ground)
    draw_silhouette(p, cam, rng, layout)
    draw_road(p, cam, rng, road, snowy)
    if time == "day" and weather == "clear" and rng.random() < 0.6:
        draw_shadows(p, cam, rng, road)
    behind, items = backdrop(cam, rng, layout, road, time == "night", snowy)
    zone = place_work_zone(cam, rng, road, fog_density) if label == 1 else None
    items += street_items(cam, rng, layout, road, time, zone, lookalike=0.35 if label == 0 else 0.25)
    if zone is not None:
        items += roadwork_items(cam, rng, road, time, zone)
    # Painter's algorithm; the sort is stable, so equal depths keep their (deterministic) order.
    for _, draw in sorted(behind, key=lambda item: -item[0]) + sorted(items, key=lambda item: -item[0]):
        draw(p)

    image = finish(image, cam, p.lights, rng, time, weather, camera)
    return image, SceneInfo(time, weather, camera)
