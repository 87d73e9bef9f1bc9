"""Stage ``gt``: binarize one frame's ground truth by class and derive its prompts; with GT
prompts, also its regions (instances, or components of stuff classes) for the metrics stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segstyle_core import cityscapes
from segstyle_core.cityscapes import GtSource, Instance, load_gt
from segstyle_core.config import PromptConfig
from segstyle_core.fileio import write_json_atomic
from segstyle_core.images import read_label_map, write_png
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import PROMPT_SOURCES, frame_prompts
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageRecord, files_key, stage


@dataclass(frozen=True, kw_only=True)
class GtRecord(StageRecord):
    """Outputs ``gt_mask`` (binarized GT PNG), ``instances`` (JSON table of the regions) and,
    with GT prompts, ``regions`` (``H×W uint16`` PNG: ``k`` on the table's ``k``-th, else 0)."""

    prompts: list[dict[str, Any]]  # each :meth:`Prompt.as_dict`, boxes expanded and jittered
    height: int
    width: int
    gt_area: int  # pixels of the binarized ground truth
    gt_source: str  # ``labelIds`` or ``color``

    def prompt_list(self) -> list[Prompt]:
        return [Prompt.from_dict(p) for p in self.prompts]

    def regions(self) -> list[Instance]:
        """The frame's GT regions in table order; ``[]`` with a prompts file."""
        if "regions" not in self.outputs:
            return []
        rows = json.loads(Path(self.path("instances")).read_text())
        ids = read_label_map(self.path("regions"))
        return [
            Instance(r["instance_id"], r["class"], ids == k, tuple(r["box"]), r["area"], r["kind"])
            for k, r in enumerate(rows, start=1)
        ]


def frame_key(frame: cityscapes.Frame) -> dict[str, Any]:
    """A frame in a stage key: its image id and the content of each of its files."""
    files = {name: files_key(path) for name, path in vars(frame).items() if isinstance(path, Path)}
    return {"image_id": frame.image_id, "files": files}


def _prompts_key(prompts: PromptConfig) -> dict[str, Any]:
    """The prompt settings, and the content of a prompts file."""
    file = None if prompts.source in PROMPT_SOURCES else files_key(prompts.source)
    return {**prompts.model_dump(mode="json"), "file": file}


@stage(
    "gt",
    keys={"frame": frame_key, "prompts": _prompts_key},
    code=("segstyle_core.cityscapes", "segstyle_core.prompts"),
)
def binarize_gt(
    out: Path,
    frame: cityscapes.Frame,
    classes: tuple[str, ...],
    prompts: PromptConfig,
    gt_source: GtSource = "auto",
    seed: int = 0,
) -> GtRecord:
    """Write the binarized GT mask (``H×W`` PNG) and the region table (and map); derive the
    prompts (box jitter seeded by ``seed`` and the image id)."""
    regions = prompts.source in PROMPT_SOURCES  # a prompts file reads no instanceIds PNG
    truth = load_gt(frame, classes, gt_source, regions=regions, min_area=prompts.min_area)
    class_mask = truth.mask
    frame_prompt_list = frame_prompts(
        frame,
        truth.regions,
        prompts.source,
        class_mask.shape,
        None if regions else load_prompts_file(prompts.source),
        prompts.min_area,
        expand_px=prompts.box_expand_px,
        jitter_px=prompts.box_jitter_px,
        seed=seed,
    )
    table = [
        {
            "instance_id": i.instance_id,
            "class": i.class_name,
            "box": list(i.box),
            "area": i.area,
            "kind": i.kind,
        }
        for i in truth.regions
    ]
    outputs = {
        "gt_mask": str(write_png(out / "gt_mask.png", class_mask)),
        "instances": str(write_json_atomic(out / "instances.json", table)),
    }
    if regions:
        index = np.zeros(class_mask.shape, dtype=np.uint16)
        for k, region in enumerate(truth.regions, start=1):
            index[region.mask] = k
        outputs["regions"] = str(write_png(out / "regions.png", index))
    return GtRecord(
        outputs=outputs,
        prompts=[p.as_dict() for p in frame_prompt_list],
        height=int(class_mask.shape[0]),
        width=int(class_mask.shape[1]),
        gt_area=int(class_mask.sum()),
        gt_source=truth.kind,
    )
