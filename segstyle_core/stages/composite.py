"""Stage ``composite``: the stylized images kept inside (or outside) the masks, layer by layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segstyle_core.composite import Layer, composite_regions
from segstyle_core.config import CompositeConfig
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import load_masks, union_mask
from segstyle_core.paint import PaintLayer
from segstyle_core.stagecache import StageRecord, stage
from segstyle_core.stages.stylize import StylizeRecord


@dataclass(frozen=True, kw_only=True)
class CompositeRecord(StageRecord):
    """Output ``composite``: the original with the painting inside/outside the masks (PNG)."""


@stage(
    "composite",
    files=("image",),
    code=("segstyle_core.composite", "segstyle_core.masks"),
    version=2,
)
def composite(
    out: Path,
    image: str,
    stylized: list[StylizeRecord],
    masks: StageRecord,
    layers: tuple[PaintLayer, ...],
    settings: CompositeConfig,
) -> CompositeRecord:
    """Write ``composite.png`` (``image``'s size, ``H×W×3`` RGB): each layer's painting kept
    inside or outside the union of its masks (indices into ``masks``' output), in order."""
    original = read_rgb(image)
    predictions = load_masks(masks.path("masks"))
    paintings = [read_rgb(record.path("stylized")) for record in stylized]
    result = composite_regions(
        original,
        [
            Layer(
                paintings[layer.style],
                union_mask([predictions[k] for k in layer.masks], original.shape[:2]),
                mode=settings.mode,
                feather_px=settings.feather_px,
                preserve_color=settings.preserve_color,
            )
            for layer in layers
        ],
    )
    return CompositeRecord(outputs={"composite": str(write_png(out / "composite.png", result))})
