"""Prompts made from ground truth: one box per instance, jittered boxes, a frame's prompts.

A dataset run prompts each frame from one of :data:`PROMPT_SOURCES` or from a prompts file:
:func:`prompts_from_instances` turns ground-truth instances into box prompts (all of them, or
the largest), :func:`jitter_boxes` expands and shifts boxes to imitate a less careful user, and
:func:`frame_prompts` picks a frame's prompts for the run's source and adjusts their boxes with
a per-frame seed (:func:`frame_seed`). Boxes are XYXY pixels with an exclusive maximum, like
``Instance.box``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal

import numpy as np

from segstyle_core.errors import ConfigError, InputError
from segstyle_core.prompts.validation import as_box, check_structure, clip_box, validate_prompt
from segstyle_core.segment.base import Prompt

if TYPE_CHECKING:
    from segstyle_core.cityscapes import Frame, Instance

#: Instances smaller than this many pixels get no prompt by default.
DEFAULT_MIN_AREA = 100

#: Prompt sources a dataset run accepts besides a prompts-file path.
PROMPT_SOURCES = ("gt-instances", "largest", "auto")


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
            box=as_box(instance.box),
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
        check_structure(prompt, source)
        x0, y0, x1, y1 = clip_box(prompt.box, width, height, source)
        dx = expand_px + expand_pct / 100.0 * (x1 - x0)
        dy = expand_px + expand_pct / 100.0 * (y1 - y0)
        base = np.clip(np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy]), 0, limits)
        moved = np.clip(base + rng.integers(-jitter_px, jitter_px + 1, size=4), 0, limits)
        for axis in (0, 1):
            if moved[axis + 2] - moved[axis] < 1:
                moved[[axis, axis + 2]] = base[[axis, axis + 2]]
        jittered.append(replace(prompt, box=as_box(moved)))
    return jittered


def frame_seed(seed: int, image_id: str) -> int:
    """The box-jitter seed of one frame of a run seeded with ``seed``: the first 8 bytes of
    the SHA-256 of ``"{seed}:{image_id}"`` as an unsigned integer, so every frame draws its
    own offsets and a rerun draws the same ones."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def frame_prompts(
    frame: Frame,
    instances: list[Instance],
    source: str,
    size: tuple[int, int],
    file_prompts: dict[str, list[Prompt]] | None = None,
    min_area: int = 0,
    expand_px: int = 0,
    jitter_px: int = 0,
    seed: int = 0,
) -> list[Prompt]:
    """The prompts of one frame for a prompt source, their boxes expanded and jittered.

    Args:
        source: ``gt-instances`` (every instance box above ``min_area``), ``largest`` (the
            seed's main object), ``auto`` (no prompts: automatic masks) or a prompts-file path,
            whose parsed content is ``file_prompts``.
        size: the frame's ``(height, width)``; prompts from a file are validated against it
            (boxes sticking out are clipped; see :func:`validate_prompt`).
        expand_px / jitter_px: see :func:`jitter_boxes`; the jitter is drawn with
            ``frame_seed(seed, frame.image_id)``. Points never move.

    Raises:
        InputError: a file prompt does not fit the image (names the file, image and entry).
    """
    if source == "auto":
        return []
    height, width = size
    if source in ("gt-instances", "largest"):
        mode: Literal["all", "largest"] = "all" if source == "gt-instances" else "largest"
        prompts = prompts_from_instances(instances, mode=mode, min_area=min_area)
    elif file_prompts is None:
        raise InputError(f"{source}: prompt source is neither {PROMPT_SOURCES} nor a prompts file")
    else:
        prompts = [
            validate_prompt(prompt, width, height, f"{source}: {frame.image_id} prompt {index}")
            for index, prompt in enumerate(file_prompts.get(frame.image_id, []))
        ]
    return jitter_boxes(
        prompts,
        width,
        height,
        expand_px,
        jitter_px=jitter_px,
        seed=frame_seed(seed, frame.image_id),
    )
