"""Stage ``composite``: the stylized image kept inside (or outside) the mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segstyle_core.composite import composite as composite_images
from segstyle_core.config import CompositeConfig
from segstyle_core.images import read_mask, read_rgb, write_png
from segstyle_core.stagecache import StageKey, StageRecord, stage
from segstyle_core.stages.stylize import StylizeRecord


@dataclass(frozen=True, kw_only=True)
class CompositeRecord(StageRecord):
    """Output ``composite``: the original with the painting inside/outside the mask (PNG)."""


def _key(
    image_id: str,
    image_path: str,
    stylized: StylizeRecord,
    mask: StageRecord,
    settings: CompositeConfig,
    cache_dir: str,
) -> StageKey:
    files = {"image": image_path, "stylized": stylized.path("stylized"), "mask": mask.path("mask")}
    config = settings.model_dump(mode="json", include={"mode", "feather_px", "preserve_color"})
    return StageKey(files, config)


@stage("composite", key=_key, code=("segstyle_core.composite",))
def composite(
    out: Path,
    image_id: str,
    image_path: str,
    stylized: StylizeRecord,
    mask: StageRecord,
    settings: CompositeConfig,
    cache_dir: str,
) -> CompositeRecord:
    """Write ``composite.png``: the painting resized back to ``image_path``'s size and kept
    inside (``object``) or outside (``background``) ``mask``'s ``mask`` output (``H×W`` PNG:
    the segment stage's union of prompt masks, or the metrics stage's used mask)."""
    result = composite_images(
        read_rgb(image_path),
        read_rgb(stylized.path("stylized")),
        read_mask(mask.path("mask")),
        mode=settings.mode,
        feather_px=settings.feather_px,
        preserve_color=settings.preserve_color,
    )
    return CompositeRecord(outputs={"composite": str(write_png(out / "composite.png", result))})
