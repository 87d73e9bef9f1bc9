"""A frame's prompts: boxes (XYXY pixels) from GT instances or a file, grown and jittered."""

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
    """Box prompts of the instances of at least ``min_area`` pixels: ``all`` or the largest."""
    if mode not in ("all", "largest"):
        raise ConfigError(f"prompt mode {mode!r} is unknown; use 'all' or 'largest'")
    kept = [instance for instance in instances if instance.area >= min_area]
    if mode == "largest" and kept:
        kept = [max(kept, key=lambda instance: instance.area)]
    return [
        Prompt(box=as_box(i.box), instance_id=i.instance_id, class_name=i.class_name) for i in kept
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
    """Expand and randomly shift the boxes of ``prompts`` on a ``width``×``height`` image: each
    side out by ``expand_px`` plus ``expand_pct`` % of the box's side, then each coordinate by an
    integer uniform in ``[-jitter_px, jitter_px]`` (``default_rng(seed)``, in prompt order),
    clipped; an axis the jitter collapses below one pixel keeps its un-jittered coordinates.
    Points never move. ConfigError: a negative option; InputError: a box off the image."""
    options = {"expand_px": expand_px, "expand_pct": expand_pct, "jitter_px": jitter_px}
    for option, value in options.items():
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
        box = np.array(clip_box(prompt.box, width, height, source))
        grow = expand_px + expand_pct / 100.0 * (box[2:] - box[:2])
        base = np.clip(box + np.concatenate([-grow, grow]), 0, limits)
        moved = np.clip(base + rng.integers(-jitter_px, jitter_px + 1, size=4), 0, limits)
        collapsed = np.tile(moved[2:] - moved[:2] < 1, 2)  # an axis under one pixel: un-jittered
        moved[collapsed] = base[collapsed]
        jittered.append(replace(prompt, box=as_box(moved)))
    return jittered


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
    """One frame's prompts for ``source``: ``gt-instances``, ``largest``, ``auto`` (none) or a
    prompts file parsed as ``file_prompts``, validated against ``size`` ``(height, width)``
    (InputError naming the file, image and entry). Boxes are jittered with the seed of the
    first 8 bytes (big-endian) of SHA-256(``"{seed}:{image_id}"``)."""
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
    digest = hashlib.sha256(f"{seed}:{frame.image_id}".encode()).digest()
    frame_seed = int.from_bytes(digest[:8], "big")
    return jitter_boxes(prompts, width, height, expand_px, jitter_px=jitter_px, seed=frame_seed)
