"""The segmenter protocol of every backend: one image and all its prompts at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

SamVariant = Literal["vit_b", "vit_l", "vit_h"]
"""SAM's image encoders."""
Sam2Variant = Literal["hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"]
"""SAM 2.1's Hiera image encoders."""
SamPrecision = Literal["auto", "float32", "bfloat16"]
"""SAM's and SAM 2's image-encoder precision (:func:`.sam.encoder_dtype`)."""


@dataclass(frozen=True)
class Prompt:
    """One prompt in image pixels: an XYXY ``box`` and/or ``points`` ``(x, y)`` with one label
    each (1 foreground, 0 background); the GT ``instance_id`` and ``class_name`` it came from."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    instance_id: int | None = None
    class_name: str | None = None

    def kind(self) -> str:
        if self.box is not None and self.points:
            return "box+points"
        return "box" if self.box is not None else "points"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (records, Parquet rows)."""
        return {
            "kind": self.kind(),
            "box": list(self.box) if self.box is not None else None,
            "points": [list(p) for p in self.points],
            "point_labels": list(self.point_labels),
            "instance_id": self.instance_id,
            "class_name": self.class_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prompt:
        """Rebuild a prompt from :meth:`as_dict` output (``kind`` is ignored)."""
        box = data.get("box")
        return cls(
            box=tuple(box) if box is not None else None,  # type: ignore[arg-type]
            points=tuple(tuple(p) for p in data.get("points", ())),  # type: ignore[misc]
            point_labels=tuple(data.get("point_labels", ())),
            instance_id=data.get("instance_id"),
            class_name=data.get("class_name"),
        )


@dataclass(frozen=True)
class MaskPrediction:
    """A predicted mask: ``mask`` is ``H×W bool`` at the original image size."""

    mask: np.ndarray
    score: float
    notes: tuple[str, ...] = field(default=())


class Segmenter(Protocol):
    """A segmentation backend; ``name``/``variant``/``weights_sha256`` go into every result row."""

    name: str
    variant: str
    weights_sha256: str | None

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One mask per prompt for ``image`` (``H×W×3 uint8 RGB``), in prompt order."""

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Automatic masks in SamAutomaticMaskGenerator's records: ``segmentation`` (``H×W
        bool``), ``area``, ``bbox`` and ``crop_box`` (XYWH), ``predicted_iou``,
        ``stability_score``, ``point_coords`` (``[[x, y]]``)."""


def grabcut_variant(iterations: int) -> str:
    """The variant name GrabCut's rows and cache keys carry (``opencv-iter5``)."""
    return f"opencv-iter{iterations}"
