"""Stage ``gt``: binarize one frame's ground truth by class and derive its prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core import cityscapes
from segstyle_core.config import PromptConfig
from segstyle_core.fileio import write_json_atomic
from segstyle_core.images import write_png
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import PROMPT_SOURCES, frame_prompts
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageKey, StageRecord, stage


@dataclass(frozen=True, kw_only=True)
class GtRecord(StageRecord):
    """Outputs ``gt_mask`` (binarized GT PNG) and ``instances`` (JSON table); the prompts.

    Attributes:
        prompts: the frame's prompts, each as :meth:`Prompt.as_dict`.
        height / width: the frame's size in pixels.
        gt_area: pixels of the binarized ground truth.
    """

    prompts: list[dict[str, Any]]
    height: int
    width: int
    gt_area: int

    def prompt_list(self) -> list[Prompt]:
        """The prompts as :class:`Prompt` objects."""
        return [Prompt.from_dict(p) for p in self.prompts]


def _key(
    frame: cityscapes.Frame, classes: tuple[str, ...], prompts: PromptConfig, cache_dir: str
) -> StageKey:
    files = {
        name: str(path)
        for name, path in (
            ("image_path", frame.image_path),
            ("label_ids_path", frame.label_ids_path),
            ("instance_ids_path", frame.instance_ids_path),
        )
        if path is not None
    }
    from_file = prompts.source not in PROMPT_SOURCES
    if from_file:
        files["prompts_file"] = prompts.source
    config = {
        "classes": sorted(c.lower() for c in classes),
        "prompt_source": "file" if from_file else prompts.source,
        "min_area": prompts.min_area,
    }
    return StageKey(files, config)


@stage("gt", key=_key, code=("segstyle_core.cityscapes", "segstyle_core.prompts"))
def binarize_gt(
    out: Path,
    frame: cityscapes.Frame,
    classes: tuple[str, ...],
    prompts: PromptConfig,
    cache_dir: str,
) -> GtRecord:
    """Write the binarized GT mask (``H×W`` PNG) and instance table; derive the prompts."""
    class_mask = cityscapes.load_binary_gt(frame, list(classes))
    instances = cityscapes.load_instances(frame, list(classes))
    from_file = prompts.source not in PROMPT_SOURCES
    file_prompts = load_prompts_file(prompts.source) if from_file else None
    frame_prompt_list = frame_prompts(
        frame, instances, prompts.source, class_mask.shape, file_prompts, prompts.min_area
    )
    table = [
        {"instance_id": i.instance_id, "class": i.class_name, "box": list(i.box), "area": i.area}
        for i in instances
    ]
    return GtRecord(
        outputs={
            "gt_mask": str(write_png(out / "gt_mask.png", class_mask)),
            "instances": str(write_json_atomic(out / "instances.json", table)),
        },
        prompts=[p.as_dict() for p in frame_prompt_list],
        height=int(class_mask.shape[0]),
        width=int(class_mask.shape[1]),
        gt_area=int(class_mask.sum()),
    )
