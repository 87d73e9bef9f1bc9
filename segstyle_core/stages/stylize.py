"""Stage ``stylize``: paint one image in a style (the whole frame, or the mask's box)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.composite import Mode
from segstyle_core.devices import memory_guard
from segstyle_core.images import read_mask, read_rgb, write_png
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
) -> StageKey:
    files = {"image": image_path, "style": style_path}
    if roi is not None and roi_margin_px is not None:
        files["roi_mask"] = roi.path("mask")
    config: dict[str, Any] = {
        "stylizer": dataclasses.asdict(stylizer.identity()),
        "settings": stylizer.settings(),
        "roi_margin_px": roi_margin_px if "roi_mask" in files else None,
    }
    if "roi_mask" in files and roi_mode != "object":  # object mode: the config as before
        config["roi_mode"] = roi_mode
    return StageKey(files, config)


@stage("stylize", key=_key, code=("segstyle_core.stylize", "segstyle_core.roi"), heavy=True)
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
) -> StylizeRecord:
    """Paint ``image_path`` in the style of ``style_path``; write ``stylized.png``.

    Whole frame by default (the seed's method). With ``roi`` (a record whose ``mask`` output is
    an ``H×W`` mask PNG) and ``roi_margin_px``, only the bounding box of the region the
    composite paints (the mask in ``roi_mode`` object, everything outside it in background)
    plus that margin is stylized, and the result is full size (see :mod:`segstyle_core.roi`).
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
            result = stylize_roi(
                model,
                content,
                style,
                read_mask(roi.path("mask")),
                margin_px=roi_margin_px,
                margin_pct=0.0,
                progress=report,
                mode=roi_mode,
            )
    return StylizeRecord(outputs={"stylized": str(write_png(out / "stylized.png", result))})
