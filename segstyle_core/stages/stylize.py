"""Stage ``stylize``: paint one image in a style (the whole frame, or the mask's box)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.composite import Mode
from segstyle_core.devices import memory_guard
from segstyle_core.images import read_rgb, write_png
from segstyle_core.masks import load_masks, union_mask
from segstyle_core.roi import stylize_roi
from segstyle_core.stagecache import StageKey, StageRecord, stage
from segstyle_core.stylize import Progress, StylizerConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class StylizeRecord(StageRecord):
    """Output ``stylized``: the painted image (PNG), full size with an ROI, else the
    stylizer's working size."""


def _key(
    image_id: str,
    image_path: str,
    style_path: str,
    stylizer: StylizerConfig,
    cache_dir: str,
    roi: StageRecord | None = None,
    roi_margin_px: int | None = None,
    roi_mode: Mode = "object",
    roi_masks: tuple[int, ...] | None = None,
) -> StageKey:
    files = {"image": image_path, "style": style_path}
    config: dict[str, Any] = {
        "stylizer": dataclasses.asdict(stylizer.identity()),
        "settings": stylizer.settings(),
    }
    if roi is not None and roi_margin_px is not None:
        files["roi_masks"] = roi.path("masks")
        config["roi"] = {"margin_px": roi_margin_px, "mode": roi_mode, "masks": roi_masks}
    return StageKey(files, config)


@stage(
    "stylize",
    key=_key,
    code=("segstyle_core.stylize", "segstyle_core.roi", "segstyle_core.masks"),
    heavy=True,
)
def stylize(
    out: Path,
    image_id: str,
    image_path: str,
    style_path: str,
    stylizer: StylizerConfig,
    cache_dir: str,
    roi: StageRecord | None = None,
    roi_margin_px: int | None = None,
    roi_mode: Mode = "object",
    roi_masks: tuple[int, ...] | None = None,
) -> StylizeRecord:
    """Paint ``image_path`` in the style of ``style_path``; write ``stylized.png``.

    Whole frame by default (the seed's method). With ``roi`` (a record whose ``masks`` output
    holds per-prompt masks, :func:`segstyle_core.masks.save_masks`) and ``roi_margin_px``, only
    the bounding box of the region the composite paints in this style plus that margin is
    stylized: the union of the masks ``roi_masks`` indexes (none: all of them) in ``roi_mode``
    object, everything outside it in background. The result is full size (see
    :mod:`segstyle_core.roi`).
    """

    def report(progress: Progress) -> None:
        if progress.step == progress.total or progress.step % 25 == 0:
            terms = " ".join(f"{k}={v:.4g}" for k, v in progress.losses.items())
            _log.info("%s step %d/%d %s", image_id, progress.step, progress.total, terms)

    content = read_rgb(image_path)
    style = read_rgb(style_path)
    model = stylizer.build()
    with memory_guard(f"{image_path}: stylizing {content.shape[1]}x{content.shape[0]}"):
        if roi is None or roi_margin_px is None:
            result = model.stylize(content, style, progress=report)
        else:
            masks = load_masks(roi.path("masks"))
            chosen = masks if roi_masks is None else [masks[k] for k in roi_masks]
            result = stylize_roi(
                model,
                content,
                style,
                union_mask(chosen, content.shape[:2]),
                margin_px=roi_margin_px,
                margin_pct=0.0,
                progress=report,
                mode=roi_mode,
            )
    return StylizeRecord(outputs={"stylized": str(write_png(out / "stylized.png", result))})
