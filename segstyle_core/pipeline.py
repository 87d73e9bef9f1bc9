"""The per-image steps of a dataset run, as pure functions the Prefect tasks wrap.

Everything here takes and returns plain data (paths, dicts, arrays) and is tested without
Prefect: prompts from ground truth, mask files, and per-prompt scores.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from segstyle_core import cityscapes
from segstyle_core.errors import InputError
from segstyle_core.fileio import atomic_write_with
from segstyle_core.metrics import score_masks
from segstyle_core.prompts import prompts_from_instances, score_instance_aware, validate_prompt
from segstyle_core.segment.base import MaskPrediction, Prompt

#: Prompt sources a dataset run accepts besides a prompts-file path.
PROMPT_SOURCES = ("gt-instances", "largest", "auto")


def frame_to_dict(frame: cityscapes.Frame) -> dict[str, Any]:
    """A JSON-able dict of a frame (paths as strings)."""
    return {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in dataclasses.asdict(frame).items()
    }


def frame_from_dict(data: dict[str, Any]) -> cityscapes.Frame:
    """Inverse of :func:`frame_to_dict`."""
    path_fields = {f.name for f in dataclasses.fields(cityscapes.Frame) if f.name.endswith("_path")}
    return cityscapes.Frame(
        **{k: (Path(v) if k in path_fields and v is not None else v) for k, v in data.items()}
    )


def prompt_from_dict(data: dict[str, Any]) -> Prompt:
    """Rebuild a :class:`Prompt` from :meth:`Prompt.as_dict` output."""
    box = data.get("box")
    return Prompt(
        box=tuple(box) if box is not None else None,  # type: ignore[arg-type]
        points=tuple(tuple(p) for p in data.get("points", ())),  # type: ignore[misc]
        point_labels=tuple(data.get("point_labels", ())),
        instance_id=data.get("instance_id"),
        class_name=data.get("class_name"),
    )


def frame_prompts(
    frame: cityscapes.Frame,
    instances: list[cityscapes.Instance],
    source: str,
    size: tuple[int, int],
    file_prompts: dict[str, list[Prompt]] | None = None,
    min_area: int = 0,
) -> list[Prompt]:
    """The prompts of one frame for a prompt source.

    Args:
        source: ``gt-instances`` (every instance box above ``min_area``), ``largest`` (the
            seed's main object), ``auto`` (no prompts: automatic masks) or a prompts-file path,
            whose parsed content is ``file_prompts``.
        size: the frame's ``(height, width)``; prompts from a file are validated against it
            (boxes sticking out are clipped; see :func:`segstyle_core.prompts.validate_prompt`).

    Raises:
        InputError: a file prompt does not fit the image (names the file, image and entry).
    """
    if source == "auto":
        return []
    if source in ("gt-instances", "largest"):
        mode = "all" if source == "gt-instances" else "largest"
        return prompts_from_instances(instances, mode=mode, min_area=min_area)
    if file_prompts is None:
        raise InputError(f"{source}: prompt source is neither {PROMPT_SOURCES} nor a prompts file")
    height, width = size
    return [
        validate_prompt(prompt, width, height, f"{source}: {frame.image_id} prompt {index}")
        for index, prompt in enumerate(file_prompts.get(frame.image_id, []))
    ]


def save_masks(path: str | os.PathLike[str], predictions: list[MaskPrediction]) -> Path:
    """Store masks as one compressed ``.npz``: ``masks`` ``N×H×W bool``, ``scores``, ``notes``."""
    masks = np.stack([p.mask for p in predictions]) if predictions else np.zeros((0, 0, 0), bool)
    scores = np.array([p.score for p in predictions], dtype=np.float64)
    notes = np.array([";".join(p.notes) for p in predictions], dtype=str)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, masks=masks, scores=scores, notes=notes)

    return atomic_write_with(path, write)


def load_masks(path: str | os.PathLike[str]) -> list[MaskPrediction]:
    """Inverse of :func:`save_masks`."""
    with np.load(path) as data:
        return [
            MaskPrediction(mask=m, score=float(s), notes=tuple(n.split(";")) if n else ())
            for m, s, n in zip(data["masks"], data["scores"], data["notes"], strict=True)
        ]


def union_mask(predictions: list[MaskPrediction], shape: tuple[int, int]) -> np.ndarray:
    """Union of the predicted masks as ``H×W bool`` (all False when there are none)."""
    out = np.zeros(shape, dtype=bool)
    for prediction in predictions:
        out |= prediction.mask
    return out


def match_auto_masks(
    predictions: list[MaskPrediction], instances: list[cityscapes.Instance]
) -> list[tuple[cityscapes.Instance, MaskPrediction]]:
    """For each GT instance, the automatic mask with the highest IoU against it.

    An oracle matching, used to score automatic mode against GT: it tells how good the
    best available automatic mask is, not whether a user would pick it.
    """
    if not predictions:
        return []
    return [
        (instance, max(predictions, key=lambda p: score_masks(p.mask, instance.mask).iou))
        for instance in instances
    ]


def prompt_scores(
    predictions: list[MaskPrediction],
    prompts: list[Prompt],
    class_mask: np.ndarray,
    instances: list[cityscapes.Instance],
) -> list[dict[str, Any]]:
    """One score dict per prompt, keyed by :data:`segstyle_core.results.SCHEMA` column names.

    ``iou``/``dice``/``precision``/``recall`` compare with the whole class; the ``*_instance``
    columns with the prompt's own GT instance (``None`` when the prompt has none).

    Args:
        predictions: masks in prompt order, each ``H×W bool``.
        class_mask: binarized ground truth ``H×W bool`` of the run's classes.
    """
    by_id = {inst.instance_id: inst for inst in instances}
    rows = []
    for prediction, prompt in zip(predictions, prompts, strict=True):
        instance = by_id.get(prompt.instance_id) if prompt.instance_id is not None else None
        scores = score_instance_aware(prediction.mask, instance, class_mask)
        rows.append(
            {
                "iou": scores["iou_class"],
                "dice": scores["dice_class"],
                "precision": scores["precision_class"],
                "recall": scores["recall_class"],
                "gt_area": scores["class_area"],
                "pred_area": scores["pred_area"],
                "iou_instance": scores["iou_instance"],
                "dice_instance": scores["dice_instance"],
                "precision_instance": scores["precision_instance"],
                "recall_instance": scores["recall_instance"],
                "instance_area": scores["instance_area"],
                "mask_score": prediction.score,
                "segment_notes": ";".join(prediction.notes),
            }
        )
    return rows


def check_run_inputs(
    dataset: str | None,
    classes: list[str],
    prompts: str,
    segmenter: dict[str, Any],
    stylizer: dict[str, Any] | None,
    style: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Fail fast, before any image, on what would fail every image; return backend identities.

    Checks the dataset root, the class names, the prompts file, the checkpoints (present and
    matching their checksums) and the style image. Returns the segmenter's and stylizer's
    ``name``/``variant``/``weights_sha256``.

    Raises:
        SegstyleError: the first problem found, as one line naming the file and the fix.
    """
    from segstyle_core.images import read_rgb
    from segstyle_core.prompts import load_prompts_file
    from segstyle_core.segment import segmenter_identity
    from segstyle_core.stylize import min_style_side, stylizer_identity

    cityscapes.resolve_root(dataset)
    cityscapes.class_ids(classes)
    if prompts not in PROMPT_SOURCES:
        load_prompts_file(prompts)
    seg_identity = segmenter_identity(segmenter)
    style_identity = stylizer_identity(stylizer) if stylizer else None
    if style is not None and stylizer is not None:
        height, width = read_rgb(style).shape[:2]
        if min(height, width) < min_style_side(stylizer):
            raise InputError(
                f"{style}: style image is {width}x{height} px, under the {stylizer['backend']} "
                f"stylizer's minimum of {min_style_side(stylizer)} px a side; use a larger image"
            )
    return seg_identity, style_identity
