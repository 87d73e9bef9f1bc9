"""One object's mask through a run of frames: ``flow`` (:class:`FlowTracker`, offline: dense
optical flow, OpenCV's DIS on grey levels) or SAM 2's video predictor; :class:`TrackerConfig`
names the masks without loading a model.

Flows are ``H×W×2 float32`` ``(dx, dy)`` pixels: ``flow(a, b)[p]`` takes pixel ``p`` of ``a``
to ``p + flow[p]`` in ``b`` (so :func:`warp` along flow(current, previous) pulls in previous)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import cv2
import numpy as np
from pydantic import Field

from segstyle_core import weights
from segstyle_core.backends import BackendConfig, BackendIdentity
from segstyle_core.errors import InputError
from segstyle_core.images import check_rgb
from segstyle_core.metrics import iou
from segstyle_core.segment import SegmenterConfig, sam_checkpoint
from segstyle_core.segment.base import Prompt, Sam2Variant, Segmenter

#: DIS optical flow presets, speed against accuracy (OpenCV's ``DISOPTICAL_FLOW_PRESET_*``).
FlowPreset = Literal["ultrafast", "fast", "medium"]


def optical_flow(source: np.ndarray, target: np.ndarray, preset: FlowPreset) -> np.ndarray:
    """Dense flow from ``source`` to ``target`` (both ``H×W×3 uint8 RGB``): ``H×W×2 float32``
    (InputError: the frames are not RGB or differ in size)."""
    check_rgb(source, "flow source frame")
    check_rgb(target, "flow target frame")
    if source.shape != target.shape:
        raise InputError(
            f"frames of {source.shape[1]}x{source.shape[0]} and {target.shape[1]}x"
            f"{target.shape[0]} px: every frame of a video must have the same size"
        )
    dis = cv2.DISOpticalFlow.create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (source, target)]
    return dis.calc(grey[0], grey[1], np.zeros((*grey[0].shape, 2), np.float32))


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` float32 maps ``p + flow[p]``."""
    ys, xs = np.indices(flow.shape[:2], dtype=np.float32)
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``out[p] = image[p + flow[p]]`` (bilinear, edges repeated) for ``H×W[×C]`` arrays of any
    numeric dtype; same shape and dtype back (uint8 rounded)."""
    map_x, map_y = _sample_grid(flow)
    source = image.astype(np.float32)
    out = cv2.remap(source, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if image.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype)


@dataclass(frozen=True)
class Motion:
    """How frame ``t-1`` moved to ``t``: the ``backward`` flow (``t`` to ``t-1``, for
    :func:`warp`) and ``valid`` (``H×W bool``: pixels of ``t`` visible in ``t-1``)."""

    backward: np.ndarray
    valid: np.ndarray


def motion(previous: np.ndarray, current: np.ndarray, preset: FlowPreset = "medium") -> Motion:
    """The :class:`Motion` from ``previous`` to ``current`` (both ``H×W×3 uint8 RGB``).

    Forward-backward check (Sundaram et al. 2010): ``p`` is valid when ``p + b(p)`` is inside
    the frame and ``|b(p) + f(p + b(p))| <= 1 px + 0.05 * (|b(p)| + |f(p + b(p))|)``."""
    backward = optical_flow(current, previous, preset)
    forward_there = warp(optical_flow(previous, current, preset), backward)
    error = np.linalg.norm(backward + forward_there, axis=2)
    speed = np.linalg.norm(backward, axis=2) + np.linalg.norm(forward_there, axis=2)
    map_x, map_y = _sample_grid(backward)
    height, width = backward.shape[:2]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return Motion(backward, inside & (error <= 1.0 + 0.05 * speed))


#: How :class:`FlowTracker` carries a mask (see :func:`carry_mask`).
MotionModel = Literal["similarity", "dense"]
#: Most flow vectors the similarity fit samples from a mask.
_FIT_POINTS = 2000
#: Fields that do not change the masks: where a backend runs and where its weights lie.
_WHERE = {"device", "weights_dir", "checkpoint"}


class MaskTracker(Protocol):
    """A video mask backend; ``name``/``variant``/``weights_sha256`` go into records."""

    name: str
    variant: str
    weights_sha256: str | None

    def track(self, frames: Sequence[np.ndarray], start: Prompt | np.ndarray) -> list[np.ndarray]:
        """One ``H×W bool`` mask per frame (``H×W×3 uint8 RGB``) from ``start`` on ``frames[0]``
        (a prompt, or its known mask, returned as the first mask)."""
        ...


def _flow_variant(options: TrackerConfig, segmenter: str) -> str:
    """The flow tracker's variant: motion model, flow preset and refining segmenter."""
    return f"{options.motion_model}-{options.flow_preset}-{segmenter if options.refine else 'none'}"


def _box_of(mask: np.ndarray, margin: int) -> tuple[float, float, float, float]:
    """XYXY box (exclusive end) of an ``H×W bool`` mask, grown by ``margin`` px, in the frame."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    grown = [x - margin, y - margin, x + w + margin, y + h + margin]
    x0, y0, x1, y1 = np.clip(grown, 0, [*mask.shape[::-1]] * 2).astype(float).tolist()
    return x0, y0, x1, y1


def _spread(size: int, count: int) -> np.ndarray:
    """Up to ``count`` evenly spread indices into ``size`` items."""
    return np.linspace(0, size - 1, min(count, size)).round().astype(int)


def _interior_points(mask: np.ndarray, count: int, depth: float) -> tuple[tuple[float, float], ...]:
    """Up to ``count`` evenly spread ``(x, y)`` points of ``mask`` at least ``depth`` of its
    thickness from its edge (where a carried mask is surely right)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.nonzero(distance >= depth * distance.max())
    return tuple((float(xs[i]), float(ys[i])) for i in _spread(xs.size, count))


def carry_mask(
    mask: np.ndarray,
    previous: np.ndarray,
    current: np.ndarray,
    model: MotionModel = "similarity",
    preset: FlowPreset = "medium",
) -> np.ndarray:
    """``mask`` (``H×W bool``) of frame ``previous`` moved into ``current`` (``H×W×3 uint8``).

    ``similarity``: rotation, scale and shift fitted with RANSAC (1 px) to the flow at up to
    2000 mask pixels (the mask keeps its shape); ``dense`` if the fit fails. ``dense``: each
    pixel pulled along the backward flow, pixels hidden in ``previous`` dropped."""
    if model == "similarity" and mask.any():
        ys, xs = np.nonzero(mask)
        picks = _spread(xs.size, _FIT_POINTS)
        ys, xs = ys[picks], xs[picks]
        source = np.stack([xs, ys], axis=1).astype(np.float32)
        target = source + optical_flow(previous, current, preset)[ys, xs]
        matrix, _ = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=1.0
        )
        if matrix is not None:
            return cv2.warpAffine(mask.astype(np.float32), matrix, mask.shape[::-1]) >= 0.5
    step = motion(previous, current, preset)
    return (warp(mask.astype(np.float32), step.backward) >= 0.5) & step.valid


class TrackerConfig(BackendConfig):
    """How one object's mask follows it through a video: optical flow refined by an image
    segmenter (offline), or SAM 2's video predictor (needs its checkpoint)."""

    backend: Literal["flow", "sam2"] = "flow"
    """flow: optical-flow propagation refined by the segmenter below; sam2: SAM 2's video
    predictor (needs the sam2 package and a checkpoint)."""
    sam2_variant: Sam2Variant = "hiera_tiny"
    """SAM 2: the SAM 2.1 Hiera image encoder."""
    checkpoint: str | None = None
    """SAM 2: a checkpoint file of your own; none: the variant's official file in the weights
    folder."""
    refine: bool = True
    """Flow: re-segment the carried mask on every frame (off: the mask is only carried)."""
    motion_model: MotionModel = "similarity"
    """Flow: carry the mask as a whole (rotation, scale, shift; rigid objects) or pixel by
    pixel (objects that change shape)."""
    margin_px: int = Field(default=4, ge=0)
    """Flow: growth, in pixels, of the carried mask's box before it prompts the segmenter."""
    points: int = Field(default=30, ge=0)
    """Flow: foreground points from the carried mask's core that prompt the segmenter (0: the
    box only)."""
    core_depth: float = Field(default=0.5, ge=0.0, le=1.0)
    """Flow: how deep inside the carried mask those points lie, as a fraction of its greatest
    inner distance to the edge."""
    min_agreement: float = Field(default=0.75, ge=0.0, le=1.0)
    """Flow: smallest IoU between refined and carried mask for the refined one to be kept."""
    flow_preset: FlowPreset = "medium"
    """Flow: DIS optical flow preset, speed against accuracy."""
    segmenter: SegmenterConfig = Field(default_factory=lambda: SegmenterConfig(backend="grabcut"))
    """Flow: the image segmenter of the first frame and of the refinement (its own device and
    weights folder)."""

    def _sam2_checkpoint(self) -> weights.CheckpointFile:
        field = "tracker.checkpoint"
        return sam_checkpoint("sam2", self.sam2_variant, self.checkpoint, field, self.weights_dir)

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256 (``flow``: the segmenter's), without loading a
        model (WeightsError: a checkpoint is missing or fails its checksum)."""
        if self.backend == "sam2":
            return BackendIdentity("sam2", self.sam2_variant, self._sam2_checkpoint().sha256)
        segmenter = self.segmenter.identity()
        variant = _flow_variant(self, segmenter.name)
        return BackendIdentity("flow", variant, segmenter.weights_sha256)

    def settings(self) -> dict[str, Any]:
        """The settings that change the masks (cache key beside :meth:`identity`)."""
        if self.backend == "sam2":
            return {"sam2_variant": self.sam2_variant}
        flow = self.model_dump(mode="json", exclude={"backend", "sam2_variant", *_WHERE})
        return {**flow, "segmenter": self.segmenter.model_dump(mode="json", exclude=_WHERE)}

    def build(self) -> MaskTracker:
        """The tracker; SAM 2 (and the flow tracker's segmenter) loaded once per process."""
        if self.backend == "sam2":
            from segstyle_core.segment import load_video_tracker

            return self.load_once(
                lambda: load_video_tracker(self.sam2_variant, self._sam2_checkpoint(), self.device)
            )
        return FlowTracker(self.segmenter.build(), self)


@dataclass(eq=False)
class FlowTracker:
    """The ``flow`` backend: each mask is carried into the next frame (:func:`carry_mask`) and
    re-segmented there; the refined mask wins only if it agrees with the carried one and the
    segmenter did not fall back (score 0), so one bad segmentation cannot jump objects."""

    segmenter: Segmenter
    options: TrackerConfig = field(default_factory=TrackerConfig)
    name: str = field(default="flow", init=False)

    def __post_init__(self) -> None:
        self.variant = _flow_variant(self.options, self.segmenter.name)
        self.weights_sha256: str | None = self.segmenter.weights_sha256

    def follow(self, previous: np.ndarray, mask: np.ndarray, current: np.ndarray) -> np.ndarray:
        """``mask`` of frame ``previous`` carried into frame ``current`` and refined there."""
        options = self.options
        carried = carry_mask(mask, previous, current, options.motion_model, options.flow_preset)
        if not options.refine or not carried.any():
            return carried
        points = _interior_points(carried, options.points, options.core_depth)
        box = _box_of(carried, options.margin_px)
        prompt = Prompt(box=box, points=points, point_labels=(1,) * len(points))
        refined = self.segmenter.segment(current, [prompt])[0]
        if refined.score > 0 and iou(refined.mask, carried) >= options.min_agreement:
            return refined.mask
        return carried

    def track(self, frames: Sequence[np.ndarray], start: Prompt | np.ndarray) -> list[np.ndarray]:
        if isinstance(start, np.ndarray):
            masks = [start]
        else:
            masks = [self.segmenter.segment(frames[0], [start])[0].mask]
        for previous, current in itertools.pairwise(frames):
            masks.append(self.follow(previous, masks[-1], current))
        return masks
