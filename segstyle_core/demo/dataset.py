"""The demo dataset: drawn street scenes in the Cityscapes layout. Each object's silhouette is
one polygon; cityscapesscripts draws the gtFine PNGs from them, and the image is painted where
the same drawing leaves each object visible."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

from segstyle_core.cityscapes import GT_SUFFIXES, IMAGE_SUFFIX
from segstyle_core.demo.scene import GROUND, SceneObject, Surface, build_scene
from segstyle_core.errors import ConfigError
from segstyle_core.fileio import atomic_write
from segstyle_core.images import write_png

_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: 1/16 pixel
_CITY_NAME = re.compile(r"[a-z][a-z0-9]*")
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class RenderedFrame:
    """One frame: ``image``, ``color`` (``H×W×3 uint8 RGB``), ``label_ids`` (``H×W uint8``),
    ``instance_ids`` (``H×W uint16``: id, or ``id*1000+n``) and the gtFine ``polygons`` document."""

    image: np.ndarray
    label_ids: np.ndarray
    instance_ids: np.ndarray
    color: np.ndarray
    polygons: dict[str, Any]


def _fill(polygons: Sequence[np.ndarray], width: int, height: int) -> tuple[Box, np.ndarray] | None:
    """The pixel box ``(x0, y0, x1, y1)`` (exclusive end) of image polygons (``K×2``) inside the
    image and their union in it (``h×w bool``, at 1/16-pixel precision); None if outside."""
    points = np.concatenate(polygons)
    x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int), 0).tolist()
    x1 = min(int(np.ceil(points[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(points[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    for polygon in polygons:  # one call each: a single fillPoly call XORs overlapping polygons
        fixed = np.round((polygon - (x0, y0)) * (1 << _SUBPIXEL_BITS)).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return (x0, y0, x1, y1), mask.astype(bool)


def _outline(obj: SceneObject, width: int, height: int) -> list[list[int]] | None:
    """The object's in-frame silhouette as one integer polygon (None if degenerate): the largest
    outer contour of its pieces' union, simplified to 0.7 px, hugging the image border."""
    if (filled := _fill([p.polygon for p in obj.pieces], width, height)) is None:
        return None
    (x0, y0, _, _), mask = filled
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    simple = cv2.approxPolyDP(contour, 0.7, closed=True)
    polygon = simple if len(simple) >= 3 else contour
    return (polygon[:, 0, :] + (x0, y0)).tolist() if len(polygon) >= 3 else None


def _rasterize(polygons: Sequence[list[list[int]]], width: int, height: int) -> np.ndarray:
    """``H×W int32`` 1-based index of the polygon owning each pixel (0: none), drawn as
    ``json2labelImg`` draws."""
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for k, polygon in enumerate(polygons, start=1):
        draw.polygon([tuple(p) for p in polygon], fill=k)
    return np.asarray(canvas, dtype=np.int32)


class _Noise:
    """Full-frame ``H×W float32`` noise drawn once per frame: ``white`` per-pixel, and
    ``smooth(px)`` with features of about ``px`` pixels (the nearest octave, bicubic)."""

    OCTAVES = (4, 8, 16, 32, 64, 128, 256)

    def __init__(self, height: int, width: int, rng: np.random.Generator) -> None:
        self.white = rng.standard_normal((height, width), dtype=np.float32)
        self._smooth: dict[int, np.ndarray] = {}
        for px in self.OCTAVES:
            coarse = rng.standard_normal((height // px + 2, width // px + 2), dtype=np.float32)
            self._smooth[px] = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

    def smooth(self, px: float) -> np.ndarray:
        """The smooth field whose octave is nearest to ``px`` (on a log scale)."""
        return self._smooth[min(self.OCTAVES, key=lambda o: abs(np.log(o / max(px, 1.0))))]


def _texture(
    surface: Surface, box: Box, extent: tuple[float, float, float, float], noise: _Noise
) -> np.ndarray:
    """``h×w×3 float32`` paint of ``surface`` over ``box``; gradients span ``extent``, the
    piece's unclipped ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, :]
    ty = np.clip((ys - extent[1]) / max(extent[3] - extent[1], 1.0), 0.0, 1.0)
    tx = np.clip((xs - extent[0]) / max(extent[2] - extent[0], 1.0), 0.0, 1.0)
    light = surface.shade[0] + (surface.shade[1] - surface.shade[0]) * ty
    light = light * (1.0 - surface.round * (2.0 * tx - 1.0) ** 2)
    offset = surface.noise * noise.white[y0:y1, x0:x1]
    if surface.grain:
        offset = offset + surface.grain * noise.smooth(surface.grain_px)[y0:y1, x0:x1]
    if surface.stripe_px:
        coordinate = ys if surface.stripe_axis == 0 else xs
        offset = offset + surface.stripes * np.cos(2.0 * np.pi * coordinate / surface.stripe_px)
    color = np.asarray(surface.color, dtype=np.float32)
    return color * light[..., None] + offset[..., None]


def _paint(objects: Sequence[SceneObject], index: np.ndarray, noise: _Noise) -> np.ndarray:
    """Paint each object's pieces where that object is visible in ``index``: ``H×W×3 float32``."""
    height, width = index.shape
    canvas = np.repeat(60.0 + 6.0 * noise.white[..., None], 3, axis=2)
    for k, obj in enumerate(objects, start=1):
        for piece in obj.pieces:
            if (filled := _fill([piece.polygon], width, height)) is None:
                continue
            box, inside = filled
            x0, y0, x1, y1 = box
            here = (index[y0:y1, x0:x1] == k) & inside
            if here.any():
                extent = (*piece.polygon.min(axis=0), *piece.polygon.max(axis=0))
                canvas[y0:y1, x0:x1][here] = _texture(piece.surface, box, extent, noise)[here]
    return canvas


def _cast_shadows(canvas: np.ndarray, objects: Sequence[SceneObject], index: np.ndarray) -> None:
    """Darken the street surface (ground-layer objects) under objects that cast a shadow."""
    ground = np.array([False] + [obj.layer == GROUND for obj in objects])  # index 0: no object
    height, width = index.shape
    covered = np.zeros(index.shape, dtype=bool)
    shadows = (_fill([obj.shadow], width, height) for obj in objects if obj.shadow is not None)
    for (x0, y0, x1, y1), inside in filter(None, shadows):  # None: outside the image
        covered[y0:y1, x0:x1] |= inside
    shade = cv2.GaussianBlur(covered.astype(np.float32), (0, 0), sigmaX=max(1.0, width / 400))
    canvas *= (1.0 - 0.45 * shade * ground[index])[..., None]


def render_scene(
    scene: Sequence[SceneObject], width: int, height: int, rng: np.random.Generator
) -> RenderedFrame:
    """Rasterise a scene into an image and its Cityscapes annotations, leaving out objects
    with a degenerate silhouette or under ``max(3, width*height // 40000)`` visible pixels."""
    kept = [(obj, poly) for obj in scene if (poly := _outline(obj, width, height)) is not None]
    index = _rasterize([poly for _, poly in kept], width, height)
    visible = np.bincount(index.ravel(), minlength=len(kept) + 1)[1:]
    min_pixels = max(3, width * height // 40_000)
    if (visible < min_pixels).any():
        kept = [item for item, count in zip(kept, visible, strict=True) if count >= min_pixels]
        index = _rasterize([poly for _, poly in kept], width, height)
    objects = [obj for obj, _ in kept]
    canvas = _paint(objects, index, _Noise(height, width, rng))
    _cast_shadows(canvas, objects, index)
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=0.6)
    canvas += rng.normal(0.0, 1.5, canvas.shape).astype(np.float32)
    outlines = [{"label": obj.label, "polygon": poly} for obj, poly in kept]
    polygons = {"imgHeight": height, "imgWidth": width, "objects": outlines}
    annotation = Annotation()  # the GT maps drawn as json2labelImg and json2instanceImg draw them
    annotation.fromJsonText(json.dumps(polygons))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    label_ids = np.asarray(createLabelImage(annotation, "ids"))
    instance_ids = np.asarray(createInstanceImage(annotation, "ids"), dtype=np.uint16)
    color = np.asarray(createLabelImage(annotation, "color"))[..., :3]
    return RenderedFrame(image, label_ids, instance_ids, color, polygons)


def write_frame(frame: RenderedFrame, image_dir: Path, gt_dir: Path | None, image_id: str) -> None:
    """Write the frame's image and, unless ``gt_dir`` is None, its four gtFine files."""
    write_png(image_dir / f"{image_id}{IMAGE_SUFFIX}", frame.image)
    if gt_dir is None:
        return
    maps = {"labelIds": frame.label_ids, "instanceIds": frame.instance_ids, "color": frame.color}
    for kind, array in maps.items():
        write_png(gt_dir / f"{image_id}{GT_SUFFIXES[kind]}", array)
    with atomic_write(gt_dir / f"{image_id}{GT_SUFFIXES['polygons']}", "w") as handle:
        json.dump(frame.polygons, handle)


def generate_demo_dataset(
    out: str | os.PathLike[str],
    size: tuple[int, int] = (1024, 512),
    frames_per_city: int = 6,
    cities: Sequence[str] = ("zurich", "aachen"),
    seed: int = 0,
) -> Path:
    """Write a Cityscapes ``train`` split of drawn street scenes of ``size`` (width, height) under
    ``out``; return it. Per city: ``frames_per_city`` frames ``{city}_{nnnnnn}_000019`` with all
    four gtFine files, plus ONE more image without any (for "keep only fine-annotated frames" to
    skip). Each frame is seeded from ``(seed, crc32(city), frame number)``. ConfigError: a side
    under 32 px, no frames, a city name not of lower-case letters and digits, a negative seed."""
    width, height = size
    if width < 32 or height < 32:
        raise ConfigError(f"size={size}: width and height must be at least 32 pixels")
    if frames_per_city < 1:
        raise ConfigError(f"frames_per_city={frames_per_city}: must be at least 1")
    if not cities or any(not _CITY_NAME.fullmatch(city) for city in cities):
        raise ConfigError(
            f"cities={list(cities)}: give one or more lower-case names of letters and digits "
            "(no '_', which separates the parts of a Cityscapes file name)"
        )
    if seed < 0:
        raise ConfigError(f"seed={seed}: must be 0 or greater")
    root = Path(out)
    for city in cities:
        image_dir, gt_dir = (root / kind / "train" / city for kind in ("leftImg8bit", "gtFine"))
        for number in range(frames_per_city + 1):
            rng = np.random.default_rng([seed, zlib.crc32(city.encode()), number])
            frame = render_scene(build_scene(width, height, rng), width, height, rng)
            annotated = gt_dir if number < frames_per_city else None
            write_frame(frame, image_dir, annotated, f"{city}_{number:06d}_000019")
    return root


def ensure_demo_dataset(
    root: str,
    *,
    size: tuple[int, int] | None = None,
    frames_per_city: int | None = None,
) -> str:
    """``root``, first writing the demo dataset there (options left None: the defaults) unless it
    holds ``leftImg8bit/``, via a temporary sibling renamed into place (no half dataset; concurrent
    runs end with one). ConfigError: ``root`` is a file or holds something else (left alone)."""
    path = Path(root)
    if (path / "leftImg8bit").is_dir():
        return root
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"{root} exists but holds no leftImg8bit/ folder; it is not a Cityscapes-layout "
            "dataset and is left alone (point the run at another folder, or empty this one)"
        )
    options: dict[str, Any] = {"size": size, "frames_per_city": frames_per_city}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # the umask's permissions, unlike tempfile.mkdtemp's 0700
    try:
        generate_demo_dataset(staging, **{k: v for k, v in options.items() if v is not None})
        try:
            os.rename(staging, path)  # replaces a missing or empty folder, atomically
        except OSError:
            if not (path / "leftImg8bit").is_dir():  # not another run's finished dataset
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
