"""Checking prompts against an image, and parsing boxes and points given as text: boxes cover
``x0 <= x < x1``, ``y0 <= y < y1`` pixels; points are ``(x, y)`` pixels labelled 1 or 0."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from segstyle_core.errors import InputError
from segstyle_core.segment.base import Prompt

#: ``(x0, y0, x1, y1)`` XYXY box in pixels, exclusive maximum.
Box = tuple[float, float, float, float]


def as_box(values: Iterable[float]) -> Box:
    """Four numbers ``x0, y0, x1, y1`` (pixels, any iterable) as a float :data:`Box` tuple.

    Raises:
        ValueError: there are not exactly four, or a string that is not a number.
        TypeError: a value that is neither a number nor a string.
    """
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def check_structure(prompt: Prompt, source: str) -> None:
    """Check what needs no image: not empty, finite numbers, one 0/1 label per point."""
    box = prompt.box
    if box is None and not prompt.points:
        raise InputError(f"{source}: prompt has neither a box nor points; give a box or points")
    if box is not None and (len(box) != 4 or not all(map(math.isfinite, box))):
        raise InputError(f"{source}: box {box} is not four finite numbers x0,y0,x1,y1")
    for point in prompt.points:
        if len(point) != 2 or not all(map(math.isfinite, point)):
            raise InputError(f"{source}: point {point} is not two finite numbers x,y")
    if len(prompt.point_labels) != len(prompt.points):
        labels = f"{len(prompt.points)} points but {len(prompt.point_labels)} labels"
        raise InputError(f"{source}: {labels}; give one label (1 or 0) per point")
    if any(label not in (0, 1) for label in prompt.point_labels):
        raise InputError(f"{source}: point labels {list(prompt.point_labels)} must each be 1 or 0")


def validate_prompt(prompt: Prompt, width: int, height: int, source: str) -> Prompt:
    """``prompt`` checked against a ``width``×``height`` image, a box sticking out clipped
    (InputError naming ``source``: malformed, a box off the image, a point outside it)."""
    check_structure(prompt, source)
    for x, y in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"{source}: point ({x:g}, {y:g}) is outside the {width}x{height} image; "
                f"use 0 <= x < {width} and 0 <= y < {height}"
            )
    box = prompt.box
    return prompt if box is None else replace(prompt, box=clip_box(box, width, height, source))


def clip_box(box: Box, width: int, height: int, source: str) -> Box:
    """``box`` clipped to a ``width``×``height`` image (InputError: inverted, empty, outside)."""
    x0, y0, x1, y1 = box
    shown = f"{source}: box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{shown} is inverted or empty; give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(f"{shown} lies outside the {width}x{height} image; use its coordinates")
    return as_box((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` (pixels, XYXY) as four floats (InputError if not four numbers)."""
    return as_box(_parse_numbers(text, "box", (4,), "x0,y0,x1,y1, e.g. 10,20,200,120"))


def parse_point(text: str) -> tuple[float, float, int]:
    """``"x,y"`` or ``"x,y,label"`` (label 1, the default, or 0) as ``(x, y, label)``."""
    form = "x,y or x,y,label with label 1 (foreground) or 0 (background), e.g. 120,80,1"
    values = _parse_numbers(text, "point", (2, 3), form)
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise InputError(f"point {text!r}: expected {form}")
    return values[0], values[1], int(label)


def _parse_numbers(text: str, what: str, counts: tuple[int, ...], form: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(map(math.isfinite, values)):
        raise InputError(f"{what} {text!r}: expected comma-separated numbers {form}")
    return values
