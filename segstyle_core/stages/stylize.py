"""Stage ``stylize``: paint one image in a style (the whole frame, or the mask's box)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.composite import Mode
from segstyle_core.devices import memory_guard
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import load_masks, union_mask
from segstyle_core.roi import stylize_roi
from segstyle_core.stagecache import StageRecord, backend_key, stage
from segstyle_core.stylize import Progress, StylizerConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StylizeRecord(StageRecord):
    """Output ``stylized``: the painted image (PNG; full size with an ROI, else working size)."""


def stylizer_key(stylizer: StylizerConfig) -> dict[str, Any]:
    return backend_key(stylizer, stylizer.settings())


@stage(
    "stylize",
    files=("image", "style"),
    keys={"stylizer": stylizer_key},
    code=("segstyle_core.stylize", "segstyle_core.roi", "segstyle_core.masks"),
    heavy=True,
)
def stylize(
    out: Path,
    image: str,
    style: str,
    stylizer: StylizerConfig,
    roi: StageRecord | None = None,
    roi_margin_px: int | None = None,
    roi_mode: Mode = "object",
    roi_masks: tuple[int, ...] | None = None,
) -> StylizeRecord:
    """Write ``stylized.png``: ``image`` painted like ``style``, the whole frame, or with ``roi``
    (a record with per-prompt ``masks``) and ``roi_margin_px`` the box of the union of its
    ``roi_masks`` (none: all) plus that margin, full size (:mod:`segstyle_core.roi`)."""

    def report(progress: Progress) -> None:
        if progress.step in (1, progress.total) or progress.step % 25 == 0:
            terms = "".join(f" {k}={v:.4g}" for k, v in progress.losses.items())
            _log.info("%s step %d/%d%s", Path(image).name, progress.step, progress.total, terms)

    content = read_rgb(image)
    painting = read_rgb(style)
    model = stylizer.build()
    with memory_guard(f"{image}: stylizing {content.shape[1]}x{content.shape[0]}"):
        if roi is None or roi_margin_px is None:
            result = model.stylize(content, painting, progress=report)
        else:
            masks = load_masks(roi.path("masks"))
            chosen = masks if roi_masks is None else [masks[k] for k in roi_masks]
            result = stylize_roi(
                model,
                content,
                painting,
                union_mask(chosen, content.shape[:2]),
                margin_px=roi_margin_px,
                margin_pct=0.0,
                progress=report,
                mode=roi_mode,
            )
    return StylizeRecord(outputs={"stylized": str(write_png(out / "stylized.png", result))})
