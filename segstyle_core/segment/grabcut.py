"""Offline segmentation that needs no weights: OpenCV GrabCut for prompts, an over-segmentation
(scikit-image Felzenszwalb or SLIC) for automatic masks.

Prompted masks (:meth:`GrabCutSegmenter.segment`):

* box prompt: GrabCut runs on the box grown by ``margin_px`` (cropped, for speed on big
  frames), initialised from a mask: inside the box is probable foreground, the margin around
  it is background;
* centre prior: for a box without points, an ellipse centred in the box, ``center_prior``
  times the box's width and height, is definite foreground. Without it GrabCut often
  collapses onto a small distinctive part (number plate, lights) when the object's main
  colours also occur around it; on the demo dataset's cars it lifts the mean IoU from well
  below to above that of the box itself. ``center_prior=0`` turns it off;
* collapse guard: GrabCut runs one iteration at a time and stops early when an iteration would
  leave less than ``min_box_fill`` of the box as foreground (GrabCut can wipe out an object
  whose colours also occur in the margin); the last mask above the threshold is kept;
* points: small disks of definite foreground (label 1) or background (label 0); a points-only
  prompt runs on the points' bounding box grown by ``point_context`` times the image's shorter
  side, initialised as probable background apart from the disks;
* post-processing: keep the connected components that hold a foreground point, else the
  largest one; fill holes, except holes that hold a background point.

Fallback, recorded in :attr:`MaskPrediction.notes`: when the box is under
:data:`MIN_BOX_SIDE_PX` pixels on a side, when GrabCut fails or when it finds no foreground,
the mask is the box itself (note ``"fallback:box"``) or, for a points-only prompt, the disks
of the foreground points (note ``"fallback:points"``). A non-empty prompt never gives an
empty mask.

Score: 1.0 for a GrabCut mask, 0.0 for a fallback mask (GrabCut has no confidence of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from cv2.typing import MatLike
from scipy import ndimage
from skimage.segmentation import felzenszwalb, slic

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import check_rgb
from segstyle_core.prompts.validation import validate_prompt
from segstyle_core.segment.base import MaskPrediction, Prompt

#: Boxes narrower or shorter than this (pixels) skip GrabCut and use the box fallback: GrabCut's
#: colour models are unreliable on so few pixels (on the demo cars they score below the box).
MIN_BOX_SIDE_PX = 12

_FOREGROUND = (cv2.GC_FGD, cv2.GC_PR_FGD)


@dataclass(frozen=True)
class OversegmentOptions:
    """Settings of :meth:`GrabCutSegmenter.generate`.

    Attributes:
        method: ``"felzenszwalb"`` (graph-based; uses ``scale``, ``sigma``, ``min_size``) or
            ``"slic"`` (k-means superpixels; uses ``n_segments``, ``compactness``, ``sigma``).
        scale: Felzenszwalb's scale; higher gives larger segments.
        sigma: Gaussian pre-smoothing width in pixels.
        min_size: Felzenszwalb's smallest segment in pixels (smaller ones are merged).
        n_segments: SLIC's approximate number of segments.
        compactness: SLIC's colour/space trade-off; higher gives squarer segments.
        min_area: records for segments under this many pixels are dropped.
        max_masks: at most this many records, the largest first (bounds memory on big frames).
    """

    method: Literal["felzenszwalb", "slic"] = "felzenszwalb"
    scale: float = 300.0
    sigma: float = 0.8
    min_size: int = 200
    n_segments: int = 100
    compactness: float = 10.0
    min_area: int = 0
    max_masks: int = 100

    def __post_init__(self) -> None:
        if self.method not in ("felzenszwalb", "slic"):
            raise ConfigError(
                f"over-segmentation method {self.method!r} is unknown; use 'felzenszwalb' or 'slic'"
            )
        if self.max_masks < 1 or self.n_segments < 1:
            raise ConfigError(
                f"max_masks={self.max_masks}, n_segments={self.n_segments}: use values >= 1"
            )


def _pixel_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The pixels a float XYXY box (exclusive max) touches, as an integer XYXY box."""
    x0, y0, x1, y1 = box
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


def _disk_mask(shape: tuple[int, int], points: list[tuple[int, int]], radius: int) -> np.ndarray:
    """``H×W bool`` mask of filled disks of ``radius`` around ``points`` (``(x, y)`` pixels)."""
    canvas = np.zeros(shape, dtype=np.uint8)
    for x, y in points:
        cv2.circle(canvas, (x, y), radius, 1, thickness=-1)
    return canvas.astype(bool)


def _draw_center_prior(seed: np.ndarray, in_box: tuple[slice, slice], fraction: float) -> None:
    """Mark an ellipse centred in ``in_box`` (``fraction`` of its size) as ``GC_FGD`` in place."""
    rows, cols = in_box
    center = ((cols.start + cols.stop - 1) // 2, (rows.start + rows.stop - 1) // 2)
    axes = (
        max(round(fraction * (cols.stop - cols.start) / 2), 1),
        max(round(fraction * (rows.stop - rows.start) / 2), 1),
    )
    cv2.ellipse(seed, center, axes, 0, 0, 360, int(cv2.GC_FGD), thickness=-1)


def _split_points(prompt: Prompt) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The prompt's foreground and background points as integer ``(x, y)`` pixels."""
    split: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
    for (x, y), label in zip(prompt.points, prompt.point_labels, strict=True):
        split[0 if label else 1].append((int(x), int(y)))
    return split


def _keep_components(mask: np.ndarray, positives: list[tuple[int, int]]) -> np.ndarray:
    """Keep the components of ``mask`` that hold a foreground point, else the largest one."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    keep = {int(labels[y, x]) for x, y in positives} - {0}
    if not keep:
        keep = {int(np.argmax(np.bincount(labels.ravel())[1:])) + 1}
    return np.isin(labels, list(keep))


def _fill_holes(mask: np.ndarray, negatives: list[tuple[int, int]]) -> np.ndarray:
    """Fill the holes of ``mask`` except those that hold a background point."""
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


def grabcut_variant(iterations: int) -> str:
    """The variant name GrabCut's rows and cache keys carry (``opencv-iter5``)."""
    return f"opencv-iter{iterations}"


class GrabCutSegmenter:
    """The ``grabcut`` backend: :class:`~segstyle_core.segment.base.Segmenter` without weights.

    Args:
        iterations: GrabCut iterations per prompt (at most; see ``min_box_fill``).
        center_prior: side of the definite-foreground centre ellipse of a box without points,
            as a fraction of the box's width and height (0 disables it).
        min_box_fill: with a box, stop iterating before the foreground shrinks below this
            fraction of the box (the first iteration's mask is always kept).
        keep_largest_component: keep only the components holding a foreground point, else
            the largest component.
        fill_holes: fill holes in the mask (holes holding a background point stay open).
        margin_px: background margin around a box that GrabCut learns background colours from.
        point_radius_px: radius of the definite foreground/background disk around each point.
        point_context: a points-only prompt runs on the points' bounding box grown by this
            fraction of the image's shorter side.
        seed: OpenCV RNG seed set before every GrabCut call (its k-means init is random), so
            equal inputs give equal masks.
        auto_options: settings of :meth:`generate` (defaults: :class:`OversegmentOptions`).

    Raises:
        ConfigError: an option out of its range.
    """

    name = "grabcut"
    weights_sha256: str | None = None

    def __init__(
        self,
        iterations: int = 5,
        center_prior: float = 0.7,
        min_box_fill: float = 0.15,
        keep_largest_component: bool = True,
        fill_holes: bool = True,
        margin_px: int = 16,
        point_radius_px: int = 3,
        point_context: float = 0.25,
        seed: int = 0,
        auto_options: OversegmentOptions | None = None,
    ) -> None:
        rules = {
            f"iterations >= 1 (got {iterations})": iterations >= 1,
            f"0 <= center_prior <= 1 (got {center_prior})": 0 <= center_prior <= 1,
            f"0 <= min_box_fill <= 1 (got {min_box_fill})": 0 <= min_box_fill <= 1,
            f"margin_px >= 1 (got {margin_px})": margin_px >= 1,
            f"point_radius_px >= 0 (got {point_radius_px})": point_radius_px >= 0,
            f"point_context >= 0 (got {point_context})": point_context >= 0,
        }
        broken = [rule for rule, holds in rules.items() if not holds]
        if broken:
            raise ConfigError(f"grabcut options out of range; use {', '.join(broken)}")
        self.iterations = iterations
        self.center_prior = center_prior
        self.min_box_fill = min_box_fill
        self.keep_largest_component = keep_largest_component
        self.fill_holes = fill_holes
        self.margin_px = margin_px
        self.point_radius_px = point_radius_px
        self.point_context = point_context
        self.seed = seed
        self.auto_options = auto_options or OversegmentOptions()
        self.variant = grabcut_variant(iterations)

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One mask per prompt for ``image`` (``H×W×3 uint8 RGB``), in prompt order.

        Each :class:`MaskPrediction` holds an ``H×W bool`` mask, score 1.0 (GrabCut) or 0.0
        (fallback) and notes (``("fallback:box" or "fallback:points", reason)`` for a
        fallback, else empty).

        Raises:
            InputError: bad image array, a prompt that does not fit the image (see
                :func:`~segstyle_core.prompts.validation.validate_prompt`), or a points-only prompt
                without a foreground point.
        """
        check_rgb(image, "image for GrabCut")
        height, width = image.shape[:2]
        return [
            self._segment_one(image, validate_prompt(prompt, width, height, f"prompt {index}"))
            for index, prompt in enumerate(prompts)
        ]

    def _crop(self, prompt: Prompt, width: int, height: int) -> tuple[int, int, int, int]:
        """The region GrabCut runs on: box and points grown by the margin, clipped, XYXY."""
        corners = [(int(x), int(y)) for x, y in prompt.points]
        if prompt.box is not None:
            x0, y0, x1, y1 = _pixel_box(prompt.box)
            corners += [(x0, y0), (x1 - 1, y1 - 1)]
            margin = self.margin_px
        else:
            margin = max(self.margin_px, int(self.point_context * min(width, height)))
        xs, ys = zip(*corners, strict=True)
        return (
            max(min(xs) - margin, 0),
            max(min(ys) - margin, 0),
            min(max(xs) + 1 + margin, width),
            min(max(ys) + 1 + margin, height),
        )

    def _segment_one(self, image: np.ndarray, prompt: Prompt) -> MaskPrediction:
        height, width = image.shape[:2]
        positives, negatives = _split_points(prompt)
        if prompt.box is None and not positives:
            raise InputError(
                f"points-only prompt {prompt.as_dict()} has no foreground point; GrabCut needs "
                "a box or at least one point with label 1"
            )
        cx0, cy0, cx1, cy1 = self._crop(prompt, width, height)
        shape = (cy1 - cy0, cx1 - cx0)
        local_pos = [(x - cx0, y - cy0) for x, y in positives]
        local_neg = [(x - cx0, y - cy0) for x, y in negatives]

        if prompt.box is not None:
            bx0, by0, bx1, by1 = _pixel_box(prompt.box)
            if min(bx1 - bx0, by1 - by0) < MIN_BOX_SIDE_PX:
                return self._fallback(prompt, (height, width), f"box under {MIN_BOX_SIDE_PX} px")
            in_box = (slice(by0 - cy0, by1 - cy0), slice(bx0 - cx0, bx1 - cx0))
            seed = np.full(shape, cv2.GC_BGD, dtype=np.uint8)
            seed[in_box] = cv2.GC_PR_FGD
            if not prompt.points and self.center_prior > 0:
                _draw_center_prior(seed, in_box, self.center_prior)
        else:
            in_box = None
            seed = np.full(shape, cv2.GC_PR_BGD, dtype=np.uint8)
        seed[_disk_mask(shape, local_pos, self.point_radius_px)] = cv2.GC_FGD
        seed[_disk_mask(shape, local_neg, self.point_radius_px)] = cv2.GC_BGD

        crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1])
        try:
            local = self._grabcut(crop, seed, in_box)
        except cv2.error as exc:
            reason = str(exc).strip().splitlines()[-1]
            return self._fallback(prompt, (height, width), f"grabcut failed: {reason}")
        if self.keep_largest_component:
            local = _keep_components(local, local_pos)
        if self.fill_holes:
            local = _fill_holes(local, local_neg)
        if not local.any():
            return self._fallback(prompt, (height, width), "grabcut found no foreground")
        mask = np.zeros((height, width), dtype=bool)
        mask[cy0:cy1, cx0:cx1] = local
        return MaskPrediction(mask=mask, score=1.0)

    def _grabcut(
        self, crop: np.ndarray, seed: np.ndarray, in_box: tuple[slice, slice] | None
    ) -> np.ndarray:
        """Run GrabCut one iteration at a time on ``crop`` from the ``seed`` class mask.

        Returns the ``h×w bool`` foreground of the last iteration that kept at least
        ``min_box_fill`` of the box (``in_box``, crop-local slices) as foreground; the first
        iteration's result is always accepted.

        Raises:
            cv2.error: GrabCut could not run (e.g. no background pixels to learn from).
        """
        cv2.setRNGSeed(self.seed)
        bgd_model: MatLike = np.zeros((1, 65), np.float64)
        fgd_model: MatLike = np.zeros((1, 65), np.float64)
        unused_rect = (0, 0, 0, 0)  # GrabCut reads the rectangle only in GC_INIT_WITH_RECT mode
        classes, bgd_model, fgd_model = cv2.grabCut(
            crop, seed, unused_rect, bgd_model, fgd_model, 1, cv2.GC_INIT_WITH_MASK
        )
        accepted = np.isin(classes, _FOREGROUND)
        for _ in range(self.iterations - 1):
            classes, bgd_model, fgd_model = cv2.grabCut(
                crop, classes, unused_rect, bgd_model, fgd_model, 1, cv2.GC_EVAL
            )
            foreground = np.isin(classes, _FOREGROUND)
            if in_box is not None and foreground[in_box].mean() < self.min_box_fill:
                break
            accepted = foreground
        return accepted

    def _fallback(self, prompt: Prompt, shape: tuple[int, int], reason: str) -> MaskPrediction:
        """The documented fallback: the box, or the foreground-point disks of a points prompt."""
        if prompt.box is not None:
            x0, y0, x1, y1 = _pixel_box(prompt.box)
            mask = np.zeros(shape, dtype=bool)
            mask[y0:y1, x0:x1] = True
            return MaskPrediction(mask=mask, score=0.0, notes=("fallback:box", reason))
        mask = _disk_mask(shape, _split_points(prompt)[0], self.point_radius_px)
        return MaskPrediction(mask=mask, score=0.0, notes=("fallback:points", reason))

    def _oversegment(self, image: np.ndarray) -> np.ndarray:
        """``H×W int`` segment labels ``0..n-1`` of ``image``."""
        options = self.auto_options
        if options.method == "slic":
            return slic(
                image,
                n_segments=options.n_segments,
                compactness=options.compactness,
                sigma=options.sigma,
                start_label=0,
                channel_axis=-1,
            )
        return felzenszwalb(
            image, scale=options.scale, sigma=options.sigma, min_size=options.min_size
        )

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Automatic masks of ``image`` (``H×W×3 uint8 RGB``) from an over-segmentation.

        Records follow SamAutomaticMaskGenerator's format, largest area first: ``segmentation``
        (``H×W bool``), ``area`` (pixels), ``bbox`` (``[x, y, w, h]``, ``w``/``h`` = pixels
        covered), ``predicted_iou`` and ``stability_score`` (both 1.0: an over-segmentation
        has no confidence), ``point_coords`` (``[[x, y]]``, the segment pixel farthest from
        its boundary) and ``crop_box`` (``[0, 0, W, H]``). With ``min_area=0`` and enough
        ``max_masks`` the segments tile the image exactly.

        Raises:
            InputError: bad image array.
        """
        check_rgb(image, "image for GrabCut")
        height, width = image.shape[:2]
        labels = self._oversegment(image)
        areas = np.bincount(labels.ravel())
        order = [int(label) for label in np.argsort(-areas, kind="stable")]
        kept = [label for label in order if areas[label] >= max(self.auto_options.min_area, 1)]
        boxes = ndimage.find_objects(labels + 1)
        records = []
        for label in kept[: self.auto_options.max_masks]:
            rows, cols = boxes[label]
            local = labels[rows, cols] == label
            mask = np.zeros((height, width), dtype=bool)
            mask[rows, cols] = local
            x, y = _segment_point(local)
            records.append(
                {
                    "segmentation": mask,
                    "area": int(areas[label]),
                    "bbox": [
                        cols.start,
                        rows.start,
                        cols.stop - cols.start,
                        rows.stop - rows.start,
                    ],
                    "predicted_iou": 1.0,
                    "stability_score": 1.0,
                    "point_coords": [[x + cols.start, y + rows.start]],
                    "crop_box": [0, 0, width, height],
                }
            )
        return records
