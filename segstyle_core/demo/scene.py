"""Procedural street scenes for the demo dataset, as image-space polygons, seen by a pinhole
camera 1.5 m above a flat, straight street (world X right, Y up, Z ahead, metres). An object is a
Cityscapes label and :class:`Piece` s (their union is its silhouette; later pieces paint over
earlier ones); objects draw in ``(layer, -depth)`` order. One generator draws everything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from numpy.typing import ArrayLike

# Drawing layers, back to front. Depth orders objects inside a layer (far first).
SKY, FAR, GROUND, FACADE, LOT, HEDGE, STREET, EGO = range(8)

RGB = tuple[int, int, int]
CAR_COLORS: tuple[RGB, ...] = (
    (200, 202, 206), (236, 236, 232), (28, 28, 32), (125, 22, 28), (32, 52, 112),
    (84, 88, 94), (150, 148, 138), (196, 164, 44), (24, 72, 52), (170, 70, 30),
)  # fmt: skip
WALL_COLORS: tuple[RGB, ...] = (
    (204, 192, 170), (180, 172, 162), (214, 204, 182), (158, 104, 86), (192, 180, 138),
    (150, 150, 148), (222, 216, 200), (172, 140, 118), (186, 196, 200),
)  # fmt: skip
SHIRT_COLORS: tuple[RGB, ...] = (
    (180, 30, 34), (34, 62, 150), (228, 228, 224), (40, 40, 44), (62, 122, 64),
    (204, 160, 44), (122, 82, 142), (92, 92, 104),
)  # fmt: skip
TROUSER_COLORS: tuple[RGB, ...] = (
    (32, 42, 84), (30, 30, 32), (92, 82, 70), (62, 62, 72), (112, 102, 82),
)  # fmt: skip
SKIN_COLORS: tuple[RGB, ...] = (
    (224, 187, 160), (198, 150, 120), (160, 110, 80), (112, 76, 56), (236, 202, 178),
)  # fmt: skip
HAIR_COLORS: tuple[RGB, ...] = ((30, 25, 20), (82, 56, 36), (152, 120, 72), (62, 62, 62))
# Outlines in metres: a car's rear body, a person's torso.
_CAR_BODY = ((-0.92, 0.3), (0.92, 0.3), (0.92, 0.86), (0.86, 0.98), (-0.86, 0.98), (-0.92, 0.86))
_TORSO = ((-0.2, 0.82), (0.2, 0.82), (0.23, 1.42), (0.1, 1.5), (-0.1, 1.5), (-0.23, 1.42))


@dataclass(frozen=True)
class Surface:
    """How a piece is painted (amplitudes in grey levels): base ``color``, per-pixel ``noise``
    std, smooth ``grain`` of ``grain_px`` features, ``shade`` factors at top and bottom,
    ``round`` darkening to the sides (cylinders), cosine ``stripes`` of period ``stripe_px``
    (0: none) varying along y (``stripe_axis`` 0) or x (1)."""

    color: RGB
    noise: float = 5.0
    grain: float = 0.0
    grain_px: float = 24.0
    shade: tuple[float, float] = (1.0, 1.0)
    round: float = 0.0
    stripes: float = 0.0
    stripe_px: float = 0.0
    stripe_axis: int = 0


@dataclass(frozen=True)
class Piece:
    """A polygon in image pixels (``K×2`` float, x then y) and the surface painted inside it."""

    polygon: np.ndarray
    surface: Surface


@dataclass(frozen=True)
class SceneObject:
    """One annotated object: its label, pieces, and an optional ``K×2`` ground ``shadow``."""

    label: str
    pieces: tuple[Piece, ...]
    layer: int
    depth: float = 0.0
    shadow: np.ndarray | None = None


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: focal length and principal point in pixels, height above the street."""

    focal: float
    cx: float
    horizon: float
    height: float = 1.5

    def project(self, x: ArrayLike, y: ArrayLike, z: ArrayLike) -> np.ndarray:
        """World points (metres; ``z`` clamped to >= 0.3) to image points, ``K×2`` (x, y)."""
        z = np.maximum(np.asarray(z, dtype=np.float64), 0.3)
        u = self.cx + self.focal * np.asarray(x, dtype=np.float64) / z
        v = self.horizon + self.focal * (self.height - np.asarray(y, dtype=np.float64)) / z
        return np.stack(np.broadcast_arrays(u, v), axis=-1)

    def facing(self, x: float, z: float, uv: np.ndarray) -> np.ndarray:
        """Points ``(u, v)`` of a plane facing the camera at depth ``z``, centred at ``x``."""
        return self.project(x + uv[:, 0], uv[:, 1], z)

    def side(self, x: float, z: float, sv: np.ndarray) -> np.ndarray:
        """Points ``(s, v)`` of the vertical plane ``X = x``, ``s`` metres beyond depth ``z``."""
        return self.project(x, sv[:, 1], z + sv[:, 0])

    def ground(self, xz: np.ndarray) -> np.ndarray:
        return self.project(xz[:, 0], 0.0, xz[:, 1])


def rect(u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
    """The four corners of an axis-aligned rectangle, ``4×2``."""
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], dtype=np.float64)


def circle(u: float, v: float, r: float, n: int = 20) -> np.ndarray:
    """A circle of radius ``r`` around ``(u, v)`` as an ``n``-gon, ``n×2``."""
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([u + r * np.cos(t), v + r * np.sin(t)], -1)


def _pick(rng: np.random.Generator, options: tuple[RGB, ...]) -> RGB:
    return options[int(rng.integers(len(options)))]


def _tint(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, c * factor)) for c in color)  # type: ignore[return-value]


def car(cam: Camera, x: float, z: float, rng: np.random.Generator, layer: int) -> SceneObject:
    """A car seen from behind (or the front: white lamps) at lateral ``x``, rear at ``z``; off
    the camera's axis its inner side shows too (profile, windows, two wheels)."""
    paint = Surface(_pick(rng, CAR_COLORS), noise=3.0, grain=6.0, grain_px=30.0, shade=(1.15, 0.72))
    glass = Surface((38, 46, 58), noise=4.0, grain=10.0, shade=(1.5, 0.8))
    rubber = Surface((24, 24, 26), noise=3.0)
    metal = Surface((150, 152, 156), noise=6.0, shade=(1.2, 0.8))
    lamp = Surface((190, 24, 22) if rng.random() < 0.7 else (232, 230, 214), noise=6.0)
    length = rng.uniform(4.1, 4.7)
    k = length / 4.4
    pieces: list[Piece] = []
    if abs(x) > 0.95:
        side = partial(cam.side, x - np.sign(x) * 0.9, z)
        profile = [(0, 0.3), (0, 0.95), (0.9, 1.0), (1.25, 1.42), (2.75, 1.45), (3.35, 1.02)]
        body = np.array([(s * k, v) for s, v in profile] + [(length, 0.9), (length, 0.3)])
        windows = (
            np.array([(1.35, 1.05), (2.0, 1.05), (2.0, 1.37), (1.42, 1.37)]) * (k, 1),
            np.array([(2.1, 1.05), (3.15, 1.05), (2.68, 1.37), (2.1, 1.37)]) * (k, 1),
        )
        pieces += [Piece(side(body), paint), *(Piece(side(w), glass) for w in windows)]
        for s in (0.8 * k, length - 0.85 * k):
            pieces += [Piece(side(circle(s, 0.33, 0.33)), rubber)]
            pieces += [Piece(side(circle(s, 0.33, 0.17, 12)), metal)]
    outer = ((-0.88, -0.6), (0.6, 0.88))  # the tyres' and the lamps' spans across the rear
    rear = [
        *((rect(u0, 0.0, u1, 0.34), rubber) for u0, u1 in outer),
        (np.array(_CAR_BODY), paint),
        (np.array([(-0.8, 0.96), (0.8, 0.96), (0.62, 1.45), (-0.62, 1.45)]), paint),
        (np.array([(-0.68, 1.02), (0.68, 1.02), (0.56, 1.38), (-0.56, 1.38)]), glass),
        (rect(-0.93, 0.28, 0.93, 0.42), Surface((36, 36, 40), noise=4.0)),
        *((rect(u0, 0.7, u1, 0.82), lamp) for u0, u1 in outer),
        (rect(-0.26, 0.46, 0.26, 0.58), Surface((226, 226, 220), noise=6.0)),
    ]
    pieces += [Piece(cam.facing(x, z, uv), surface) for uv, surface in rear]
    shadow = cam.ground(rect(x - 1.0, z - 0.2, x + 1.0, z + length))
    return SceneObject("car", tuple(pieces), layer, z, shadow)


def person(cam: Camera, x: float, z: float, rng: np.random.Generator, layer: int) -> SceneObject:
    """A pedestrian facing or leaving the camera: legs, torso, arms, neck, head and hair."""
    s = rng.uniform(1.55, 1.92) / 1.75
    stride = rng.uniform(0.0, 0.08)
    skin = Surface(_pick(rng, SKIN_COLORS), noise=4.0, shade=(1.1, 0.85))
    shirt = Surface(_pick(rng, SHIRT_COLORS), noise=5.0, grain=8.0, grain_px=6.0, shade=(1.1, 0.8))
    sleeve = Surface(_tint(shirt.color, 0.85), noise=5.0, shade=(1.1, 0.8))
    trousers = Surface(_pick(rng, TROUSER_COLORS), noise=5.0, shade=(1.05, 0.8))
    shoes = Surface((28, 26, 24), noise=3.0)
    hair = Surface(_pick(rng, HAIR_COLORS), noise=6.0)
    shapes = [
        (np.array([(-0.18 - stride, 0.0), (-0.04, 0.0), (-0.01, 0.86), (-0.17, 0.86)]), trousers),
        (np.array([(0.04, 0.0), (0.18 + stride, 0.0), (0.17, 0.86), (0.01, 0.86)]), trousers),
        (rect(-0.2 - stride, 0.0, -0.03, 0.07), shoes),
        (rect(0.03, 0.0, 0.2 + stride, 0.07), shoes),
        (np.array([(-0.3, 0.86), (-0.24, 0.86), (-0.2, 1.42), (-0.27, 1.42)]), sleeve),
        (np.array([(0.24, 0.86), (0.3, 0.86), (0.27, 1.42), (0.2, 1.42)]), sleeve),
        *((circle(hand * 0.27, 0.84, 0.045, 8), skin) for hand in (-1, 1)),
        (np.array(_TORSO), shirt),
        (rect(-0.05, 1.46, 0.05, 1.56), skin),
        (circle(0.0, 1.69, 0.115), hair),
        (circle(0.0, 1.64, 0.11), skin),
    ]
    pieces = tuple(Piece(cam.facing(x, z, uv * (1.0, s)), surface) for uv, surface in shapes)
    shadow = cam.ground(np.array([(-0.35, -0.1), (0.35, -0.1), (0.5, 0.6), (-0.2, 0.6)]) + (x, z))
    return SceneObject("person", pieces, layer, z, shadow)


def pole(cam: Camera, x: float, z: float, rng: np.random.Generator) -> list[SceneObject]:
    """A metal pole, with a traffic sign or a traffic light on top half of the time."""
    height = rng.uniform(3.2, 5.5)
    place = partial(cam.facing, x, z)
    metal = Surface((128, 130, 132), noise=4.0, round=0.5)
    objects = [SceneObject("pole", (Piece(place(rect(-0.06, 0, 0.06, height)), metal),), STREET, z)]
    kind = rng.integers(4)
    white = Surface((236, 236, 232), noise=5.0)
    if kind == 0:  # round, red rim
        ring = Surface((196, 28, 30), noise=5.0)
        sign = [(circle(0, height - 0.4, 0.32), ring), (circle(0, height - 0.4, 0.24), white)]
    elif kind == 1:  # square, blue
        blue = Surface((30, 80, 170), noise=5.0, shade=(1.1, 0.9))
        square = rect(-0.3, height - 0.75, 0.3, height - 0.1)
        sign = [(square, blue), (rect(-0.06, height - 0.6, 0.06, height - 0.25), white)]
    if kind < 2:
        parts = tuple(Piece(place(shape), surface) for shape, surface in sign)
        objects.append(SceneObject("traffic sign", parts, STREET, z - 0.05))
    elif kind == 2:
        housing = Surface((34, 36, 34), noise=4.0)
        lit = int(rng.integers(3))
        lamps = [(200, 30, 30), (220, 160, 30), (40, 190, 80)]
        pieces = [Piece(place(rect(-0.17, height - 1.0, 0.17, height)), housing)]
        for i, color in enumerate(lamps):
            tone = color if i == lit else _tint(color, 0.35)
            centre = circle(0, height - 0.18 - 0.32 * i, 0.1, 12)
            pieces.append(Piece(place(centre), Surface(tone, noise=5.0)))
        objects.append(SceneObject("traffic light", tuple(pieces), STREET, z - 0.05))
    return objects


def tree(cam: Camera, x: float, z: float, rng: np.random.Generator) -> SceneObject:
    """A street tree: a trunk and a ragged crown (both ``vegetation``, as in Cityscapes)."""
    radius = rng.uniform(1.6, 2.8)
    top = rng.uniform(2.6, 3.6)
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    wobble = np.convolve(np.r_[rng.normal(0, 0.25, 40), 0, 0], np.ones(3) / 3, "valid")
    ragged = radius * (1 + wobble)
    crown = np.stack([ragged * np.cos(angles), top + radius + ragged * np.sin(angles)], -1)
    bark = Surface((84, 64, 44), noise=8.0, round=0.6, stripes=6.0, stripe_px=3.0, stripe_axis=1)
    leaves = Surface((62, 98, 42), noise=16.0, grain=30.0, grain_px=5.0, shade=(1.25, 0.7))
    pieces = (
        Piece(cam.facing(x, z, rect(-0.16, 0, 0.16, top + radius)), bark),
        Piece(cam.facing(x, z, crown), leaves),
    )
    return SceneObject("vegetation", pieces, STREET, z)


def hedge(cam: Camera, x: float, z0: float, z1: float, rng: np.random.Generator) -> SceneObject:
    """A hedge along the street: a bumpy band in the plane ``X = x`` from depth ``z0`` to ``z1``."""
    s = np.arange(0.0, z1 - z0, 0.5)
    base = rng.uniform(1.0, 1.3)
    tops = base + np.convolve(rng.normal(0, 0.08, s.size + 2), np.ones(3) / 3, "valid")
    outline = np.concatenate([np.stack([s, tops], -1), np.stack([s[::-1], 0 * s], -1)])
    leaves = Surface((58, 92, 40), noise=18.0, grain=28.0, grain_px=4.0, shade=(1.2, 0.65))
    return SceneObject("vegetation", (Piece(cam.side(x, z0, outline), leaves),), HEDGE, z0)


Placer = Callable[[np.ndarray], np.ndarray]


def _windows(place: Placer, length: float, height: float, rng: np.random.Generator) -> list[Piece]:
    """Shop fronts and framed windows of a ``length``×``height`` m facade; ``place`` maps
    ``K×2`` facade points (metres along, up) to image points."""
    glass = Surface((48, 58, 70), noise=5.0, grain=14.0, grain_px=8.0, shade=(1.4, 0.8))
    frame = Surface((230, 228, 220), noise=4.0)
    spacing = rng.uniform(2.6, 3.4)
    pieces: list[Piece] = []
    for s in np.arange(0.8, length - 1.6, spacing):
        pieces.append(Piece(place(rect(s, 0.3, s + 1.8, 2.6)), glass))
        for floor in np.arange(3.4, height - 2.0, 3.1):
            pieces.append(Piece(place(rect(s - 0.08, floor + 0.82, s + 1.38, floor + 2.38)), frame))
            pieces.append(Piece(place(rect(s, floor + 0.9, s + 1.3, floor + 2.3)), glass))
    return pieces


def side_buildings(
    cam: Camera, x: float, z_far: float, rng: np.random.Generator
) -> list[SceneObject]:
    """A row of facades in the plane ``X = x`` from just beside the camera to ``z_far``."""
    objects: list[SceneObject] = []
    z = 0.5
    while z < z_far:
        length = rng.uniform(12.0, 30.0)
        height = rng.uniform(7.0, 18.0)
        color, shade = _pick(rng, WALL_COLORS), (1.05, 0.85 if x < 0 else 0.7)
        wall = Surface(color, grain=10.0, grain_px=40.0, shade=shade, stripes=3.0, stripe_px=4.0)
        place = partial(cam.side, x, z)
        cornice = Surface(_tint(wall.color, 0.7), noise=4.0)
        pieces = [
            Piece(place(rect(0, 0, length, height)), wall),
            Piece(place(rect(0, height - 0.6, length, height)), cornice),
            *_windows(place, length, height, rng),
        ]
        objects.append(SceneObject("building", tuple(pieces), FACADE, z))
        z += length
    return objects


def far_buildings(cam: Camera, z: float, rng: np.random.Generator) -> list[SceneObject]:
    """The skyline across the end of the street: facades facing the camera at depth ``z``."""
    objects: list[SceneObject] = []
    x = -60.0
    while x < 60.0:
        width = rng.uniform(8.0, 20.0)
        height = rng.uniform(10.0, 34.0)
        wall = Surface(_tint(_pick(rng, WALL_COLORS), 0.9), noise=4.0, grain=8.0, shade=(1.0, 0.8))
        place = partial(cam.facing, x, z)
        pieces = [Piece(place(rect(0, 0, width, height)), wall)]
        if cam.focal * 1.3 / z >= 2.0:  # windows at least two pixels wide
            pieces += _windows(place, width, height, rng)
        objects.append(SceneObject("building", tuple(pieces), FAR, z))
        x += width
    return objects


def _ground_strip(
    cam: Camera, label: str, x0: float, x1: float, z_far: float, surface: Surface, *extra: Piece
) -> SceneObject:
    """A strip of street between ``x0`` and ``x1`` (either order) plus pieces on it, reaching
    0.25 m past both edges and 5 m past ``z_far`` (under its neighbours: no unlabelled seams)."""
    quad = cam.ground(rect(min(x0, x1) - 0.25, 0.5, max(x0, x1) + 0.25, z_far + 5))
    return SceneObject(label, (Piece(quad, surface), *extra), GROUND)


def _road(cam: Camera, left: float, right: float, z_far: float) -> SceneObject:
    asphalt = Surface((92, 90, 94), noise=8.0, grain=5.0, grain_px=40.0, shade=(1.15, 0.85))
    paint = Surface((214, 214, 206), noise=8.0)
    dashes = [rect(-1.68, z, -1.52, z + 3.0) for z in np.arange(2.0, z_far, 9.0)]
    lines = [rect(e - 0.08, 0.5, e + 0.08, z_far) for e in (left + 0.3, right - 0.3)]
    marks = [Piece(cam.ground(mark), paint) for mark in dashes + lines]
    return _ground_strip(cam, "road", left, right, z_far, asphalt, *marks)


def _sidewalk(cam: Camera, x0: float, x1: float, z_far: float) -> SceneObject:
    paving = Surface(
        (150, 142, 140), noise=7.0, grain=8.0, stripes=10.0, stripe_px=5.0, shade=(1.1, 0.9)
    )
    kerb = Surface((182, 180, 176), noise=5.0)
    edge = x0 if abs(x0) < abs(x1) else x1
    curb = Piece(cam.ground(rect(edge - 0.15, 0.5, edge + 0.15, z_far)), kerb)
    return _ground_strip(cam, "sidewalk", x0, x1, z_far, paving, curb)


def _depth_in_view(x: float, far: float, rng: np.random.Generator) -> float:
    """A depth at which lateral offset ``x`` is inside the roughly 50° wide view, up to ``far``."""
    near = max(7.0, abs(x) / 0.4)
    return rng.uniform(near, max(far, near + 1.0))


def _curb_side(
    cam: Camera, side: int, z_far: float, rng: np.random.Generator
) -> tuple[float, list[SceneObject]]:
    """Parking lane, sidewalk with poles, trees and pedestrians; returns the road edge too."""
    edge, facade = 5.8, rng.uniform(8.6, 9.6)
    objects = [_sidewalk(cam, side * edge, side * facade, z_far)]
    objects += side_buildings(cam, side * facade, z_far, rng)
    parked: list[SceneObject] = []
    z = rng.uniform(5.0, 9.0)
    while z < 60.0:
        if rng.random() < 0.8:
            parked.append(car(cam, side * 4.7, z, rng, STREET))
        z += 4.8 + rng.uniform(0.3, 2.5)
    poles = [_depth_in_view(6.1, 40.0, rng) for _ in range(int(rng.integers(1, 4)))]
    for zp in poles:
        objects += pole(cam, side * 6.1, zp, rng)
    for _ in range(int(rng.integers(0, 3))):
        objects.append(tree(cam, side * rng.uniform(6.3, 6.8), rng.uniform(10.0, 50.0), rng))
    walkers = [(rng.uniform(6.5, facade - 0.6), 0.0) for _ in range(int(rng.integers(1, 4)))]
    walkers = [(wx, _depth_in_view(wx, 40.0, rng)) for wx, _ in walkers]
    walkers.append((7.3, poles[0] * 7.3 / 6.1))  # on the line of sight behind the first pole
    in_view = [c.depth for c in parked if c.depth > 12.0]
    if in_view:  # behind a parked car: its rear face hides the legs
        walkers.append((6.9, in_view[int(rng.integers(len(in_view)))] * 6.9 / 5.0))
    objects += [person(cam, side * wx, wz, rng, STREET) for wx, wz in walkers]
    return edge, objects + parked


def _hedge_side(
    cam: Camera, side: int, z_far: float, rng: np.random.Generator
) -> tuple[float, list[SceneObject]]:
    """Narrow sidewalk, a hedge, and a car park behind it with cars and people in it."""
    edge, facade = 3.6, rng.uniform(15.0, 19.0)
    lot = Surface((110, 106, 104), noise=8.0, grain=12.0, shade=(1.1, 0.9))
    objects = [
        _sidewalk(cam, side * edge, side * 5.4, z_far),
        _ground_strip(cam, "parking", side * 5.4, side * facade, z_far, lot),
        hedge(cam, side * 5.6, rng.uniform(2.0, 6.0), rng.uniform(35.0, 60.0), rng),
    ]
    objects += side_buildings(cam, side * facade, z_far, rng)
    for x in rng.uniform(7.5, 13.0, int(rng.integers(2, 5))):
        objects.append(car(cam, side * x, _depth_in_view(x, 45.0, rng), rng, LOT))
    for x in rng.uniform(7.0, 14.0, int(rng.integers(1, 3))):
        objects.append(person(cam, side * x, _depth_in_view(x, 40.0, rng), rng, LOT))
    return edge, objects


def _ego_vehicle(width: int, height: int) -> SceneObject:
    x = np.linspace(-0.1 * width, 1.1 * width, 25)
    top = height * (0.935 + 0.05 * ((x - width / 2) / (width / 2)) ** 2)
    hood = np.concatenate(
        [np.stack([x, top], -1), [(1.1 * width, height + 2), (-0.1 * width, height + 2)]]
    )
    paint = Surface((34, 38, 46), noise=3.0, grain=10.0, grain_px=60.0, shade=(1.6, 0.7))
    return SceneObject("ego vehicle", (Piece(hood, paint),), EGO)


def street_camera(width: int, height: int, rng: np.random.Generator) -> Camera:
    """The camera of a random ``width``×``height`` street scene (about 50° wide, level)."""
    focal = 1.1 * width * rng.uniform(0.95, 1.05)
    cx = width * rng.uniform(0.46, 0.54)
    return Camera(focal, cx, horizon=height * rng.uniform(0.40, 0.47))


def drawing_order(objects: list[SceneObject]) -> list[SceneObject]:
    """``objects`` sorted back to front: by layer, then far to near inside a layer."""
    return sorted(objects, key=lambda o: (o.layer, -o.depth))


def build_scene(
    width: int, height: int, rng: np.random.Generator, cam: Camera | None = None
) -> list[SceneObject]:
    """A random street scene for a ``width``×``height`` image, back to front; ``cam`` defaults
    to :func:`street_camera` drawn from ``rng``."""
    cam = cam if cam is not None else street_camera(width, height, rng)
    z_far = rng.uniform(90.0, 140.0)
    sky = Surface((104, 152, 208), noise=2.0, grain=16.0, grain_px=width / 6, shade=(0.8, 1.25))
    horizon_band = rect(0, 0, width, cam.horizon + 2)
    objects = [SceneObject("sky", (Piece(horizon_band, sky),), SKY)]
    objects += far_buildings(cam, z_far, rng)
    builders = [_curb_side if rng.random() < 0.7 else _hedge_side for _ in range(2)]
    if builders == [_hedge_side, _hedge_side]:
        builders[1] = _curb_side
    left, west = builders[0](cam, -1, z_far, rng)
    right, east = builders[1](cam, 1, z_far, rng)
    objects += [*west, *east, _road(cam, -left, right, z_far)]
    for _ in range(int(rng.integers(1, 4))):
        lane = rng.choice([rng.uniform(-0.4, 0.4), rng.uniform(-3.6, -2.8)])
        objects.append(car(cam, float(lane), rng.uniform(9.0, 45.0), rng, STREET))
    for _ in range(int(rng.integers(0, 3))):  # pedestrians crossing the street
        objects.append(person(cam, rng.uniform(-3.0, 3.0), rng.uniform(9.0, 30.0), rng, STREET))
    objects.append(_ego_vehicle(width, height))
    return drawing_order(objects)
