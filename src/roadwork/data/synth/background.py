"""What every scene has behind its traffic: sky and ground, the far silhouette, the road with its marks,
shadow bands, and the buildings and trees beside the road."""

from __future__ import annotations

import math

import numpy as np

from roadwork.data.synth.painter import (
    LANE_WIDTH_M,
    RGB,
    Z_FAR_M,
    Camera,
    Item,
    Painter,
    Road,
    geometric_depths,
    jitter,
    pick,
    standing,
)

_FOLIAGE: tuple[RGB, ...] = ((50, 100, 40), (70, 120, 50), (35, 80, 35), (90, 110, 40))
_AUTUMN: tuple[RGB, ...] = ((210, 110, 30), (190, 60, 30), (220, 160, 40), (160, 90, 30))
_FACADES: tuple[RGB, ...] = (
    (190, 185, 170), (150, 150, 150), (220, 215, 200), (170, 90, 60), (150, 70, 50), (110, 120, 130),
    (200, 170, 130), (90, 90, 95), (120, 150, 170)
)  # fmt: skip

# Sky albedo (zenith, horizon) per time of day, before ambient light is applied.
_SKIES: dict[str, tuple[tuple[RGB, RGB], ...]] = {
    "day": (
        ((70, 130, 220), (185, 210, 235)),
        ((110, 160, 225), (215, 225, 235)),
        ((150, 165, 185), (200, 205, 210)),
    ),
    "dusk": (
        ((60, 60, 130), (250, 150, 70)),
        ((90, 70, 140), (240, 120, 80)),
        ((50, 80, 150), (230, 180, 110)),
    ),
    "night": (((10, 15, 40), (50, 55, 80)), ((5, 5, 20), (60, 45, 50)), ((20, 25, 45), (80, 70, 60))),
}


def _draw_tree(
    p: Painter, u: float, v: float, s: float, rng: np.random.Generator, crown: RGB | None, snowy: bool
) -> None:
    """A tree 4–10 m tall: deciduous (round crown), conifer (stacked triangles) or bare (``crown`` None)."""
    h = rng.uniform(4.0, 10.0) * s
    trunk = (85, 60, 40)
    p.line([(u, v), (u, v - 0.45 * h)], trunk, 0.25 * s)
    if crown is None:
        for k in range(4):
            a = rng.uniform(-1.0, 1.0)
            p.line([(u, v - (0.3 + 0.1 * k) * h), (u + a * 0.3 * h, v - (0.6 + 0.1 * k) * h)], trunk, 0.1 * s)
        return
    colour = (235, 240, 245) if snowy and rng.random() < 0.6 else jitter(rng, crown, 15)
    if rng.random() < 0.3:
        for k in range(3):
            base, top = v - (0.2 + 0.25 * k) * h, v - (0.5 + 0.25 * k) * h
            half = (0.35 - 0.08 * k) * h
            p.poly([(u - half, base), (u + half, base), (u, top)], colour)
    else:
        r = rng.uniform(0.25, 0.4) * h
        p.oval(u - r, v - h, u + r, v - h + 2 * r * rng.uniform(0.8, 1.1), colour)


def _draw_building(
    p: Painter,
    cam: Camera,
    x: float,
    z0: float,
    z1: float,
    height: float,
    depth: float,
    colour: RGB,
    rng: np.random.Generator,
    lit_windows: float,
) -> None:
    """A block with its facade in the plane at lateral offset ``x`` (m) from depth ``z0`` to ``z1``.

    The front face (at ``z0``, ``depth`` m deep, away from the road) is drawn too; windows are a grid, a
    ``lit_windows`` share of them lit (night).
    """
    side = 1 if x > 0 else -1
    a, b = cam.project(x, 0, z0), cam.project(x, 0, z1)
    at, bt = cam.project(x, height, z0), cam.project(x, height, z1)
    c, ct = cam.project(x + side * depth, 0, z0), cam.project(x + side * depth, height, z0)
    p.at(z0)
    p.poly([a, c, ct, at], tuple(0.8 * ch for ch in colour))
    p.at(0.5 * (z0 + z1))
    p.poly([a, b, bt, at], colour)
    floors = max(1, int(height / 3.2))
    cols = max(1, int((z1 - z0) / 3.5))
    window = (45, 55, 70) if rng.random() < 0.7 else (150, 170, 190)
    if cols * floors > 400:  # far-away detail below a pixel: skip the per-window work
        return
    for i in range(cols):
        za, zb = z0 + (i + 0.3) * (z1 - z0) / cols, z0 + (i + 0.7) * (z1 - z0) / cols
        if cam.ppm(za) * (zb - za) < 1.0:
            continue
        p.at(za)
        for j in range(floors):
            ya, yb = (j + 0.35) * height / floors, (j + 0.75) * height / floors
            quad = cam.side_quad(x, ya, yb, za, zb)
            lit = rng.random() < lit_windows
            p.poly(quad, (255, 210, 130) if lit else window)
            if lit:
                cu, cv = sum(q[0] for q in quad) / 4, sum(q[1] for q in quad) / 4
                p.light(cu, cv, 0.4 * cam.ppm(za), (255, 200, 120), 0.3)


def draw_sky_and_ground(
    p: Painter, cam: Camera, rng: np.random.Generator, time: str, foggy: bool, ground: RGB
) -> None:
    """Sky gradient (with sun, moon or clouds) above the horizon, ground bands below it.

    The sky takes the fog colour only in fog: its own gradient already holds the everyday horizon haze.
    """
    zenith, horizon = _SKIES[time][int(rng.integers(len(_SKIES[time])))]
    zenith, horizon = jitter(rng, zenith, 15), jitter(rng, horizon, 15)
    bands = 16
    left, right, top = -cam.margin_u, cam.width + cam.margin_u, -cam.margin_v - 1
    for k in range(bands):
        t0 = k / bands
        y0 = top + (cam.horizon - top) * t0
        y1 = top + (cam.horizon - top) * (k + 1) / bands
        colour = tuple(zenith[c] + (horizon[c] - zenith[c]) * t0**1.5 for c in range(3))
        p.at(Z_FAR_M if foggy else 0.0, unlit=True)
        p.rect(left, y0, right, y1 + 1, colour)
    p.at(Z_FAR_M, unlit=True)
    if time == "dusk" and rng.random() < 0.6:
        r = cam.width * rng.uniform(0.03, 0.07)
        su = rng.uniform(0.1, 0.9) * cam.width
        p.oval(su - r, cam.horizon - 2.5 * r, su + r, cam.horizon - 0.5 * r, (255, 170, 80))
    elif time == "night" and rng.random() < 0.3:
        r = cam.width * rng.uniform(0.015, 0.03)
        mu, mv = rng.uniform(0.1, 0.9) * cam.width, rng.uniform(0.1, 0.6) * cam.horizon
        p.oval(mu - r, mv - r, mu + r, mv + r, (230, 230, 210))
        p.light(mu, mv, r, (200, 200, 190), 0.6)
    elif time == "day":
        for _ in range(int(rng.integers(0, 6))):
            cu, cv = rng.uniform(0, cam.width), rng.uniform(0.05, 0.8) * cam.horizon
            rw, rh = rng.uniform(0.05, 0.2) * cam.width, rng.uniform(0.02, 0.06) * cam.height
            p.oval(cu - rw, cv - rh, cu + rw, cv + rh, (240, 242, 245))
    depths = geometric_depths(cam.z_near() * 0.8, Z_FAR_M, 14)
    for k in range(len(depths) - 1):
        za, zb = depths[k], depths[k + 1]
        va, vb = cam.project(0.0, 0.0, za)[1], cam.project(0.0, 0.0, zb)[1]
        p.at(za)
        p.rect(left, vb, right, va + 1, jitter(rng, ground, 4))


def draw_silhouette(p: Painter, cam: Camera, rng: np.random.Generator, layout: str) -> None:
    """The far background along the horizon: hills, a tree line or a city skyline."""
    kind = {"urban": "skyline", "suburban": "trees", "rural": "hills", "highway": "hills"}[layout]
    if rng.random() < 0.3:
        kind = pick(rng, ("skyline", "trees", "hills"))
    z = rng.uniform(250, 380)
    s = cam.ppm(z)
    p.at(z)
    base = cam.horizon + 1
    left, right = -cam.margin_u - 10, cam.width + cam.margin_u + 10
    if kind == "hills":
        xs = np.linspace(left, right, 9)
        heights = rng.uniform(0, rng.uniform(15, 90), len(xs)) * s
        colour = jitter(rng, (80, 105, 85), 20)
        pts = [(float(x), base - float(hh)) for x, hh in zip(xs, heights, strict=True)]
        p.poly([(left, base), *pts, (right, base)], colour)
    elif kind == "trees":
        colour = jitter(rng, (55, 85, 50), 15)
        x = left
        while x < right:
            w = rng.uniform(3, 12) * s
            hgt = rng.uniform(6, 18) * s
            p.oval(x, base - hgt, x + w, base + 0.3 * hgt, colour)
            x += 0.6 * w
    else:
        colour = jitter(rng, (110, 115, 125), 20)
        x = left
        while x < right:
            w = rng.uniform(8, 30) * s
            hgt = rng.uniform(10, 80) * s
            p.rect(x, base - hgt, x + w, base, colour)
            x += w * rng.uniform(0.7, 1.2)


def draw_road(p: Painter, cam: Camera, rng: np.random.Generator, road: Road, snowy: bool) -> None:
    depths = geometric_depths(cam.z_near() * 0.8, Z_FAR_M, 24)
    kerb = road.half + road.sidewalk
    for k in range(len(depths) - 1):
        za, zb = depths[k], depths[k + 1]
        p.at(za)
        if road.sidewalk > 0:
            for side in (-1, 1):
                pavement = (235, 235, 238) if snowy else (165, 162, 155)
                p.poly(cam.ground_quad(side * road.half, side * kerb, za, zb), pavement)
        p.poly(cam.ground_quad(-road.half, road.half, za, zb), road.asphalt)
    # Lane marks: solid edge lines, dashed separators (the centre line solid yellow on some roads).
    line_w = 0.15
    period, dash = rng.uniform(9, 13), rng.uniform(2.5, 4.0)
    phase = rng.uniform(0, period)
    z_start = max(cam.z_near() * 0.8, 1.0)
    separators = [-road.half + LANE_WIDTH_M * k for k in range(1, road.lanes)]
    white = (235, 235, 230) if not snowy else (215, 215, 215)
    for x in (-road.half + 0.3, road.half - 0.3):
        for k in range(len(depths) - 1):
            za, zb = depths[k], depths[k + 1]
            if za > 150:
                break
            p.at(za)
            p.poly(cam.ground_quad(x - line_w / 2, x + line_w / 2, za, zb), white)
    for x in separators:
        centre = road.yellow_centre and abs(x) < 0.5
        z = z_start - phase
        while z < 150:
            za, zb = max(z, z_start), z + (period if centre else dash)
            if zb > za:
                p.at(za)
                colour = (235, 190, 30) if centre else white
                p.poly(cam.ground_quad(x - line_w / 2, x + line_w / 2, za, zb), colour)
            z += period


def draw_shadows(p: Painter, cam: Camera, rng: np.random.Generator, road: Road) -> None:
    """Bands of shade across the road (buildings or trees outside the frame), drawn translucent."""
    for _ in range(int(rng.integers(1, 5))):
        z0 = rng.uniform(cam.z_near(), 60)
        z1 = z0 + rng.uniform(2, 15)
        x0 = -road.half - road.sidewalk - 1
        x1 = rng.uniform(-road.half, road.half + road.sidewalk + 1)
        if rng.random() < 0.5:
            x0, x1 = -x1, -x0
        p.at(z0)
        quad = [
            *cam.ground_quad(x0, x1, z0, z1)[:2],
            cam.project(x1 + 2, 0.0, z1),
            cam.project(x0 + 2, 0.0, z1),
        ]
        p.poly(quad, (0, 0, 10), alpha=int(rng.integers(70, 130)))


def backdrop(
    cam: Camera, rng: np.random.Generator, layout: str, road: Road, night: bool, snowy: bool
) -> tuple[list[Item], list[Item]]:
    """Buildings and trees beside the road: (behind everything on the road, standing among it).

    Urban blocks (8–30 m tall) or suburban houses (4–8 m) line each side with 90 % probability; trees
    (autumn-coloured in 25 % of scenes, bare or snow-laden in snow) stand in front of or behind them.
    """
    kerb = road.half + road.sidewalk
    crowns = _AUTUMN if rng.random() < 0.25 else _FOLIAGE
    behind: list[Item] = []
    among: list[Item] = []
    for side in (-1, 1):
        setback = math.inf  # m from the kerb to the building line; trees nearer than it stand in front
        if layout in ("urban", "suburban") and rng.random() < 0.9:
            z = rng.uniform(max(cam.z_near(), 2), 15)
            setback = rng.uniform(0.5, 2) if layout == "urban" else rng.uniform(4, 10)
            while z < 160:
                length = rng.uniform(8, 30) if layout == "urban" else rng.uniform(8, 16)
                tall = rng.uniform(8, 30) if layout == "urban" else rng.uniform(4, 8)
                colour = jitter(rng, pick(rng, _FACADES), 10)
                x, z0, z1 = side * (kerb + setback), z, z + length
                lit = rng.uniform(0.1, 0.5) if night else 0.0
                behind.append(
                    (
                        z0,
                        lambda p, x=x, z0=z0, z1=z1, tall=tall, colour=colour, lit=lit: _draw_building(
                            p, cam, x, z0, z1, tall, rng.uniform(6, 15), colour, rng, lit
                        ),
                    )
                )
                z = z1 + (rng.uniform(0, 3) if layout == "urban" else rng.uniform(2, 10))
        n_trees = {"urban": 3, "suburban": 8, "rural": 14, "highway": 6}[layout]
        for _ in range(int(rng.integers(0, n_trees + 1))):
            offset = rng.uniform(1, 20)
            crown = None if (snowy and rng.random() < 0.5) else pick(rng, crowns)
            (behind if offset > setback else among).append(
                standing(
                    cam,
                    side * (kerb + offset),
                    rng.uniform(4, 150),
                    lambda p, u, v, s, crown=crown: _draw_tree(p, u, v, s, rng, crown, snowy),
                )
            )
    return behind, among
