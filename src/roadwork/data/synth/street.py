"""Street furniture, traffic and pedestrians, with the look-alikes of roadwork that make the negative
class hard: orange and yellow vehicles, orange-clad pedestrians, orange bins and yellow warning diamonds."""

from __future__ import annotations

import numpy as np

from roadwork.data.synth.objects import (
    CLOTHES,
    draw_bin,
    draw_car,
    draw_diamond_sign,
    draw_guard_rail,
    draw_lamp,
    draw_overpass,
    draw_person,
    draw_street_sign,
)
from roadwork.data.synth.painter import (
    LANE_WIDTH_M,
    RGB,
    Camera,
    Item,
    Road,
    geometric_depths,
    jitter,
    pick,
    standing,
)
from roadwork.data.synth.workzone import WorkZone

_CAR_COLOURS: tuple[RGB, ...] = (
    (235, 235, 235), (30, 30, 32), (150, 152, 158), (95, 98, 104), (150, 25, 25), (30, 60, 140),
    (25, 70, 45), (110, 80, 55), (200, 195, 180)
)  # fmt: skip
_LOOKALIKE_CAR_COLOURS: tuple[RGB, ...] = ((235, 110, 25), (245, 195, 20), (250, 150, 20), (225, 90, 20))
_ORANGE_CLOTHES: tuple[RGB, ...] = ((240, 110, 20), (250, 150, 30), (235, 200, 30))
_BIN_COLOURS: tuple[RGB, ...] = ((60, 60, 60), (40, 90, 50), (40, 60, 120), (110, 80, 50))
_LOOKALIKE_BIN_COLOURS: tuple[RGB, ...] = ((235, 110, 20), (240, 190, 30))
_WARNING_YELLOW: RGB = (250, 205, 20)


def street_items(
    cam: Camera,
    rng: np.random.Generator,
    layout: str,
    road: Road,
    time: str,
    zone: WorkZone | None,
    lookalike: float,
) -> list[Item]:
    """Guard rails, an overpass, street lamps, traffic, pedestrians, bins and signs.

    ``lookalike`` scales the chance of each roadwork look-alike: an orange or yellow vehicle
    (``lookalike / 2``), an orange-clad pedestrian (``0.6 lookalike``), an orange or yellow bin
    (``0.7 lookalike``), a yellow warning diamond instead of another sign (``lookalike``). No vehicle is
    placed where it would hide ``zone``.
    """
    items = _guard_rails(cam, rng, layout, road)
    overpass = None
    if layout == "highway" and rng.random() < 0.25:
        overpass = rng.uniform(25, 90), rng.uniform(4.5, 6), rng.uniform(6.5, 8)
    lamps = _lamps(cam, rng, layout, road, time)
    traffic = _traffic(cam, rng, layout, road, time == "night", zone, lookalike)
    sidewalk = _sidewalk(cam, rng, road, lookalike) if road.sidewalk > 0 else []
    signs = _signs(cam, rng, road, lookalike)
    if overpass is not None:
        z, low, high = overpass
        items.append((z, lambda p: draw_overpass(p, cam, z, low, high, rng)))
    return items + lamps + traffic + sidewalk + signs


def _guard_rails(cam: Camera, rng: np.random.Generator, layout: str, road: Road) -> list[Item]:
    """Steel guard rails along both sides of highways and of half the rural roads."""
    items: list[Item] = []
    if layout == "highway" or (layout == "rural" and rng.random() < 0.5):
        rail_depths = [float(z) for z in geometric_depths(max(cam.z_near(), 1.5), 200, 20)]
        for side in (-1, 1):
            items.append((1e5, lambda p, x=side * (road.half + 0.8): draw_guard_rail(p, cam, x, rail_depths)))
    return items


def _lamps(cam: Camera, rng: np.random.Generator, layout: str, road: Road, time: str) -> list[Item]:
    """A row of street lamps along one kerb (none on rural roads), lit after dark."""
    if layout == "rural":
        return []
    items: list[Item] = []
    lamp_side = -1 if rng.random() < 0.5 else 1
    sodium = rng.random() < 0.5
    spacing = rng.uniform(20, 40)
    z = rng.uniform(3, spacing)
    while z < 200:
        items.append(
            standing(
                cam,
                lamp_side * (road.half + road.sidewalk - 0.3),
                z,
                lambda p, u, v, s: draw_lamp(p, u, v, s, lamp_side, time != "day", sodium),
            )
        )
        z += spacing
    return items


def _traffic(
    cam: Camera,
    rng: np.random.Generator,
    layout: str,
    road: Road,
    night: bool,
    zone: WorkZone | None,
    lookalike: float,
) -> list[Item]:
    """Up to 6 cars, vans and buses in the lanes, none where it would hide ``zone``."""
    items: list[Item] = []
    for _ in range(int(rng.integers(0, 7))):
        kind = pick(rng, ("car", "car", "car", "van", "bus"))
        lane = int(rng.integers(road.lanes))
        x = -road.half + (lane + 0.5) * LANE_WIDTH_M + rng.uniform(-0.4, 0.4)
        z = rng.uniform(max(cam.z_near() + 3, 5), 120)
        oncoming = road.lanes > 1 and x < 0 and layout != "highway"
        palette = _LOOKALIKE_CAR_COLOURS if rng.random() < lookalike / 2 else _CAR_COLOURS
        colour = jitter(rng, pick(rng, palette), 10)
        if zone is not None and zone.hides(road, lane, z):
            continue
        items.append(
            standing(
                cam,
                x,
                z,
                lambda p, u, v, s, k=kind, c=colour, o=oncoming: draw_car(p, u, v, s, rng, c, k, o, night),
            )
        )
    return items


def _sidewalk(cam: Camera, rng: np.random.Generator, road: Road, lookalike: float) -> list[Item]:
    """Up to 5 pedestrians and 3 bins on the sidewalks."""
    items: list[Item] = []
    for _ in range(int(rng.integers(0, 6))):
        side = -1 if rng.random() < 0.5 else 1
        palette = _ORANGE_CLOTHES if rng.random() < 0.6 * lookalike else CLOTHES
        clothes = jitter(rng, pick(rng, palette), 12)
        items.append(
            standing(
                cam,
                side * (road.half + rng.uniform(0.5, road.sidewalk)),
                rng.uniform(max(cam.z_near() + 1, 3), 60),
                lambda p, u, v, s, c=clothes: draw_person(p, u, v, s, rng, c, None, helmet=False),
            )
        )
    kerb = road.half + road.sidewalk
    for _ in range(int(rng.integers(0, 4))):
        side = -1 if rng.random() < 0.5 else 1
        colour = pick(rng, _LOOKALIKE_BIN_COLOURS if rng.random() < 0.7 * lookalike else _BIN_COLOURS)
        z = rng.uniform(max(cam.z_near() + 1, 3), 50)
        items.append(
            standing(cam, side * (kerb - 0.4), z, lambda p, u, v, s, c=colour: draw_bin(p, u, v, s, c))
        )
    return items


def _signs(cam: Camera, rng: np.random.Generator, road: Road, lookalike: float) -> list[Item]:
    """Up to 2 street signs beside the road, each a yellow warning diamond with chance ``lookalike``."""
    items: list[Item] = []
    for _ in range(int(rng.integers(0, 3))):
        side = -1 if rng.random() < 0.5 else 1
        x = side * (road.half + 0.6 + road.sidewalk * rng.uniform(0, 0.5))
        z = rng.uniform(max(cam.z_near() + 3, 6), 70)
        if rng.random() < lookalike:
            symbol = pick(rng, ("arrow", "curve", "!"))
            items.append(
                standing(
                    cam,
                    x,
                    z,
                    lambda p, u, v, s, sy=symbol: draw_diamond_sign(
                        p, u, v, s, rng, _WARNING_YELLOW, sy, stand=False
                    ),
                )
            )
        else:
            items.append(standing(cam, x, z, lambda p, u, v, s: draw_street_sign(p, u, v, s, rng)))
    return items
