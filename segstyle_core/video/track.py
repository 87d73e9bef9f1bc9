"""One object's mask through a run of frames: ``flow`` (offline, :class:`FlowTracker`) carries
it along dense optical flow and refines it with an image segmenter; ``sam2`` is SAM 2's video
predictor. :class:`TrackerConfig` names the masks without loading a model and builds the tracker.
"""

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
from segstyle_core.devices import resolve_device
from segstyle_core.metrics import iou
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import Prompt, Sam2Variant, Segmenter
from segstyle_core.video.flow import motion, optical_flow, warp_mask

#: How :class:`FlowTracker` carries a mask (see :func:`carry_mask`).
MotionModel = Literal["similarity", "dense"]
#: Most flow vectors the similarity fit samples from a mask.
_FIT_POINTS = 2000
#: The settings of the ``flow`` backend.
_FLOW_OPTIONS = (
    "refine",
    "motion_model",
    "margin_px",
    "points",
    "core_depth",
    "min_agreement",
    "flow_preset",
)

#: A run's start: a box prompt on its first frame, or the first frame's known ``H×W bool`` mask.
Start = Prompt | np.ndarray


class MaskTracker(Protocol):
    """A video mask backend; ``name``/``variant``/``weights_sha256`` go into records."""

    name: str
    variant: str
    weights_sha256: str | None

    def track(self, frames: Sequence[np.ndarray], start: Start) -> list[np.ndarray]:
        """One ``H×W bool`` mask per frame (``H×W×3 uint8 RGB``) from ``start`` on ``frames[0]``
        (a prompt, or its known mask, returned as the first mask)."""
        ...


def _flow_variant(
    model: str, preset: str, refine: bool, segmenter: Segmenter | BackendIdentity
) -> str:
    """The flow tracker's variant: motion model, flow preset and refining segmenter."""
    return f"{model}-{preset}-{segmenter.name if refine else 'none'}"


def _box_of(mask: np.ndarray, margin: int) -> tuple[float, float, float, float]:
    """XYXY box (exclusive end) of an ``H×W bool`` mask, grown by ``margin`` px, in the frame."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    height, width = mask.shape
    return (
        float(max(x - margin, 0)),
        float(max(y - margin, 0)),
        float(min(x + w + margin, width)),
        float(min(y + h + margin, height)),
    )


def _interior_points(mask: np.ndarray, count: int, depth: float) -> tuple[tuple[float, float], ...]:
    """Up to ``count`` evenly spread ``(x, y)`` points of ``mask`` at least ``depth`` of its
    thickness from its edge (where a carried mask is surely right)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    core = distance >= depth * distance.max()
    ys, xs = np.nonzero(core)
    if xs.size == 0:
        return ()
    picks = np.linspace(0, xs.size - 1, min(count, xs.size)).round().astype(int)
    return tuple((float(xs[i]), float(ys[i])) for i in picks)


def carry_mask(
    mask: np.ndarray,
    previous: np.ndarray,
    current: np.ndarray,
    model: MotionModel = "similarity",
    preset: str = "medium",
) -> np.ndarray:
    """``mask`` (``H×W bool``) of frame ``previous`` moved into ``current`` (``H×W×3 uint8``).

    ``similarity``: rotation, scale and shift fitted with RANSAC (1 px) to the flow at up to
    2000 mask pixels (the mask keeps its shape); ``dense`` if the fit fails. ``dense``: each
    pixel pulled along the backward flow, pixels hidden in ``previous`` dropped.
    """
    if model == "similarity" and mask.any():
        ys, xs = np.nonzero(mask)
        picks = np.linspace(0, xs.size - 1, min(_FIT_POINTS, xs.size)).round().astype(int)
        ys, xs = ys[picks], xs[picks]
        source = np.stack([xs, ys], axis=1).astype(np.float32)
        target = source + optical_flow(previous, current, preset)[ys, xs]
        matrix, _ = cv2.estimateAffinePartial2D(
            source, target, method=cv2.RANSAC, ransacReprojThreshold=1.0
        )
        if matrix is not None:
            height, width = mask.shape
            moved = cv2.warpAffine(mask.astype(np.float32), matrix, (width, height))
            return moved >= 0.5
    step = motion(previous, current, preset=preset)
    return warp_mask(mask, step.backward) & step.valid


def _grabcut() -> SegmenterConfig:
    return SegmenterConfig(backend="grabcut")


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
    flow_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    """Flow: DIS optical flow preset, speed against accuracy."""
    segmenter: SegmenterConfig = Field(default_factory=_grabcut)
    """Flow: the image segmenter of the first frame and of the refinement (its own device and
    weights folder)."""

    def _sam2_checkpoint(self) -> weights.CheckpointFile:
        official = f"sam2.1_{self.sam2_variant}"
        return weights.resolve_checkpoint(
            self.checkpoint, "tracker.checkpoint", official, self.weights_dir
        )

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256, without loading a model (``flow``: the
        segmenter's weights).

        Raises:
            WeightsError: a checkpoint is missing or fails its checksum.
        """
        if self.backend == "sam2":
            return BackendIdentity("sam2", self.sam2_variant, self._sam2_checkpoint().sha256)
        segmenter = self.segmenter.identity()
        variant = _flow_variant(self.motion_model, self.flow_preset, self.refine, segmenter)
        return BackendIdentity("flow", variant, segmenter.weights_sha256)

    def settings(self) -> dict[str, Any]:
        """The settings that change the masks (cache key beside :meth:`identity`)."""
        if self.backend == "sam2":
            return {"sam2_variant": self.sam2_variant}
        segmenter = self.segmenter.model_dump(
            mode="json", exclude={"device", "weights_dir", "checkpoint"}
        )
        flow = self.model_dump(mode="json", include=set(_FLOW_OPTIONS))
        return {**flow, "segmenter": segmenter}

    def build(self) -> MaskTracker:
        """The tracker; SAM 2 (and the flow tracker's segmenter) loaded once per process."""
        if self.backend == "sam2":
            from segstyle_core.segment.sam2 import Sam2VideoTracker

            def factory() -> MaskTracker:
                device = str(resolve_device(self.device))
                return Sam2VideoTracker(self.sam2_variant, self._sam2_checkpoint(), device)

            return self.load_once(factory)
        return FlowTracker(self.segmenter.build(), self)


@dataclass(eq=False)
class FlowTracker:
    """The ``flow`` backend, with the flow settings of ``options``.

    Each mask is carried into the next frame (:func:`carry_mask`) and re-segmented there by
    ``segmenter``, prompted with its box (grown by ``margin_px``) and ``points`` core points.
    The refined mask wins only if it agrees with the carried one (IoU >= ``min_agreement``) and
    the segmenter did not fall back (score 0), so one bad segmentation cannot jump objects.
    """

    segmenter: Segmenter
    options: TrackerConfig = field(default_factory=TrackerConfig)
    name: str = field(default="flow", init=False)

    def __post_init__(self) -> None:
        options = self.options
        self.variant = _flow_variant(
            options.motion_model, options.flow_preset, options.refine, self.segmenter
        )
        self.weights_sha256: str | None = self.segmenter.weights_sha256

    def first_mask(self, frame: np.ndarray, start: Start) -> np.ndarray:
        """The ``H×W bool`` mask of the run's first frame: ``start`` itself, or segmented."""
        if isinstance(start, np.ndarray):
            return start
        return self.segmenter.segment(frame, [start])[0].mask

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

    def track(self, frames: Sequence[np.ndarray], start: Start) -> list[np.ndarray]:
        """One ``H×W bool`` mask per frame (see :class:`MaskTracker`)."""
        masks = [self.first_mask(frames[0], start)]
        for previous, current in itertools.pairwise(frames):
            masks.append(self.follow(previous, masks[-1], current))
        return masks
