"""Prompt sources for segmentation runs: GT instances, prompt files, CLI values, jitter.

Boxes are ``(x0, y0, x1, y1)`` XYXY in original-image pixels with an exclusive maximum: a box
covers the pixels ``x0 <= x < x1``, ``y0 <= y < y1`` (the same convention as
``Instance.box``). Points are ``(x, y)`` pixel coordinates with label 1 (foreground) or
0 (background).

Prompt files
------------
JSON: an object keyed by image id, each value a non-empty list of prompts::

    {"aachen_000000_000019": [
        {"box": [10, 20, 200, 120]},
        {"points": [[50, 60], [80, 90]], "labels": [1, 0]},
        {"box": [300, 40, 380, 100], "points": [[340, 70]]}
    ]}

``labels`` defaults to all 1; no other keys are allowed.

CSV: a header row, then one row per box and/or point. Columns: ``image_id`` (required), the
box columns ``x0,y0,x1,y1`` and/or the point columns ``px,py`` with optional ``label``
(0 or 1, default 1), and optionally ``prompt``. A row fills the box columns, the point
columns or both, and leaves the others empty. Rows of one image that share a non-empty
``prompt`` value form one prompt (at most one box, any number of points); every other row is
a prompt of its own::

    image_id,prompt,x0,y0,x1,y1,px,py,label
    aachen_000000_000019,car,10,20,200,120,,,
    aachen_000000_000019,car,,,,,120,70,1
    aachen_000000_000019,car,,,,,30,25,0
    aachen_000000_000019,,300,40,380,100,,,
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.metrics import MaskScores, score_masks
from segstyle_core.segment.base import Prompt

if TYPE_CHECKING:
    from segstyle_core.cityscapes import Instance

#: Instances smaller than this many pixels get no prompt by default.
DEFAULT_MIN_AREA = 100

_JSON_KEYS = ("box", "points", "labels")
_BOX_COLUMNS = ("x0", "y0", "x1", "y1")
_POINT_COLUMNS = ("px", "py")
_CSV_COLUMNS = ("image_id", "prompt", *_BOX_COLUMNS, *_POINT_COLUMNS, "label")
_SCORE_KEYS = ("iou", "dice", "precision", "recall")

#: ``(x0, y0, x1, y1)`` XYXY box in pixels, exclusive maximum.
Box = tuple[float, float, float, float]


def _as_box(values: Iterable[float]) -> Box:
    """Four numbers as a :data:`Box` of floats."""
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def _check_structure(prompt: Prompt, source: str) -> None:
    """Checks that need no image size: finite numbers, label count and values, not empty."""
    if prompt.box is None and not prompt.points:
        raise InputError(f"{source}: prompt has neither a box nor points; give a box or points")
    if prompt.box is not None and (
        len(prompt.box) != 4 or not all(math.isfinite(v) for v in prompt.box)
    ):
        raise InputError(f"{source}: box {prompt.box} is not four finite numbers x0,y0,x1,y1")
    for point in prompt.points:
        if len(point) != 2 or not all(math.isfinite(v) for v in point):
            raise InputError(f"{source}: point {point} is not two finite numbers x,y")
    if len(prompt.point_labels) != len(prompt.points):
        raise InputError(
            f"{source}: {len(prompt.points)} points but {len(prompt.point_labels)} labels; "
            "give one label (1 = foreground, 0 = background) per point"
        )
    if any(label not in (0, 1) for label in prompt.point_labels):
        raise InputError(
            f"{source}: point labels {list(prompt.point_labels)} must each be 1 (foreground) "
            "or 0 (background)"
        )


def validate_prompt(prompt: Prompt, width: int, height: int, source: str) -> Prompt:
    """Check ``prompt`` against a ``width``×``height`` image and return it, box clipped.

    A box that overlaps the image but sticks out of it is clipped to the image (documented
    behaviour: the part outside holds no pixels to segment). A box that is inverted or empty
    (``x1 <= x0`` or ``y1 <= y0``) or lies entirely outside the image is an error, and so is
    any point outside the image (``0 <= x < width``, ``0 <= y < height``).

    Args:
        prompt: the prompt, in original-image pixels.
        width, height: the image size in pixels.
        source: where the prompt came from (file and entry, or CLI option), for messages.

    Raises:
        InputError: the prompt is malformed or does not fit the image (one line, names source).
    """
    _check_structure(prompt, source)
    for x, y in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"{source}: point ({x:g}, {y:g}) is outside the {width}x{height} image; "
                f"use 0 <= x < {width} and 0 <= y < {height}"
            )
    if prompt.box is None:
        return prompt
    return replace(prompt, box=_clip_box(prompt.box, width, height, source))


def _clip_box(box: Box, width: int, height: int, source: str) -> Box:
    """``box`` clipped to the image; InputError if it is inverted, empty or wholly outside."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise InputError(
            f"{source}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted or empty; "
            "give it as x0,y0,x1,y1 with x0 < x1 and y0 < y1"
        )
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(
            f"{source}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
            f"{width}x{height} image; use coordinates of this image"
        )
    return _as_box((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))


def validate_against_sizes(
    prompts_by_image: dict[str, list[Prompt]],
    sizes: dict[str, tuple[int, int]],
    source: str,
) -> dict[str, list[Prompt]]:
    """Validate every prompt against its image's ``(width, height)`` in ``sizes``.

    Returns the prompts with boxes clipped as :func:`validate_prompt` documents.

    Raises:
        InputError: an image id is not in ``sizes``, or a prompt does not fit its image.
    """
    unknown = sorted(set(prompts_by_image) - set(sizes))
    if unknown:
        shown = ", ".join(unknown[:3]) + (
            f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        )
        raise InputError(
            f"{source}: prompts for unknown image id(s) {shown}; use the ids of the images "
            "in this run (file name without _leftImg8bit.png)"
        )
    return {
        image_id: [
            validate_prompt(prompt, *sizes[image_id], f"{source}: {image_id!r}[{index}]")
            for index, prompt in enumerate(prompts)
        ]
        for image_id, prompts in prompts_by_image.items()
    }


def prompts_from_instances(
    instances: Sequence[Instance],
    mode: Literal["all", "largest"] = "all",
    min_area: int = DEFAULT_MIN_AREA,
) -> list[Prompt]:
    """Box prompts from ground-truth instances (already restricted to the chosen classes).

    Args:
        instances: GT instances; each ``box`` is XYXY with exclusive maximum.
        mode: ``"all"``: one prompt per instance of at least ``min_area`` pixels, in the given
            order; ``"largest"``: only the largest such instance (the "main object").
        min_area: smallest instance area in pixels that gets a prompt.

    Returns:
        Box prompts with ``instance_id`` and ``class_name`` filled (empty if none qualifies).

    Raises:
        ConfigError: unknown ``mode``.
    """
    if mode not in ("all", "largest"):
        raise ConfigError(f"prompt mode {mode!r} is unknown; use 'all' or 'largest'")
    kept = [instance for instance in instances if instance.area >= min_area]
    if mode == "largest" and kept:
        kept = [max(kept, key=lambda instance: instance.area)]
    return [
        Prompt(
            box=_as_box(instance.box),
            instance_id=instance.instance_id,
            class_name=instance.class_name,
        )
        for instance in kept
    ]


def jitter_boxes(
    prompts: Sequence[Prompt],
    width: int,
    height: int,
    expand_px: float = 0,
    expand_pct: float = 0.0,
    jitter_px: int = 0,
    seed: int = 0,
) -> list[Prompt]:
    """Expand and randomly shift the boxes of ``prompts`` on a ``width``×``height`` image.

    Each side of a box moves outward by ``expand_px`` plus ``expand_pct`` percent of the box's
    width (left/right sides) or height (top/bottom sides). Then each of the four coordinates
    moves by an integer drawn uniformly from ``[-jitter_px, jitter_px]``
    (``numpy.random.default_rng(seed)``, drawn in prompt order, so the result depends only on
    the inputs and ``seed``). The box is clipped to the image; if the jitter collapses an axis
    to less than one pixel, that axis keeps its un-jittered coordinates. Prompts without a box
    are returned unchanged; points are never moved.

    Raises:
        ConfigError: a negative ``expand_px``, ``expand_pct`` or ``jitter_px``.
        InputError: a box does not fit the image (see :func:`validate_prompt`).
    """
    for option, value in (
        ("expand_px", expand_px),
        ("expand_pct", expand_pct),
        ("jitter_px", jitter_px),
    ):
        if value < 0:
            raise ConfigError(f"{option}={value} is negative; use a value >= 0")
    rng = np.random.default_rng(seed)
    limits = np.array([width, height, width, height], dtype=np.float64)
    jittered = []
    for index, prompt in enumerate(prompts):
        if prompt.box is None:
            jittered.append(prompt)
            continue
        source = f"jitter_boxes prompt {index}"
        _check_structure(prompt, source)
        x0, y0, x1, y1 = _clip_box(prompt.box, width, height, source)
        dx = expand_px + expand_pct / 100.0 * (x1 - x0)
        dy = expand_px + expand_pct / 100.0 * (y1 - y0)
        base = np.clip(np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy]), 0, limits)
        moved = np.clip(base + rng.integers(-jitter_px, jitter_px + 1, size=4), 0, limits)
        for axis in (0, 1):
            if moved[axis + 2] - moved[axis] < 1:
                moved[[axis, axis + 2]] = base[[axis, axis + 2]]
        jittered.append(replace(prompt, box=_as_box(moved)))
    return jittered


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse a CLI box ``"x0,y0,x1,y1"`` (pixels, XYXY) into four floats.

    Raises:
        InputError: not four comma-separated finite numbers.
    """
    values = _parse_numbers(text, "box", "10,20,200,120")
    if len(values) != 4:
        raise InputError(
            f"box {text!r}: expected four comma-separated numbers x0,y0,x1,y1 (e.g. 10,20,200,120)"
        )
    return values[0], values[1], values[2], values[3]


def parse_point(text: str) -> tuple[float, float, int]:
    """Parse a CLI point ``"x,y"`` or ``"x,y,label"`` (label 1 = foreground, the default; 0 =
    background) into ``(x, y, label)``.

    Raises:
        InputError: not two or three comma-separated numbers, or a label other than 0 or 1.
    """
    values = _parse_numbers(text, "point", "120,80,1")
    if len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0.0, 1.0)):
        raise InputError(
            f"point {text!r}: expected x,y or x,y,label with label 1 (foreground) or "
            "0 (background), e.g. 120,80,1"
        )
    label = int(values[2]) if len(values) == 3 else 1
    return values[0], values[1], label


def _parse_numbers(text: str, what: str, example: str) -> list[float]:
    """Comma-separated finite numbers in ``text``; ``what``/``example`` go into the message."""
    message = f"{what} {text!r}: not comma-separated numbers; write e.g. {example}"
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise InputError(message) from exc
    if not all(math.isfinite(v) for v in values):
        raise InputError(message)
    return values


def load_prompts_file(path: str | os.PathLike[str]) -> dict[str, list[Prompt]]:
    """Read a ``.json`` or ``.csv`` prompts file (formats in this module's docstring).

    Only types and structure are checked here; check the prompts against the image sizes
    with :func:`validate_against_sizes`.

    Returns:
        ``{image_id: [Prompt, ...]}`` in file order.

    Raises:
        InputError: missing, empty or unreadable file, unknown extension, wrong types or
            missing keys (the message names the file, the entry and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such prompts file; check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from exc
    if not text.strip():
        raise InputError(f"{path}: prompts file is empty; add prompts (JSON or CSV format)")
    suffix = path.suffix.lower()
    if suffix == ".json":
        prompts = _parse_json(text, path)
    elif suffix == ".csv":
        prompts = _parse_csv(text, path)
    else:
        raise InputError(f"{path}: unknown prompts file type {suffix!r}; use a .json or .csv file")
    if not prompts:
        raise InputError(f"{path}: no prompts found; add at least one image with prompts")
    return prompts


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_numbers(value: Any, count: int, where: str, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != count or not all(map(_is_number, value)):
        raise InputError(f"{where}: {what} must be a list of {count} numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _json_prompt(entry: Any, where: str) -> Prompt:
    if not isinstance(entry, dict):
        raise InputError(
            f'{where}: a prompt must be an object like {{"box": [x0, y0, x1, y1]}}, got {entry!r}'
        )
    unknown = sorted(set(entry) - set(_JSON_KEYS))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; allowed keys are box, points, labels")
    box = _as_box(_json_numbers(entry["box"], 4, where, "box")) if "box" in entry else None
    raw_points = entry.get("points", [])
    if not isinstance(raw_points, list):
        raise InputError(f"{where}: points must be a list of [x, y] pairs, got {raw_points!r}")
    points = tuple(
        (pair[0], pair[1])
        for pair in (_json_numbers(point, 2, where, "each point") for point in raw_points)
    )
    labels = entry.get("labels", [1] * len(points))
    if not isinstance(labels, list) or not all(
        isinstance(label, int) and not isinstance(label, bool) for label in labels
    ):
        raise InputError(f"{where}: labels must be a list of 0/1 integers, got {labels!r}")
    prompt = Prompt(box=box, points=points, point_labels=tuple(labels))
    _check_structure(prompt, where)
    return prompt


def _parse_json(text: str, path: Path) -> dict[str, list[Prompt]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected an object keyed by image id, got a JSON {type(data).__name__}; "
            'write {"image_id": [{"box": [x0, y0, x1, y1]}, ...]}'
        )
    prompts = {}
    for image_id, entries in data.items():
        where = f"{path}: {image_id!r}"
        if not isinstance(entries, list) or not entries:
            raise InputError(
                f"{where}: expected a non-empty list of prompts, got {entries!r}; "
                "list the prompts or remove the image"
            )
        prompts[image_id] = [
            _json_prompt(entry, f"{where}[{index}]") for index, entry in enumerate(entries)
        ]
    return prompts


@dataclass
class _CsvPrompt:
    """A prompt being assembled from one or more CSV rows."""

    where: str
    box: Box | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def _csv_values(
    row: dict[str, str], columns: Sequence[str], where: str
) -> tuple[float, ...] | None:
    """The row's numbers in ``columns``, or ``None`` when all of them are empty."""
    raw = [(row.get(column) or "").strip() for column in columns]
    if not any(raw):
        return None
    if not all(raw):
        raise InputError(f"{where}: fill all of {','.join(columns)} or leave all of them empty")
    try:
        return tuple(float(value) for value in raw)
    except ValueError as exc:
        raise InputError(
            f"{where}: {','.join(raw)} are not all numbers ({exc}); fix the row"
        ) from exc


def _csv_row(row: dict[str, str], draft: _CsvPrompt, where: str) -> None:
    """Add one CSV row's box and/or point to ``draft``."""
    box = _csv_values(row, _BOX_COLUMNS, where)
    point = _csv_values(row, _POINT_COLUMNS, where)
    label_text = (row.get("label") or "").strip()
    if box is None and point is None:
        raise InputError(f"{where}: row has neither a box (x0,y0,x1,y1) nor a point (px,py)")
    if box is not None:
        if draft.box is not None:
            raise InputError(
                f"{where}: second box for prompt {draft.where}; give each box its own prompt"
            )
        draft.box = _as_box(box)
    if point is not None:
        if label_text not in ("", "0", "1"):
            raise InputError(
                f"{where}: label {label_text!r} must be 1 (foreground) or 0 (background)"
            )
        draft.points.append((point[0], point[1]))
        draft.labels.append(int(label_text or 1))
    elif label_text:
        raise InputError(f"{where}: label without a point; fill px,py or clear the label")


def _parse_csv(text: str, path: Path) -> dict[str, list[Prompt]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [column.strip() for column in reader.fieldnames or []]
    reader.fieldnames = columns
    has_box = all(column in columns for column in _BOX_COLUMNS)
    has_point = all(column in columns for column in _POINT_COLUMNS)
    if "image_id" not in columns or set(columns) - set(_CSV_COLUMNS) or not (has_box or has_point):
        raise InputError(
            f"{path}: CSV header is {','.join(columns)!r}; it needs image_id plus x0,y0,x1,y1 "
            "and/or px,py (optional: label, prompt)"
        )
    drafts: dict[tuple[str, str], _CsvPrompt] = {}
    for row in reader:
        where = f"{path}: line {reader.line_num}"
        if None in row:
            raise InputError(f"{where}: more values than header columns; fix the row")
        image_id = (row["image_id"] or "").strip()
        if not image_id:
            raise InputError(f"{where}: image_id is empty; fill it in")
        group = (row.get("prompt") or "").strip()
        key = (image_id, f"prompt:{group}" if group else f"line:{reader.line_num}")
        _csv_row(row, drafts.setdefault(key, _CsvPrompt(where=where)), where)
    prompts: dict[str, list[Prompt]] = {}
    for (image_id, _), draft in drafts.items():
        prompt = Prompt(box=draft.box, points=tuple(draft.points), point_labels=tuple(draft.labels))
        _check_structure(prompt, draft.where)
        prompts.setdefault(image_id, []).append(prompt)
    return prompts


def _named_scores(scores: MaskScores | None, reference: str) -> dict[str, float | int | None]:
    values: dict[str, float | int | None] = {
        f"{key}_{reference}": getattr(scores, key) if scores else None for key in _SCORE_KEYS
    }
    values[f"{reference}_area"] = scores.gt_area if scores else None
    return values


def score_instance_aware(
    mask: np.ndarray, instance: Instance | None, class_mask: np.ndarray
) -> dict[str, float | int | None]:
    """Score ``mask`` against the whole class mask and against the prompt's own instance.

    Class-level ground truth merges every object of the class (all cars), while a prompted
    segmenter isolates one; the instance scores show how well the one object was found.

    Args:
        mask: predicted ``H×W bool`` mask.
        instance: the GT instance the prompt came from, or ``None`` (user prompts).
        class_mask: binarized class ground truth, ``H×W bool``.

    Returns:
        ``pred_area``; ``iou_class``, ``dice_class``, ``precision_class``, ``recall_class``,
        ``class_area``; and the same five with ``instance`` (``None`` without an instance).
        Empty-mask conventions are those of :mod:`segstyle_core.metrics`.

    Raises:
        InputError: the masks' shapes differ.
    """
    instance_scores = score_masks(mask, instance.mask) if instance is not None else None
    return {
        "pred_area": int(np.count_nonzero(mask)),
        **_named_scores(score_masks(mask, class_mask), "class"),
        **_named_scores(instance_scores, "instance"),
    }
