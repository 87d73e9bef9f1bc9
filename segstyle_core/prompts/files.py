"""Prompt files (JSON or CSV) read into ``{image_id: [Prompt, ...]}``: boxes XYXY pixels
(exclusive maximum), points ``(x, y)`` pixels with label 1 (foreground, the default) or 0.

JSON: an object keyed by image id, each value a non-empty list of prompts (no other keys)::

    {"aachen_000000_000019": [
        {"box": [10, 20, 200, 120]}, {"points": [[50, 60], [80, 90]], "labels": [1, 0]},
        {"box": [300, 40, 380, 100], "points": [[340, 70]]}]}

CSV: a header, then one row per box and/or point: ``image_id``, ``x0,y0,x1,y1`` and/or ``px,py``,
optional ``label`` and ``prompt``. Rows of one image sharing a non-empty ``prompt`` form one
prompt (at most one box); every other row is its own::

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
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from segstyle_core.errors import InputError
from segstyle_core.prompts.validation import as_box, check_structure
from segstyle_core.segment.base import Prompt

_JSON_KEYS = ("box", "points", "labels")
_BOX_COLUMNS = ("x0", "y0", "x1", "y1")
_POINT_COLUMNS = ("px", "py")
_CSV_COLUMNS = ("image_id", "prompt", *_BOX_COLUMNS, *_POINT_COLUMNS, "label")


def load_prompts_file(path: str | os.PathLike[str]) -> dict[str, list[Prompt]]:
    """``{image_id: [Prompt, ...]}`` in file order from a ``.json`` or ``.csv`` prompts file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such prompts file; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets' UTF-8 CSV starts with a BOM
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc}); save the file as UTF-8") from exc
    if not text.strip():
        raise InputError(f"{path}: prompts file is empty; add prompts (JSON or CSV format)")
    parse = {".json": _parse_json, ".csv": _parse_csv}.get(path.suffix.lower())
    if parse is None:
        raise InputError(f"{path}: unknown prompts file type {path.suffix!r}; use a .json or .csv")
    prompts = parse(text, path)
    if not prompts:
        raise InputError(f"{path}: no prompts found; add at least one image with prompts")
    return prompts


def _json_numbers(value: Any, count: int, where: str, what: str) -> tuple[float, ...]:
    numbers = isinstance(value, list) and all(type(v) in (int, float) for v in value)
    if not numbers or len(value) != count:
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
    box = as_box(_json_numbers(entry["box"], 4, where, "box")) if "box" in entry else None
    raw_points = entry.get("points", [])
    if not isinstance(raw_points, list):
        raise InputError(f"{where}: points must be a list of [x, y] pairs, got {raw_points!r}")
    pairs = [_json_numbers(point, 2, where, "each point") for point in raw_points]
    points = tuple((x, y) for x, y in pairs)
    labels = entry.get("labels", [1] * len(points))
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise InputError(f"{where}: labels must be a list of 0/1 integers, got {labels!r}")
    prompt = Prompt(box=box, points=points, point_labels=tuple(labels))
    check_structure(prompt, where)
    return prompt


#: Digits a JSON integer may have: a pixel coordinate or label never needs more.
MAX_INT_DIGITS = 9


def _strict_json(text: str, path: Path) -> Any:
    """``json.loads`` refusing repeated keys, over-long integers and too deep nesting."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise InputError(f"{path}: key {key!r} appears twice in one object; merge them")
            seen[key] = value
        return seen

    def bounded_int(digits: str) -> int:
        count = len(digits.lstrip("-"))
        if count > MAX_INT_DIGITS:
            raise InputError(f"{path}: integer {digits[:12]}… has {count} digits; use pixels")
        return int(digits)

    try:
        return json.loads(text, object_pairs_hook=unique_keys, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc}); fix the syntax") from exc
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply; prompts need 4 levels") from None


def _parse_json(text: str, path: Path) -> dict[str, list[Prompt]]:
    data = _strict_json(text, path)
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
        raise InputError(f"{where}: {','.join(raw)} are not all numbers; fix the row") from exc


def _csv_row(row: dict[str, str], draft: Prompt, where: str, first: str) -> Prompt:
    """``draft`` (the prompt begun at ``first``) with the row's box and/or point added."""
    box = _csv_values(row, _BOX_COLUMNS, where)
    point = _csv_values(row, _POINT_COLUMNS, where)
    label_text = (row.get("label") or "").strip()
    if box is None and point is None:
        raise InputError(f"{where}: row has neither a box (x0,y0,x1,y1) nor a point (px,py)")
    if box is not None and draft.box is not None:
        raise InputError(f"{where}: second box for prompt {first}; give each box its own prompt")
    draft = draft if box is None else replace(draft, box=as_box(box))
    if point is None:
        if label_text:
            raise InputError(f"{where}: label without a point; fill px,py or clear the label")
        return draft
    if label_text not in ("", "0", "1"):
        raise InputError(f"{where}: label {label_text!r} must be 1 (foreground) or 0 (background)")
    labels = (*draft.point_labels, int(label_text or 1))
    return replace(draft, points=(*draft.points, (point[0], point[1])), point_labels=labels)


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
    drafts: dict[tuple[str, str], tuple[str, Prompt]] = {}
    for row in reader:
        where = f"{path}: line {reader.line_num}"
        if None in row:
            raise InputError(f"{where}: more values than header columns; fix the row")
        image_id = (row["image_id"] or "").strip()
        if not image_id:
            raise InputError(f"{where}: image_id is empty; fill it in")
        group = (row.get("prompt") or "").strip()
        key = (image_id, f"prompt:{group}" if group else f"line:{reader.line_num}")
        first, draft = drafts.get(key, (where, Prompt()))
        drafts[key] = first, _csv_row(row, draft, where, first)
    prompts: dict[str, list[Prompt]] = {}
    for (image_id, _), (first, prompt) in drafts.items():
        check_structure(prompt, first)
        prompts.setdefault(image_id, []).append(prompt)
    return prompts
