"""Offline segmentation without weights: OpenCV GrabCut for prompts, scikit-image Felzenszwalb
regions for automatic masks.

A box prompt runs GrabCut on the box (and points) grown by :data:`MARGIN_PX`: the box probable
foreground, the margin background, an ellipse of ``center_prior`` times the box definite
foreground (or the hull of three or more foreground points, where it covers :data:`POINTS_SPAN`
of it), point disks of :data:`POINT_RADIUS_PX` definite foreground (label 1) or background
(label 0); a background point also vetoes its Felzenszwalb region. GrabCut runs one iteration at
a time and keeps the last mask that leaves ``min_box_fill`` of the box foreground. A points-only
prompt is a box prompt around its anchor: the regions holding its foreground points, less those
holding a background point, within :data:`POINT_CONTEXT` of the image's shorter side, grown by
:data:`POINT_BOX_GROW`. The mask keeps the components touching a definite-foreground seed (else
the largest), holes filled except those holding a background point; it scores 1.0. A box under
:data:`MIN_BOX_SIDE_PX` a side, a GrabCut failure or no foreground fall back to the box (or the
foreground points' disks) plus foreground disks, less background disks: score 0.0, ``notes``
``("fallback:box"|"fallback:points", reason)``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from cv2.typing import MatLike
from numpy.typing import ArrayLike
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from segstyle_core.devices import compute_threads
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_rgb
from segstyle_core.prompts.validation import validate_prompt
from segstyle_core.segment.base import MaskPrediction, Prompt, grabcut_variant

#: Pixels and fractions of the steps in the module docstring.
MIN_BOX_SIDE_PX = 12
MARGIN_PX = 16
POINT_RADIUS_PX = 3
POINT_CONTEXT = 0.25
POINT_BOX_GROW = 0.25
POINTS_SPAN = 0.15
#: Felzenszwalb scale and smallest region (pixels) of the regions points grow or veto.
REGION_SCALE = 30.0
REGION_MIN_SIZE = 20

#: Pixels around a background point's region also cut out of the centre prior (its blurred edge).
_VETO_GUARD_PX = 3

_FOREGROUND = (cv2.GC_FGD, cv2.GC_PR_FGD)

#: ``(x, y)`` pixels; an integer XYXY box (exclusive end).
Pixels = list[tuple[int, int]]
PixelBox = tuple[int, int, int, int]

#: Felzenszwalb settings of the automatic masks, and the most masks kept, largest first.
AUTO_SEGMENTS: dict[str, Any] = {"scale": 300.0, "sigma": 0.8, "min_size": 200}
MAX_AUTO_MASKS = 100


def _pixel_box(box: tuple[float, float, float, float]) -> PixelBox:
    """The pixels a float XYXY box (exclusive max) touches."""
    x0, y0, x1, y1 = box
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


def _grown_box(
    xs: ArrayLike, ys: ArrayLike, grow_x: int, grow_y: int, width: int, height: int
) -> PixelBox:
    """The box of pixels ``xs``, ``ys`` grown by ``grow_x``/``grow_y`` on each side, clipped to
    a ``width``×``height`` image."""
    x0, x1 = int(np.min(xs)) - grow_x, int(np.max(xs)) + 1 + grow_x
    y0, y1 = int(np.min(ys)) - grow_y, int(np.max(ys)) + 1 + grow_y
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def _inside(points: Pixels, box: PixelBox) -> Pixels:
    x0, y0, x1, y1 = box
    return [(x - x0, y - y0) for x, y in points if x0 <= x < x1 and y0 <= y < y1]


def _disk_mask(shape: tuple[int, int], points: Pixels) -> np.ndarray:
    """``H×W bool`` filled disks of :data:`POINT_RADIUS_PX` around ``points``."""
    canvas = np.zeros(shape, dtype=np.uint8)
    for x, y in points:
        cv2.circle(canvas, (x, y), POINT_RADIUS_PX, 1, thickness=-1)
    return canvas.astype(bool)


def _point_seeds(seed: np.ndarray, positives: Pixels, negatives: Pixels) -> None:
    """Mark the points' disks ``GC_FGD``/``GC_BGD`` in place; each point's own pixel keeps its
    own label even where another point's disk covers it."""
    marks = ((positives, cv2.GC_FGD), (negatives, cv2.GC_BGD))
    for points, label in marks:
        seed[_disk_mask(seed.shape, points)] = label
    for points, label in marks:
        for x, y in points:
            seed[y, x] = label


def _regions(crop: np.ndarray) -> np.ndarray:
    """``h×w int`` Felzenszwalb colour regions of ``crop``."""
    return felzenszwalb(crop, scale=REGION_SCALE, sigma=0.8, min_size=REGION_MIN_SIZE)


def _regions_at(labels: np.ndarray, points: Pixels) -> np.ndarray:
    return np.isin(labels, [labels[y, x] for x, y in points])


def _split_points(prompt: Prompt) -> tuple[Pixels, Pixels]:
    split: tuple[Pixels, Pixels] = ([], [])
    for (x, y), label in zip(prompt.points, prompt.point_labels, strict=True):
        split[0 if label else 1].append((int(x), int(y)))
    return split


def _keep_components(mask: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that touch ``anchors`` (``bool``), else the largest one."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = {int(label) for label in np.unique(labels[anchors])} - {0}
    if not keep:
        keep = {int(np.argmax(np.bincount(labels.ravel())[1:])) + 1}
    return np.isin(labels, list(keep))


def _fill_holes(mask: np.ndarray, negatives: Pixels) -> np.ndarray:
    filled = ndimage.binary_fill_holes(mask)
    if negatives:
        holes, _ = ndimage.label(filled & ~mask)
        kept_open = {int(holes[y, x]) for x, y in negatives} - {0}
        filled &= ~np.isin(holes, list(kept_open))
    return filled


def _segment_point(mask: np.ndarray) -> list[int]:
    """``[x, y]`` of the pixel of ``mask`` farthest from its boundary (always inside it)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [int(x) - 1, int(y) - 1]


@dataclass(eq=False)
class GrabCutSegmenter:
    """The ``grabcut`` backend; ``center_prior``: the centre ellipse's size as a fraction of the
    box (0: none); ``seed``: OpenCV's RNG seed before every GrabCut call (its k-means init is
    random). ConfigError: an option out of range."""

    iterations: int = 5
    center_prior: float = 0.7
    min_box_fill: float = 0.15
    keep_largest_component: bool = True
    fill_holes: bool = True
    seed: int = 0
    variant: str = field(init=False)
    name: str = field(default="grabcut", init=False)
    weights_sha256: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        rules = {
            f"iterations >= 1 (got {self.iterations})": self.iterations >= 1,
            f"0 <= center_prior <= 1 (got {self.center_prior})": 0 <= self.center_prior <= 1,
            f"0 <= min_box_fill <= 1 (got {self.min_box_fill})": 0 <= self.min_box_fill <= 1,
        }
        broken = [rule for rule, holds in rules.items() if not holds]
        if broken:
            raise ConfigError(f"grabcut options out of range; use {', '.join(broken)}")
        self.variant = grabcut_variant(self.iterations)

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One ``H×W bool`` mask per prompt for ``image`` (``H×W×3 uint8 RGB``), in order
        (InputError: bad image, a prompt that does not fit it, or a points-only prompt without
        a foreground point)."""
        check_rgb(image, "image for GrabCut")
        height, width = image.shape[:2]
        return [
            self._segment_one(image, validate_prompt(prompt, width, height, f"prompt {index}"))
            for index, prompt in enumerate(prompts)
        ]

    def _points_region(
        self, image: np.ndarray, positives: Pixels, negatives: Pixels
    ) -> tuple[PixelBox, np.ndarray]:
        """A points-only prompt's box (the anchor's, grown) and anchor (``H×W bool``: its
        regions plus the foreground disks)."""
        height, width = image.shape[:2]
        margin = max(MARGIN_PX, int(POINT_CONTEXT * min(width, height)))
        xs, ys = zip(*positives, strict=True)
        near = x0, y0, x1, y1 = _grown_box(xs, ys, margin, margin, width, height)
        labels = _regions(np.ascontiguousarray(image[y0:y1, x0:x1]))
        local_pos, local_neg = _inside(positives, near), _inside(negatives, near)
        region = _regions_at(labels, local_pos) & ~_regions_at(labels, local_neg)
        region |= _disk_mask(labels.shape, local_pos)
        anchor = np.zeros((height, width), dtype=bool)
        anchor[y0:y1, x0:x1] = region
        x, y, w, h = cv2.boundingRect(anchor.astype(np.uint8))
        grow_x, grow_y = round(POINT_BOX_GROW * w) + 1, round(POINT_BOX_GROW * h) + 1
        return _grown_box((x, x + w - 1), (y, y + h - 1), grow_x, grow_y, width, height), anchor

    def _box_anchor(
        self, shape: tuple[int, int], in_box: tuple[slice, slice], positives: Pixels
    ) -> np.ndarray:
        """``h×w bool`` definite foreground of a box prompt: the centre prior, or the foreground
        points' convex hull."""
        prior = np.zeros(shape, dtype=np.uint8)
        if self.center_prior > 0:
            rows, cols = in_box
            center = ((cols.start + cols.stop - 1) // 2, (rows.start + rows.stop - 1) // 2)
            axes = (
                max(round(self.center_prior * (cols.stop - cols.start) / 2), 1),
                max(round(self.center_prior * (rows.stop - rows.start) / 2), 1),
            )
            cv2.ellipse(prior, center, axes, 0, 0, 360, 1, thickness=-1)
        if len(positives) >= 3:
            hull = np.zeros(shape, dtype=np.uint8)
            cv2.fillConvexPoly(hull, cv2.convexHull(np.array(positives, dtype=np.int32)), 1)
            if hull.sum() >= POINTS_SPAN * max(int(prior.sum()), 1):
                return hull.astype(bool)
        return prior.astype(bool)

    def _segment_one(self, image: np.ndarray, prompt: Prompt) -> MaskPrediction:
        height, width = image.shape[:2]
        positives, negatives = _split_points(prompt)
        if prompt.box is None and not positives:
            raise InputError(
                f"points-only prompt {prompt.as_dict()} has no foreground point; GrabCut needs "
                "a box or at least one point with label 1"
            )
        if prompt.box is not None:
            box, anchor = _pixel_box(prompt.box), None
            if min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE_PX:
                return self._fallback(prompt, (height, width), f"box under {MIN_BOX_SIDE_PX} px")
        else:
            box, anchor = self._points_region(image, positives, negatives)
        xs, ys = zip(*positives, (box[0], box[1]), (box[2] - 1, box[3] - 1), strict=True)
        around = cx0, cy0, cx1, cy1 = _grown_box(xs, ys, MARGIN_PX, MARGIN_PX, width, height)
        crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
        shape = (cy1 - cy0, cx1 - cx0)
        local_pos, local_neg = _inside(positives, around), _inside(negatives, around)
        in_box = (slice(box[1] - cy0, box[3] - cy0), slice(box[0] - cx0, box[2] - cx0))

        seed = np.full(shape, cv2.GC_BGD, dtype=np.uint8)
        seed[in_box] = cv2.GC_PR_FGD
        if anchor is not None:  # points only: the grown region
            definite = anchor[cy0:cy1, cx0:cx1]
        else:  # a box: the centre prior, or the foreground points' hull where it spans the prior
            definite = self._box_anchor(shape, in_box, local_pos)
        if local_neg:  # each background point vetoes its colour region
            veto = _regions_at(_regions(crop), local_neg)
            definite &= ~ndimage.binary_dilation(veto, iterations=_VETO_GUARD_PX)
            seed[in_box][veto[in_box]] = cv2.GC_PR_BGD  # through the view of the box
        seed[definite] = cv2.GC_FGD
        _point_seeds(seed, local_pos, local_neg)

        try:
            local = self._grabcut(crop, seed, in_box)
        except cv2.error as exc:
            reason = str(exc).strip().splitlines()[-1]
            return self._fallback(prompt, (height, width), f"grabcut failed: {reason}")
        if self.keep_largest_component:
            local = _keep_components(local, seed == cv2.GC_FGD)
        if self.fill_holes:
            local = _fill_holes(local, local_neg)
        if not local.any():
            return self._fallback(prompt, (height, width), "grabcut found no foreground")
        mask = np.zeros((height, width), dtype=bool)
        mask[cy0:cy1, cx0:cx1] = local
        return MaskPrediction(mask=mask, score=1.0)

    def _grabcut(
        self, crop: np.ndarray, seed: np.ndarray, in_box: tuple[slice, slice]
    ) -> np.ndarray:
        """``h×w bool`` foreground of the last GrabCut iteration on ``crop`` (from the ``seed``
        classes) that kept ``min_box_fill`` of ``in_box`` (cv2.error: GrabCut failed)."""
        cv2.setRNGSeed(self.seed)
        bgd_model: MatLike = np.zeros((1, 65), np.float64)
        fgd_model: MatLike = np.zeros((1, 65), np.float64)
        cv2.setNumThreads(compute_threads())  # a one-thread Dask worker computes on one core
        unused_rect = (0, 0, 0, 0)  # GrabCut reads the rectangle only in GC_INIT_WITH_RECT mode
        classes, accepted = seed, np.zeros(seed.shape, dtype=bool)
        for iteration in range(self.iterations):
            mode = cv2.GC_EVAL if iteration else cv2.GC_INIT_WITH_MASK
            classes, bgd_model, fgd_model = cv2.grabCut(
                crop, classes, unused_rect, bgd_model, fgd_model, 1, mode
            )
            foreground = np.isin(classes, _FOREGROUND)
            if iteration and foreground[in_box].mean() < self.min_box_fill:
                break
            accepted = foreground
        return accepted

    def _fallback(self, prompt: Prompt, shape: tuple[int, int], reason: str) -> MaskPrediction:
        seed = np.full(shape, cv2.GC_PR_BGD, dtype=np.uint8)
        kind = "fallback:points"
        if prompt.box is not None:
            x0, y0, x1, y1 = _pixel_box(prompt.box)
            seed[y0:y1, x0:x1] = cv2.GC_PR_FGD
            kind = "fallback:box"
        _point_seeds(seed, *_split_points(prompt))
        mask = np.isin(seed, _FOREGROUND)
        return MaskPrediction(mask=mask, score=0.0, notes=(kind, reason))

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """``image``'s (``H×W×3 uint8 RGB``) :data:`MAX_AUTO_MASKS` largest Felzenszwalb segments,
        largest first, as SamAutomaticMaskGenerator's records (scores 1.0, ``point_coords``: the
        pixel farthest from the segment's edge)."""
        check_rgb(image, "image for GrabCut")
        height, width = image.shape[:2]
        labels = felzenszwalb(image, **AUTO_SEGMENTS)
        areas = np.bincount(labels.ravel())
        boxes = ndimage.find_objects(labels + 1)
        records = []
        for label in np.argsort(-areas, kind="stable")[:MAX_AUTO_MASKS]:
            rows, cols = boxes[label]
            x, y = _segment_point(labels[rows, cols] == label)
            x0, y0, w, h = cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
            record = {
                "segmentation": labels == label,
                "area": int(areas[label]),
                "bbox": [x0, y0, w, h],
                "predicted_iou": 1.0,
                "stability_score": 1.0,
                "point_coords": [[x + x0, y + y0]],
                "crop_box": [0, 0, width, height],
            }
            records.append(record)
        return records
