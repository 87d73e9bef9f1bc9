"""Checking prompts against an image, and parsing prompts given on the command line.

Boxes are ``(x0, y0, x1, y1)`` XYXY in original-image pixels with an exclusive maximum: a box
covers the pixels ``x0 <= x < x1``, ``y0 <= y < y1`` (the same convention as
``Instance.box``). Points are ``(x, y)`` pixel coordinates with label 1 (foreground) or
0 (background). :func:`check_structure` checks what needs no image (finite numbers, one label
per point); :func:`validate_prompt` also checks the prompt against an image's size and clips a
box that sticks out; :func:`parse_box` and :func:`parse_point` read the CLI's ``--box`` and
``--point`` values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from segstyle_core.errors import InputError
from segstyle_core.segment.base import Prompt

#: ``(x0, y0, x1, y1)`` XYXY box in pixels, exclusive maximum.
Box = tuple[float, float, float, float]


def as_box(values: Iterable[float]) -> Box:
    """Four numbers ``x0, y0, x1, y1`` as a :data:`Box` of floats."""
    x0, y0, x1, y1 = (float(v) for v in values)
    return x0, y0, x1, y1


def check_structure(prompt: Prompt, source: str) -> None:
    """Checks that need no image size: finite numbers, label count and values, not empty.

    Raises:
        InputError: the prompt is malformed (one line, names ``source``).
    """
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
    check_structure(prompt, source)
    for x, y in prompt.points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(
                f"{source}: point ({x:g}, {y:g}) is outside the {width}x{height} image; "
                f"use 0 <= x < {width} and 0 <= y < {height}"
            )
    if prompt.box is None:
        return prompt
    return replace(prompt, box=clip_box(prompt.box, width, height, source))


def clip_box(box: Box, width: int, height: int, source: str) -> Box:
    """``box`` clipped to a ``width``×``height`` image.

    Raises:
        InputError: the box is inverted, empty or wholly outside the image (names ``source``).
    """
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
    return as_box((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))


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
