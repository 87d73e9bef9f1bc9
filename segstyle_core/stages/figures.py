"""Stage ``figures``: the seed's figures for one image in one panel PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segstyle_core import cityscapes
from segstyle_core.figures import image_panel
from segstyle_core.images import read_label_map, read_mask, read_rgb, write_png
from segstyle_core.masks import load_masks
from segstyle_core.metrics import score_masks
from segstyle_core.stagecache import StageRecord, stage
from segstyle_core.stages.composite import CompositeRecord
from segstyle_core.stages.gt import GtRecord, frame_key
from segstyle_core.stages.metrics import MetricsRecord
from segstyle_core.stages.segment import SegmentRecord
from segstyle_core.stages.stylize import StylizeRecord


@dataclass(frozen=True, kw_only=True)
class FiguresRecord(StageRecord):
    """Output ``panel``: original, GT, binarized GT, mask with prompts, stylized, composite."""


@stage("figures", keys={"frame": frame_key}, code=("segstyle_core.figures", "segstyle_core.masks"))
def figures(
    out: Path,
    frame: cityscapes.Frame,
    gt: GtRecord,
    masks: SegmentRecord,
    scores: MetricsRecord,
    automatic: bool,
    stylized: StylizeRecord | None = None,
    painted: CompositeRecord | None = None,
) -> FiguresRecord:
    """Write ``panel.png``; its mask tile and scores are of the used mask (``scores``'s) against
    the class GT; automatic mode adds every automatic mask."""
    class_mask = read_mask(gt.path("gt_mask"))
    union = read_mask(scores.path("mask"))
    image_scores = score_masks(union, class_mask)
    panel = image_panel(
        read_rgb(frame.image_path),
        read_rgb(frame.color_path)
        if frame.color_path
        else read_label_map(str(frame.label_ids_path)),
        class_mask,
        union,
        [] if automatic else gt.prompt_list(),
        read_rgb(stylized.path("stylized")) if stylized else None,
        read_rgb(painted.path("composite")) if painted else None,
        {"iou": image_scores.iou, "dice": image_scores.dice},
        auto_masks=[p.mask for p in load_masks(masks.path("masks"))] if automatic else None,
        title=f"{frame.image_id} · used mask vs class GT",
    )
    return FiguresRecord(outputs={"panel": str(write_png(out / "panel.png", panel))})
