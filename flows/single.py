"""The ``stylize_image`` flow: one photo, prompted by boxes and/or points, no ground truth."""

from __future__ import annotations

import shutil
from pathlib import Path

from prefect import flow, get_run_logger

from flows.params import backend_specs, style_or_default
from segstyle_core.errors import InputError
from segstyle_core.fileio import atomic_write_with
from segstyle_core.images import read_rgb
from segstyle_core.prompts import parse_box, parse_point, validate_prompt
from segstyle_core.segment.base import Prompt
from tasks.composite import composite
from tasks.segment import segment
from tasks.stylize import stylize


def cli_prompts(image_path: str, boxes: list[str], points: list[str]) -> list[Prompt]:
    """Prompts from CLI strings, validated against the image.

    Each box is one prompt. Points join the box when exactly one box is given (SAM's box +
    points prompt); otherwise all points form one more prompt of their own.
    """
    height, width = read_rgb(image_path).shape[:2]
    parsed_points = [parse_point(p) for p in points]
    coords = tuple((x, y) for x, y, _ in parsed_points)
    labels = tuple(label for _, _, label in parsed_points)
    prompts = [Prompt(box=parse_box(b)) for b in boxes]
    if len(prompts) == 1 and coords:
        prompts = [Prompt(box=prompts[0].box, points=coords, point_labels=labels)]
    elif coords:
        prompts.append(Prompt(points=coords, point_labels=labels))
    if not prompts:
        raise InputError(f"{image_path}: no prompt given; add --box x0,y0,x1,y1 or --point x,y")
    return [
        validate_prompt(p, width, height, f"{image_path} prompt {i}") for i, p in enumerate(prompts)
    ]


@flow(name="stylize_image")
def stylize_image(
    image: str,
    output: str,
    boxes: list[str] | None = None,
    points: list[str] | None = None,
    style: str | None = None,
    segmenter: str = "sam",
    sam_variant: str = "vit_l",
    stylizer: str = "gatys",
    mode: str = "object",
    nst: dict | None = None,
    strength: float = 1.0,
    feather: float = 0.0,
    preserve_color: str | None = None,
    roi_margin: int | None = None,
    device: str = "auto",
    weights_dir: str | None = None,
    out: str = "artifacts",
) -> str:
    """Segment the prompted object(s) of ``image``, stylize, composite; write ``output`` (PNG)."""
    prompts = cli_prompts(image, boxes or [], points or [])
    cache_dir = str(Path(out) / "cache")
    image_id = Path(image).stem
    seg_spec, sty_spec = backend_specs(
        segmenter, sam_variant, stylizer, nst, strength, device, weights_dir
    )
    seg = segment.submit(
        image_id, image, [p.as_dict() for p in prompts], False, seg_spec, cache_dir
    )
    sty = stylize.submit(
        image_id,
        image,
        style_or_default(style),
        sty_spec,
        cache_dir,
        segment_record=seg if roi_margin is not None else None,
        roi_margin_px=roi_margin,
    )
    record = composite(image_id, image, sty, seg, mode, feather, preserve_color, cache_dir)
    target = atomic_write_with(
        output, lambda tmp: shutil.copyfile(record["outputs"]["composite"], tmp)
    )
    get_run_logger().info("wrote %s", target)
    return str(target)
