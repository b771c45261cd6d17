"""Things that stand on the road plane: work-zone gear (cones, barriers, diamond signs, workers, an
excavator) and street furniture and traffic (street signs, lamps, bins, cars, guard rails, an overpass).

Each ``draw_*`` taking ``(p, u, v, s, ...)`` draws one object at camera-plane point ``(u, v)`` (the centre
of its footprint), with ``s`` pixels per metre at its depth; the painter's depth must already be set. The work
zone and the look-alikes of the negative class share some (a person in a vest or in orange clothes, an orange
or a yellow diamond sign), so only where and how often they appear differs between the classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from roadwork.data.synth.painter import RGB, Camera, Painter, jitter, pick

CLOTHES: tuple[RGB, ...] = (
    (40, 40, 45),
    (30, 45, 90),
    (120, 120, 125),
    (200, 200, 200),
    (120, 30, 30),
    (60, 80, 50),
    (150, 120, 90),
)
_CONE_ORANGE: RGB = (250, 95, 15)
_MACHINE_COLOURS: tuple[RGB, ...] = ((240, 180, 20), (245, 150, 20), (230, 200, 40))
_SODIUM: RGB = (255, 165, 70)
_LED: RGB = (235, 240, 255)


def draw_cone(p: Painter, u: float, v: float, s: float, rng: np.random.Generator) -> None:
    """A traffic cone, 0.5–0.9 m tall, orange with one or two white retro-reflective bands."""
    h, w = rng.uniform(0.5, 0.9) * s, 0.38 * s
    p.rect(u - 0.6 * w, v - 0.08 * s, u + 0.6 * w, v, (25, 25, 25))
    top, base = v - h, v - 0.08 * s
    p.poly(
        [(u - 0.12 * w, top), (u + 0.12 * w, top), (u + 0.5 * w, base), (u - 0.5 * w, base)],
        jitter(rng, _CONE_ORANGE),
    )
    for lo, hi in ((0.35, 0.5), (0.6, 0.72))[: 1 + int(rng.integers(2))]:
        y0, y1 = base - hi * (base - top), base - lo * (base - top)
        half0, half1 = 0.12 * w + (0.38 * w) * (1 - hi), 0.12 * w + (0.38 * w) * (1 - lo)
        p.poly([(u - half0, y0), (u + half0, y0), (u + half1, y1), (u - half1, y1)], (240, 240, 235))
        if p.retroreflective:
            p.light(u, (y0 + y1) / 2, half0, (255, 250, 235), 0.7)


def draw_barrier(p: Painter, u: float, v: float, s: float, rng: np.random.Generator, light: bool) -> None:
    """A 1.2–2.4 m wide A-frame barrier with one or two red/white or orange/white striped boards."""
    w = rng.uniform(1.2, 2.4) * s
    board_colour = pick(rng, ((220, 30, 30), (250, 110, 15)))
    for leg in (u - 0.42 * w, u + 0.42 * w):
        p.line([(leg - 0.1 * s, v), (leg, v - 1.0 * s), (leg + 0.1 * s, v)], (200, 200, 200), 0.06 * s)
    boards = ((0.65, 0.95), (0.25, 0.5))[: 1 + int(rng.integers(2))]
    n_stripes = int(rng.integers(4, 9))
    slant = 0.25 * s * (1 if rng.random() < 0.5 else -1)
    x0, x1 = u - 0.5 * w, u + 0.5 * w
    for lo, hi in boards:
        ytop, ybot = v - hi * s, v - lo * s
        p.rect(x0, ytop, x1, ybot, (245, 245, 245))
        for k in range(0, n_stripes, 2):
            a, b = x0 + k * w / n_stripes, x0 + (k + 1) * w / n_stripes
            pts = [(a, ytop), (b, ytop), (b - slant, ybot), (a - slant, ybot)]
            p.poly([(min(max(x, x0), x1), y) for x, y in pts], board_colour)
    if light:
        p.light(x0, v - 1.05 * s, 0.12 * s, (255, 170, 40), 1.2)


def draw_jersey_barrier(p: Painter, cam: Camera, x: float, depths: Sequence[float]) -> None:
    """A run of alternating red/white plastic barriers, 0.8 m tall, along lateral ``x`` over ``depths``."""
    colours = ((225, 35, 30), (240, 240, 240))
    for k in range(len(depths) - 1, 0, -1):
        za, zb = depths[k], depths[k - 1]
        p.at(zb).poly(cam.side_quad(x, 0.0, 0.8, za, zb), colours[k % 2])


def draw_guard_rail(p: Painter, cam: Camera, x: float, depths: Sequence[float]) -> None:
    """A steel guard rail at 0.7 m along lateral ``x`` over ``depths`` (0.3 m tall band)."""
    for k in range(len(depths) - 1, 0, -1):
        za, zb = depths[k], depths[k - 1]
        p.at(zb).poly(cam.side_quad(x, 0.55, 0.85, za, zb), (165, 168, 172))


def draw_overpass(
    p: Painter, cam: Camera, z: float, low: float, high: float, rng: np.random.Generator
) -> None:
    """A bridge deck across the view at depth ``z`` (underside ``low`` m, top ``high`` m) on two pillars."""
    p.at(z)
    for x in (-1, 1):
        px = x * rng.uniform(8, 14)
        p.poly(cam.front_quad(px - 0.6, px + 0.6, 0.0, low, z), (140, 140, 138))
    p.poly(cam.front_quad(-300, 300, low, high, z), (115, 115, 112))


def draw_diamond_sign(
    p: Painter, u: float, v: float, s: float, rng: np.random.Generator, colour: RGB, symbol: str, stand: bool
) -> None:
    """A diamond sign (0.6–1.0 m) with a black border and ``symbol`` ('worker', 'arrow', 'curve', '!').

    ``stand`` puts it on a low folding stand (work zones) instead of a 2.2 m pole.
    """
    d = rng.uniform(0.6, 1.0) * s
    cy = v - (0.9 * s + d / 2 if stand else 2.2 * s)
    if stand:
        p.line([(u - 0.4 * d, v), (u, cy)], (60, 60, 60), 0.05 * s)
        p.line([(u + 0.4 * d, v), (u, cy)], (60, 60, 60), 0.05 * s)
    else:
        p.line([(u, v), (u, cy)], (130, 130, 135), 0.07 * s)
    r = d / 2
    p.poly([(u, cy - r), (u + r, cy), (u, cy + r), (u - r, cy)], (20, 20, 20))
    r2 = 0.88 * r
    p.poly([(u, cy - r2), (u + r2, cy), (u, cy + r2), (u - r2, cy)], jitter(rng, colour, 8))
    k = 0.35 * r
    ink = (15, 15, 15)
    if symbol == "worker":
        p.oval(u - 0.18 * k, cy - 1.0 * k, u + 0.12 * k, cy - 0.7 * k, ink)
        p.line(
            [(u - 0.1 * k, cy - 0.6 * k), (u + 0.2 * k, cy + 0.3 * k), (u - 0.2 * k, cy + 0.9 * k)],
            ink,
            0.12 * k,
        )
        p.line([(u + 0.2 * k, cy + 0.3 * k), (u + 0.5 * k, cy + 0.9 * k)], ink, 0.12 * k)
        p.line([(u - 0.05 * k, cy - 0.3 * k), (u - 0.7 * k, cy + 0.2 * k)], ink, 0.1 * k)
        p.poly([(u + 0.5 * k, cy + 0.7 * k), (u + 1.0 * k, cy + 0.7 * k), (u + 0.8 * k, cy + 0.95 * k)], ink)
    elif symbol == "arrow":
        p.line([(u - 0.8 * k, cy), (u + 0.6 * k, cy)], ink, 0.2 * k)
        p.poly([(u + 0.9 * k, cy), (u + 0.4 * k, cy - 0.4 * k), (u + 0.4 * k, cy + 0.4 * k)], ink)
    elif symbol == "curve":
        p.line(
            [
                (u - 0.3 * k, cy + 0.9 * k),
                (u - 0.3 * k, cy),
                (u + 0.3 * k, cy - 0.4 * k),
                (u + 0.3 * k, cy - 0.9 * k),
            ],
            ink,
            0.2 * k,
        )
    else:
        p.rect(u - 0.1 * k, cy - 0.8 * k, u + 0.1 * k, cy + 0.3 * k, ink)
        p.rect(u - 0.1 * k, cy + 0.5 * k, u + 0.1 * k, cy + 0.7 * k, ink)


def draw_street_sign(p: Painter, u: float, v: float, s: float, rng: np.random.Generator) -> None:
    """An ordinary traffic sign on a pole: red-ringed round, blue round, stop octagon or blue/green board."""
    kind = int(rng.integers(4))
    d = rng.uniform(0.6, 0.9) * s
    top = v - rng.uniform(2.0, 2.8) * s
    p.line([(u, v), (u, top + d / 2)], (130, 130, 135), 0.07 * s)
    if kind == 0:
        p.oval(u - d / 2, top, u + d / 2, top + d, (200, 20, 25))
        p.oval(u - 0.36 * d, top + 0.14 * d, u + 0.36 * d, top + 0.86 * d, (245, 245, 245))
        p.rect(u - 0.2 * d, top + 0.4 * d, u + 0.2 * d, top + 0.6 * d, (20, 20, 20))
    elif kind == 1:
        p.oval(u - d / 2, top, u + d / 2, top + d, (25, 70, 170))
        p.line([(u, top + 0.8 * d), (u, top + 0.25 * d)], (245, 245, 245), 0.1 * d)
    elif kind == 2:
        r = d / 2
        pts = [
            (
                u + r * math.cos(math.pi / 8 + k * math.pi / 4),
                top + r + r * math.sin(math.pi / 8 + k * math.pi / 4),
            )
            for k in range(8)
        ]
        p.poly(pts, (200, 20, 25))
    else:
        colour = pick(rng, ((25, 70, 170), (20, 110, 60)))
        p.rect(u - 0.8 * d, top, u + 0.8 * d, top + 0.7 * d, colour)
        p.rect(u - 0.6 * d, top + 0.2 * d, u + 0.4 * d, top + 0.3 * d, (240, 240, 240))
        p.rect(u - 0.6 * d, top + 0.4 * d, u + 0.2 * d, top + 0.5 * d, (240, 240, 240))


def draw_person(
    p: Painter,
    u: float,
    v: float,
    s: float,
    rng: np.random.Generator,
    clothes: RGB,
    vest: RGB | None,
    helmet: bool,
) -> None:
    """A standing person, 1.6–1.9 m tall.

    ``vest`` adds a hi-vis vest with reflective bands, ``helmet`` a hard hat (workers).
    """
    h = rng.uniform(1.6, 1.9) * s
    w = 0.45 * s
    trousers = pick(rng, CLOTHES[:3])
    skin = pick(rng, ((230, 190, 160), (190, 140, 100), (120, 80, 55)))
    stride = rng.uniform(0, 0.12) * s
    p.line([(u - 0.12 * w, v - 0.47 * h), (u - 0.15 * w - stride, v)], trousers, 0.3 * w)
    p.line([(u + 0.12 * w, v - 0.47 * h), (u + 0.15 * w + stride, v)], trousers, 0.3 * w)
    p.rect(u - 0.5 * w, v - 0.82 * h, u + 0.5 * w, v - 0.45 * h, clothes)
    p.line([(u - 0.48 * w, v - 0.8 * h), (u - 0.6 * w, v - 0.5 * h)], clothes, 0.22 * w)
    p.line([(u + 0.48 * w, v - 0.8 * h), (u + 0.6 * w, v - 0.5 * h)], clothes, 0.22 * w)
    if vest is not None:
        p.rect(u - 0.5 * w, v - 0.8 * h, u + 0.5 * w, v - 0.5 * h, jitter(rng, vest, 8))
        for y in (0.6, 0.7):
            p.rect(u - 0.5 * w, v - (y + 0.02) * h, u + 0.5 * w, v - (y - 0.02) * h, (225, 225, 215))
            if p.retroreflective:
                p.light(u, v - y * h, 0.3 * w, (255, 250, 235), 0.7)
    head = 0.13 * h
    p.oval(u - head / 2, v - 0.82 * h - head, u + head / 2, v - 0.82 * h, skin)
    if helmet:
        hat = pick(rng, ((250, 250, 245), (250, 200, 20), (250, 120, 20)))
        p.poly(
            [
                (u - 0.6 * head, v - 0.82 * h - 0.55 * head),
                (u + 0.6 * head, v - 0.82 * h - 0.55 * head),
                (u + 0.4 * head, v - 0.82 * h - 1.1 * head),
                (u - 0.4 * head, v - 0.82 * h - 1.1 * head),
            ],
            hat,
        )


def draw_excavator(p: Painter, u: float, v: float, s: float, rng: np.random.Generator, light: bool) -> None:
    """An excavator seen from the side, about 3 m tall: tracks, body, cab, a two-segment arm and a bucket."""
    body = jitter(rng, pick(rng, _MACHINE_COLOURS), 10)
    facing = 1 if rng.random() < 0.5 else -1
    length = rng.uniform(3.5, 5.0) * s
    p.rect(u - length / 2, v - 0.8 * s, u + length / 2, v, (45, 45, 45))
    for k in range(5):
        x = u - length / 2 + (k + 0.5) * length / 5
        p.oval(x - 0.25 * s, v - 0.6 * s, x + 0.25 * s, v - 0.1 * s, (90, 90, 90))
    p.rect(u - 0.45 * length, v - 1.8 * s, u + 0.45 * length, v - 0.8 * s, body)
    cab_x = u - facing * 0.1 * length
    p.rect(cab_x - 0.6 * s, v - 3.0 * s, cab_x + 0.6 * s, v - 1.8 * s, body)
    p.rect(cab_x - 0.45 * s, v - 2.85 * s, cab_x + 0.45 * s, v - 2.0 * s, (60, 80, 95))
    root = (u + facing * 0.3 * length, v - 1.6 * s)
    elbow = (u + facing * (0.3 * length + rng.uniform(1.5, 2.5) * s), v - rng.uniform(3.0, 4.2) * s)
    tip = (elbow[0] + facing * rng.uniform(1.0, 1.8) * s, v - rng.uniform(0.3, 1.8) * s)
    p.line([root, elbow], body, 0.45 * s)
    p.line([elbow, tip], body, 0.35 * s)
    p.poly(
        [(tip[0], tip[1] - 0.3 * s), (tip[0] + facing * 0.8 * s, tip[1]), (tip[0], tip[1] + 0.5 * s)],
        (60, 60, 60),
    )
    if light:
        p.light(cab_x, v - 3.05 * s, 0.15 * s, (255, 160, 30), 1.5)


def draw_car(
    p: Painter,
    u: float,
    v: float,
    s: float,
    rng: np.random.Generator,
    colour: RGB,
    kind: str,
    oncoming: bool,
    night: bool,
) -> None:
    """A car, van or bus seen from behind (or from the front when ``oncoming``), with lamps lit at night."""
    width, height = {"car": (1.8, 1.45), "van": (2.0, 2.2), "bus": (2.5, 3.1)}[kind]
    w, h = width * s, height * s
    for side in (-1, 1):
        p.rect(u + side * 0.38 * w - 0.1 * w, v - 0.25 * s, u + side * 0.38 * w + 0.1 * w, v, (20, 20, 20))
    body_top = v - (0.62 if kind == "car" else 0.85) * h
    p.rect(u - w / 2, body_top, u + w / 2, v - 0.15 * s, colour)
    if kind == "car":
        p.poly(
            [
                (u - 0.42 * w, body_top),
                (u + 0.42 * w, body_top),
                (u + 0.32 * w, v - h),
                (u - 0.32 * w, v - h),
            ],
            colour,
        )
        p.poly(
            [
                (u - 0.36 * w, body_top - 0.03 * h),
                (u + 0.36 * w, body_top - 0.03 * h),
                (u + 0.29 * w, v - 0.95 * h),
                (u - 0.29 * w, v - 0.95 * h),
            ],
            (40, 50, 60),
        )
    else:
        p.rect(u - w / 2, v - h, u + w / 2, body_top, colour)
        p.rect(
            u - 0.45 * w, v - 0.95 * h, u + 0.45 * w, v - (0.65 if kind == "bus" else 0.75) * h, (40, 50, 60)
        )
    lamp_y = v - 0.45 * s if kind == "car" else v - 0.6 * s
    lamp = (245, 245, 235) if oncoming else (200, 20, 20)
    for side in (-1, 1):
        lu = u + side * 0.4 * w
        p.rect(lu - 0.08 * w, lamp_y - 0.05 * w, lu + 0.08 * w, lamp_y + 0.05 * w, lamp)
        if night:
            p.light(
                lu, lamp_y, 0.1 * w, (255, 250, 230) if oncoming else (255, 40, 30), 2.0 if oncoming else 1.0
            )
    p.rect(u - 0.15 * w, lamp_y + 0.05 * w, u + 0.15 * w, lamp_y + 0.12 * w, (230, 230, 220))


def draw_bin(p: Painter, u: float, v: float, s: float, colour: RGB) -> None:
    """A 1.1 m wheelie bin."""
    p.rect(u - 0.32 * s, v - 1.0 * s, u + 0.32 * s, v, colour)
    p.rect(u - 0.36 * s, v - 1.1 * s, u + 0.36 * s, v - 0.98 * s, tuple(0.7 * c for c in colour))


def draw_lamp(p: Painter, u: float, v: float, s: float, side: int, lit: bool, sodium: bool) -> None:
    """A 7 m street lamp whose arm reaches over the road (``side`` -1: lamp on the left kerb)."""
    top = v - 7.0 * s
    arm = (u - side * 1.5 * s, top)
    p.line([(u, v), (u, top)], (90, 90, 95), 0.15 * s)
    p.line([(u, top), arm], (90, 90, 95), 0.1 * s)
    p.rect(arm[0] - 0.3 * s, top, arm[0] + 0.3 * s, top + 0.15 * s, (200, 200, 190))
    if lit:
        p.light(arm[0], top + 0.15 * s, 0.35 * s, _SODIUM if sodium else _LED, 1.6)
