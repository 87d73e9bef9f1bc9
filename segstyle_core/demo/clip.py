"""A generated clip: a parked camera's street in which one more car, in front of every other,
drives sideways. Frames ``clip_000000_<frame:06d>`` in the Cityscapes layout (``train`` split,
city ``clip``) with per-frame GT and fresh sensor noise, and a ``video.json`` with the frame rate,
so the image folder reads as a video."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

from segstyle_core.cityscapes import IMAGE_SUFFIX, INSTANCE_OFFSET
from segstyle_core.demo import scene
from segstyle_core.demo.dataset import render_scene, write_frame
from segstyle_core.errors import ConfigError
from segstyle_core.fileio import write_json_atomic
from segstyle_core.video.io import DEFAULT_FPS, SIDECAR

CAR_DEPTH = 8.0  # metres to the moving car's rear: nearer than every other car
CAR_START_X = -2.4  # metres: the moving car's centre on frame 0 (minus: left of the axis)
SPEED_PX = 4.0  # pixels the moving car's rear moves right per frame
NOISE = 2.0  # standard deviation of the per-frame sensor noise, in grey levels
_CAR_ID = name2label["car"].id


@dataclass(frozen=True)
class Clip:
    """A generated clip: its frame folder (a video) and frame PNGs in order, and per frame the
    moving car's GT box (XYXY, exclusive end) and instanceIds id (``26000 + n``)."""

    frames_dir: Path
    image_paths: tuple[Path, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    instance_ids: tuple[int, ...]
    fps: float


def _shifted(image: np.ndarray, shift: float, interpolation: int) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = np.array([[1.0, 0.0, shift], [0.0, 1.0, 0.0]])
    return cv2.warpAffine(image, matrix, (width, height), flags=interpolation)


def _moving_car(
    cam: scene.Camera, index: int, size: tuple[int, int], seed: int
) -> tuple[scene.SceneObject, np.ndarray, np.ndarray]:
    """The moving car on frame ``index``: its scene object, and its paint (``H×W×3 uint8``) and
    silhouette (``H×W bool``) drawn by a camera panned along, shifted back: the texture moves."""
    shift = index * SPEED_PX
    x = CAR_START_X + shift * CAR_DEPTH / cam.focal
    moving = scene.car(cam, x, CAR_DEPTH, np.random.default_rng([seed, 1]), scene.STREET)
    panned = dataclasses.replace(cam, cx=cam.cx - shift)
    held = scene.car(panned, x, CAR_DEPTH, np.random.default_rng([seed, 1]), scene.STREET)
    alone = render_scene([held], *size, np.random.default_rng([seed, 2]))
    paint = _shifted(alone.image, shift, cv2.INTER_LINEAR)
    silhouette = _shifted((alone.label_ids == _CAR_ID).astype(np.uint8), shift, cv2.INTER_NEAREST)
    return moving, paint, silhouette.astype(bool)


def generate_clip(
    out: str | os.PathLike[str], frames: int = 24, size: tuple[int, int] = (256, 128), seed: int = 0
) -> Clip:
    """Write the clip under ``out``: ``frames`` of ``size`` (width, height) at ``DEFAULT_FPS``;
    ``seed`` fixes street, car and noise (ConfigError: fewer than 2 frames, a side under 64 px)."""
    width, height = size
    if frames < 2 or min(width, height) < 64:
        raise ConfigError(
            f"frames={frames}, size={size}: use at least 2 frames and sides of 64 px or more"
        )
    image_dir, gt_dir = (Path(out) / kind / "train" / "clip" for kind in ("leftImg8bit", "gtFine"))
    scene_rng = np.random.default_rng([seed, 0])
    cam = scene.street_camera(width, height, scene_rng)
    street = scene.build_scene(width, height, scene_rng, cam)
    paths: list[Path] = []
    instance_ids: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    for index in range(frames):
        moving, paint, silhouette = _moving_car(cam, index, size, seed)
        # The same texture noise on every frame: the street stands still.
        objects = scene.drawing_order([*street, moving])
        frame = render_scene(objects, width, height, np.random.default_rng([seed, 2]))
        ids = frame.instance_ids[silhouette]  # the car id covering most of the moving car
        instance_ids.append(int(np.bincount(ids[ids // INSTANCE_OFFSET == _CAR_ID]).argmax()))
        visible = frame.instance_ids == instance_ids[-1]
        image = np.where(visible[..., None], paint, frame.image).astype(np.float64)
        image += np.random.default_rng([seed, 3, index]).normal(0.0, NOISE, image.shape)
        image_id = f"clip_000000_{index:06d}"
        pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        write_frame(dataclasses.replace(frame, image=pixels), image_dir, gt_dir, image_id)
        paths.append(image_dir / f"{image_id}{IMAGE_SUFFIX}")
        x, y, w, h = cv2.boundingRect(visible.astype(np.uint8))
        boxes.append((x, y, x + w, y + h))
    write_json_atomic(image_dir / SIDECAR, {"fps": DEFAULT_FPS})
    return Clip(image_dir, tuple(paths), tuple(boxes), tuple(instance_ids), DEFAULT_FPS)
