"""One photo, no dataset: its prompts from the command line, and its stages run in-process
(the ``stylize_image`` flow's graph and cache, without waiting for a Prefect server)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segstyle_core.config import CompositeConfig, PhotoPrompts
from segstyle_core.errors import InputError
from segstyle_core.images import check_output_path, read_rgb
from segstyle_core.paint import region_styles
from segstyle_core.pipeline import InProcess, photo_stages
from segstyle_core.preflight import check_devices, check_style
from segstyle_core.prompts.from_gt import jitter_boxes
from segstyle_core.prompts.validation import parse_box, parse_point, validate_prompt
from segstyle_core.segment import SegmenterConfig
from segstyle_core.segment.base import Prompt
from segstyle_core.stages.composite import CompositeRecord
from segstyle_core.stylize import StylizerConfig


def photo_prompts(image_path: str, given: PhotoPrompts) -> list[Prompt]:
    """Prompts of ``given``'s strings, validated against the image's displayed size: a prompt per
    box, points joining a single box or else forming one more; boxes then grown and jittered
    (InputError: no prompt, or one outside the image)."""
    height, width = read_rgb(image_path).shape[:2]
    points = [parse_point(p) for p in given.points]
    prompts = [Prompt(box=parse_box(b)) for b in given.boxes]
    if points:
        box = prompts.pop().box if len(prompts) == 1 else None
        labels = tuple(label for _, _, label in points)
        prompts.append(Prompt(box, tuple((x, y) for x, y, _ in points), point_labels=labels))
    if not prompts:
        raise InputError(f"{image_path}: no prompt given; add a box (x0,y0,x1,y1) or a point (x,y)")
    validated = [
        validate_prompt(p, width, height, f"{image_path} prompt {i}") for i, p in enumerate(prompts)
    ]
    expand, jitter = given.box_expand_px, given.box_jitter_px
    return jitter_boxes(validated, width, height, expand, jitter_px=jitter, seed=given.seed)


@dataclass(frozen=True)
class PhotoJob:
    """One photo's checked work: its prompts, the style of each and the output file."""

    prompts: list[Prompt]
    styles: list[str]
    output: Path


def check_photo_job(
    image_path: str,
    output: str,
    given: PhotoPrompts,
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig,
    settings: CompositeConfig,
) -> PhotoJob:
    """Check the prompts, each region's style, the output path, the devices, the checkpoints
    and the style images before any work (SegstyleError: the first problem, naming its file or
    setting)."""
    prompts = photo_prompts(image_path, given)
    styles = region_styles(given, len(prompts), stylizer, settings.mode)
    target = check_output_path(output, [image_path, *styles])
    check_devices(segmenter=segmenter, stylizer=stylizer)
    segmenter.identity()
    stylizer.identity()
    check_style(stylizer, styles)
    return PhotoJob(prompts, styles, target)


def stylize_photo(
    image_path: str,
    prompts: list[Prompt],
    styles: list[str],
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig,
    settings: CompositeConfig,
    cache_dir: str,
) -> CompositeRecord:
    """Run the photo's stages in this process, cached in ``cache_dir``: composite's record."""
    run = InProcess(Path(cache_dir))
    return photo_stages(run, image_path, prompts, styles, segmenter, stylizer, settings).result()
