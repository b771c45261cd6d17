"""The camera model and the painter every drawing function draws with.

A :class:`Camera` projects world points (metres) onto camera-plane pixels; a :class:`Painter` draws those
shapes on the image, rolled by the camera and shaded by depth (head lights, fog). Scene parts are collected as
:data:`Item` pairs and painted far to near.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from PIL import ImageDraw

LANE_WIDTH_M = 3.4
Z_FAR_M = 400.0

_T = TypeVar("_T")
RGB = tuple[int, int, int]
# A point in pixels.
Point = tuple[float, float]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over a flat road.

    Projection gives *camera-plane* pixels (before the roll); :meth:`to_image` rolls them about the image
    centre into final-image pixels. The camera plane is drawn over ``[-margin_u, width + margin_u] x
    [-margin_v, height + margin_v]``, enough to fill the frame at any roll.
    """

    width: int  # final image size, px
    height: int
    margin_u: float  # px
    margin_v: float
    horizon: float  # v of the horizon in camera-plane pixels
    vx: float  # u of the vanishing point, px
    focal: float  # px
    cam_height: float  # m above the road
    cam_x: float  # m, lateral position relative to the road centre line at Z = 0
    curve: float  # 1/m; the road centre line sits at lateral offset curve * Z**2
    roll_cos: float
    roll_sin: float

    def project(self, x: float, y: float, z: float) -> Point:
        """Camera-plane pixel of world point (lateral ``x``, height ``y``, depth ``z > 0``), in metres."""
        return (
            self.vx + self.focal * (x + self.curve * z * z - self.cam_x) / z,
            self.horizon + self.focal * (self.cam_height - y) / z,
        )

    def ground_quad(self, xa: float, xb: float, za: float, zb: float) -> list[Point]:
        """The road-plane rectangle lateral ``xa..xb`` by depth ``za..zb``."""
        return [
            self.project(xa, 0.0, za),
            self.project(xb, 0.0, za),
            self.project(xb, 0.0, zb),
            self.project(xa, 0.0, zb),
        ]

    def side_quad(self, x: float, ya: float, yb: float, za: float, zb: float) -> list[Point]:
        """The rectangle in the plane at lateral ``x`` (facing the road): heights ``ya..yb``, depths
        ``za..zb``."""
        return [
            self.project(x, ya, za),
            self.project(x, ya, zb),
            self.project(x, yb, zb),
            self.project(x, yb, za),
        ]

    def front_quad(self, xa: float, xb: float, ya: float, yb: float, z: float) -> list[Point]:
        """The rectangle facing the camera at depth ``z``: lateral ``xa..xb``, heights ``ya..yb``."""
        return [
            self.project(xa, ya, z),
            self.project(xb, ya, z),
            self.project(xb, yb, z),
            self.project(xa, yb, z),
        ]

    def ppm(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.focal / z

    def z_near(self) -> float:
        """Depth of the nearest road point that can appear in the frame."""
        return self.focal * self.cam_height / max(self.height + self.margin_v - self.horizon, 1.0)

    def to_image(self, point: Point) -> Point:
        """Roll a camera-plane point about the image centre into final-image pixels."""
        dx, dy = point[0] - self.width / 2, point[1] - self.height / 2
        return (
            dx * self.roll_cos + dy * self.roll_sin + self.width / 2,
            -dx * self.roll_sin + dy * self.roll_cos + self.height / 2,
        )


@dataclass(frozen=True)
class Light:
    """An emissive spot in final-image pixels, added after ambient lighting so it glows (dusk and night).

    ``strength`` scales its halo; from 0.5 up it also gets a bright core of ``radius`` px.
    """

    u: float
    v: float
    radius: float
    rgb: RGB
    strength: float


@dataclass
class Painter:
    """Draws camera-plane shapes on the final image, rolled by the camera and shaded by depth.

    Set the depth of what is drawn next with :meth:`at`. ``col`` first brightens a colour by the camera-side
    light (head lights at night), ``1 + headlights * exp(-z / 30 m)``, clipped at 255, then mixes it with the
    fog colour by ``1 - exp(-fog_density * z)``. Sky (``unlit``) gets neither head light nor depth.
    """

    draw: ImageDraw.ImageDraw
    cam: Camera
    fog_rgb: RGB
    fog_density: float  # 1/m
    headlights: float  # extra light at z = 0, relative to the ambient light
    retroreflective: bool  # reflective bands shine (night)
    lights: list[Light] = field(default_factory=list)
    z: float = 0.0
    unlit: bool = False

    def at(self, z: float, unlit: bool = False) -> Painter:
        self.z, self.unlit = z, unlit
        return self

    def col(self, rgb: Sequence[float], alpha: int = 255) -> tuple[int, int, int, int]:
        gain = 1.0 if self.unlit else 1.0 + self.headlights * math.exp(-self.z / 30.0)
        t = 1.0 - math.exp(-self.fog_density * self.z)
        r, g, b = (min(255.0, c * gain) for c in rgb[:3])
        return (
            round(r + (self.fog_rgb[0] - r) * t),
            round(g + (self.fog_rgb[1] - g) * t),
            round(b + (self.fog_rgb[2] - b) * t),
            alpha,
        )

    def poly(self, points: Sequence[Point], rgb: Sequence[float], alpha: int = 255) -> None:
        self.draw.polygon([self.cam.to_image(pt) for pt in points], fill=self.col(rgb, alpha))

    def rect(self, x0: float, y0: float, x1: float, y1: float, rgb: Sequence[float]) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], rgb)

    def oval(self, x0: float, y0: float, x1: float, y1: float, rgb: Sequence[float]) -> None:
        # The roll moves the centre; the axes stay unrolled, which at |roll| <= 10 degrees is invisible.
        cu, cv = self.cam.to_image(((x0 + x1) / 2, (y0 + y1) / 2))
        rx, ry = abs(x1 - x0) / 2, abs(y1 - y0) / 2
        self.draw.ellipse((cu - rx, cv - ry, cu + rx, cv + ry), fill=self.col(rgb))

    def line(self, points: Sequence[Point], rgb: Sequence[float], width: float) -> None:
        self.draw.line(
            [self.cam.to_image(pt) for pt in points], fill=self.col(rgb), width=max(1, round(width))
        )

    def light(self, u: float, v: float, radius: float, rgb: RGB, strength: float = 1.0) -> None:
        iu, iv = self.cam.to_image((u, v))
        self.lights.append(Light(iu, iv, max(radius, 0.6), rgb, strength))


Item = tuple[float, Callable[[Painter], None]]
"""(depth in m, draw function): scene parts are collected first and painted far to near."""


def standing(cam: Camera, x: float, z: float, draw: Callable[[Painter, float, float, float], None]) -> Item:
    """The item for an object standing on the road plane at lateral ``x``, depth ``z``.

    ``draw(painter, u, v, s)`` receives the camera-plane footprint centre and the pixels per metre there.
    """
    u, v = cam.project(x, 0.0, z)
    s = cam.ppm(z)
    return z, lambda p: draw(p.at(z), u, v, s)


def jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 12.0) -> RGB:
    """``rgb`` with independent uniform noise of +-``amount`` per channel, clipped to 0..255."""
    r, g, b = (
        min(255, max(0, int(c + e)))
        for c, e in zip(rgb, rng.uniform(-amount, amount, 3).tolist(), strict=True)
    )
    return r, g, b


def pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]


def geometric_depths(z_near: float, z_far: float, count: int) -> np.ndarray:
    """``count`` depths spaced geometrically from ``z_near`` to ``z_far`` (even spacing on screen)."""
    return np.geomspace(z_near, z_far, count)


@dataclass(frozen=True)
class Road:
    """The road a scene looks along: carriageway, lanes, sidewalks and surface colours."""

    half: float  # m, half the carriageway width
    lanes: int
    sidewalk: float  # m, 0 for none
    asphalt: RGB
    ground: RGB
    yellow_centre: bool
