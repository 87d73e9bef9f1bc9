"""One photo, no dataset: its prompts from the command line, and the three stages run directly.

:func:`stylize_photo` runs the same stages as the ``stylize_image`` flow (segment, stylize,
composite; :mod:`segstyle_core.stages`) in this process, with the same cache, so one photo
never waits for a Prefect server.
"""

from __future__ import annotations

from pathlib import Path

from segstyle_core.config import CompositeConfig, PhotoPrompts
from segstyle_core.errors import InputError
from segstyle_core.images import read_rgb
from segstyle_core.prompts.validation import parse_box, parse_point, validate_prompt
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import Prompt
from segstyle_core.stages.composite import CompositeRecord, composite
from segstyle_core.stages.segment import segment
from segstyle_core.stages.stylize import stylize
from segstyle_core.stylize import StylizerConfig


def photo_prompts(image_path: str, given: PhotoPrompts) -> list[Prompt]:
    """Prompts from command-line strings, validated against the image's displayed size.

    Each box is one prompt. Points join the box when exactly one box is given (SAM's box +
    points prompt); otherwise all points form one more prompt of their own.

    Raises:
        InputError: no prompt, or a prompt that does not fit the image (one line).
    """
    height, width = read_rgb(image_path).shape[:2]
    parsed_points = [parse_point(p) for p in given.points]
    coords = tuple((x, y) for x, y, _ in parsed_points)
    labels = tuple(label for _, _, label in parsed_points)
    prompts = [Prompt(box=parse_box(b)) for b in given.boxes]
    if len(prompts) == 1 and coords:
        prompts = [Prompt(box=prompts[0].box, points=coords, point_labels=labels)]
    elif coords:
        prompts.append(Prompt(points=coords, point_labels=labels))
    if not prompts:
        raise InputError(f"{image_path}: no prompt given; add --box x0,y0,x1,y1 or --point x,y")
    return [
        validate_prompt(p, width, height, f"{image_path} prompt {i}") for i, p in enumerate(prompts)
    ]


def stylize_photo(
    image_path: str,
    prompts: list[Prompt],
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig,
    settings: CompositeConfig,
    cache_dir: str,
) -> CompositeRecord:
    """Segment the prompted regions of one photo, stylize it, composite; return the record of
    ``composite.png`` (the photo's size, ``H×W×3`` RGB)."""
    image_id = Path(image_path).stem
    masks = segment.run(
        image_id, image_path, [p.as_dict() for p in prompts], False, segmenter, cache_dir
    )
    painted = stylize.run(
        image_id,
        image_path,
        stylizer.style_path(),
        stylizer,
        cache_dir,
        roi=masks if settings.roi_margin_px is not None else None,
        roi_margin_px=settings.roi_margin_px,
        roi_mode=settings.mode,
    )
    return composite.run(image_id, image_path, painted, masks, settings, cache_dir)
