"""The work zone of a positive scene: where it goes, and what it holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from roadwork.data.synth.objects import (
    CLOTHES,
    draw_barrier,
    draw_cone,
    draw_diamond_sign,
    draw_excavator,
    draw_jersey_barrier,
    draw_person,
)
from roadwork.data.synth.painter import LANE_WIDTH_M, RGB, Camera, Item, Painter, Road, pick, standing

_HIVIS: tuple[RGB, ...] = ((255, 120, 10), (255, 95, 0), (215, 250, 40), (240, 240, 30))
_SIGN_ORANGE: RGB = (250, 135, 10)


@dataclass(frozen=True)
class WorkZone:
    """A positive scene's work zone: lane ``side`` (-1 left, 1 right), depths ``z0..z0 + length`` m."""

    z0: float
    length: float
    side: int

    def hides(self, road: Road, lane: int, z: float) -> bool:
        """True when a vehicle in lane ``lane`` (0 = leftmost) at depth ``z`` would drive through the work
        zone or stand in front of it: same or next lane, nearer than the zone's end."""
        closed_lane = road.lanes - 1 if self.side > 0 else 0
        return abs(lane - closed_lane) <= 1 and z < self.z0 + self.length


def place_work_zone(cam: Camera, rng: np.random.Generator, road: Road, fog_density: float) -> WorkZone:
    """Draw a work zone whose closed lane shows inside the frame and through the fog.

    Start depth 8–35 m (75 %) or 35–60 m (25 %: small and far), but never where fog hides more than 60 %
    of a colour; length 10–40 m; random side. Up to 10 draws are tried until the closed lane's point 0.5 m
    above the road at the zone's first third falls inside the central 90 % of the frame width and above the
    bottom edge; otherwise the last draw is kept.
    """
    z_first = max(cam.z_near() + 2, 8)
    z_last = max(z_first + 1, min(60.0, -math.log(0.4) / fog_density))
    zone = WorkZone(0.0, 0.0, 1)
    for _ in range(10):
        z_mid = min(35.0, (z_first + z_last) / 2)
        z0 = rng.uniform(z_first, z_mid) if rng.random() < 0.75 else rng.uniform(z_mid, z_last)
        zone = WorkZone(float(z0), float(rng.uniform(10, 40)), 1 if rng.random() < 0.5 else -1)
        x = zone.side * (road.half - LANE_WIDTH_M / 2)
        u, v = cam.to_image(cam.project(x, 0.5, zone.z0 + zone.length / 3))
        if 0.05 * cam.width < u < 0.95 * cam.width and 0 < v < 0.98 * cam.height:
            break
    return zone


def roadwork_items(
    cam: Camera, rng: np.random.Generator, road: Road, time: str, zone: WorkZone
) -> list[Item]:
    """The roadwork of a positive scene as (depth, draw) pairs, laid out in ``zone``.

    A mix, with at least one object on the road, of: cones along the lane closure (tapering in from the
    kerb), striped barriers (sometimes with a run of plastic barriers), an orange work-zone sign before the
    zone, 1–4 workers in hi-vis vests, an excavator; plus (40 %) a patch of fresh asphalt, gravel or a
    trench on the closed lane.
    """
    items: list[Item] = []
    z0, length, side = zone.z0, zone.length, zone.side
    closed_lane_x = side * (road.half - LANE_WIDTH_M / 2)
    boundary_x = side * (road.half - LANE_WIDTH_M)
    light = time != "day"
    chosen = [kind for kind in ("cones", "barriers", "sign", "workers", "excavator") if rng.random() < 0.5]
    if chosen in (
        [],
        ["sign"],
    ):  # the sign stands at the kerb, possibly out of frame: add an object on the road
        chosen.append(pick(rng, ("cones", "barriers", "workers", "excavator")))

    def at(x: float, z: float, fn: Callable[[Painter, float, float, float], None]) -> None:
        items.append(standing(cam, x, z, fn))

    if rng.random() < 0.4:
        # A patch of fresh asphalt or a trench; drawn early (flat on the road) so objects stand on it.
        pz0, pz1 = z0 + rng.uniform(0, 5), z0 + rng.uniform(5, 15)
        xa, xb = closed_lane_x - rng.uniform(0.5, 1.6), closed_lane_x + rng.uniform(0.5, 1.6)
        colour = pick(rng, ((40, 40, 42), (95, 75, 55), (120, 115, 105)))
        quad = cam.ground_quad(xa, xb, pz0, pz1)
        items.append((1e6, lambda p: p.at(pz0).poly(quad, colour)))
    if "cones" in chosen:
        count = int(rng.integers(3, 14))
        taper = rng.uniform(8, 25)
        spacing = rng.uniform(2.5, 6.0)
        for k in range(count):
            z = z0 + k * spacing
            x = boundary_x + side * max(0.0, (1 - k * spacing / taper)) * LANE_WIDTH_M * 0.9
            at(x, z, lambda p, u, v, s: draw_cone(p, u, v, s, rng))
    if "barriers" in chosen:
        for _ in range(int(rng.integers(1, 4))):
            z = z0 + rng.uniform(-2, length)
            at(
                closed_lane_x + rng.uniform(-1, 1),
                z,
                lambda p, u, v, s: draw_barrier(p, u, v, s, rng, light),
            )
        if rng.random() < 0.3:
            run = [float(z) for z in np.linspace(z0, z0 + length, 9)]
            items.append((z0, lambda p: draw_jersey_barrier(p, cam, boundary_x, run)))
    if "sign" in chosen:
        x = side * (road.half + 0.5 + road.sidewalk * rng.uniform(0, 0.8))
        at(
            x,
            max(z0 - rng.uniform(5, 25), cam.z_near() + 3),
            lambda p, u, v, s: draw_diamond_sign(p, u, v, s, rng, _SIGN_ORANGE, "worker", stand=True),
        )
    if "workers" in chosen:
        for _ in range(int(rng.integers(1, 5))):
            vest = pick(rng, _HIVIS)
            at(
                closed_lane_x + rng.uniform(-1.5, 1.5),
                z0 + rng.uniform(0, length),
                lambda p, u, v, s, vest=vest: draw_person(
                    p, u, v, s, rng, pick(rng, CLOTHES), vest, helmet=rng.random() < 0.8
                ),
            )
    if "excavator" in chosen:
        x = side * (road.half + rng.uniform(-LANE_WIDTH_M / 2, 3.0))
        at(x, z0 + rng.uniform(2, length), lambda p, u, v, s: draw_excavator(p, u, v, s, rng, light))
    return items
