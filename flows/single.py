"""The ``stylize_image`` flow: one photo's stage graph (:func:`segstyle_core.pipeline.photo_stages`)
as Prefect tasks, for deployments and the UI; ``segstyle stylize`` runs it without Prefect."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from segstyle.flows.runs import PHOTO_TIMEOUT_S, run_namer, segstyle_flow
from segstyle.tasks.stage import PrefectRunner
from segstyle_core.config import (
    CompositeConfig,
    OutputConfig,
    PhotoPrompts,
    SegmenterConfig,
    StylizerConfig,
)
from segstyle_core.images import read_rgb, write_image
from segstyle_core.photo import check_photo_job
from segstyle_core.pipeline import photo_stages

BACKENDS = {"segmenter": SegmenterConfig().backend, "stylizer": StylizerConfig().backend}
NAMER = run_namer(lambda parameters: Path(parameters["image"]).stem, **BACKENDS)


@segstyle_flow("stylize_image", NAMER, PHOTO_TIMEOUT_S)
def stylize_image(
    image: str,
    output: str,
    prompts: PhotoPrompts = PhotoPrompts(),
    segmenter: SegmenterConfig = SegmenterConfig(),
    stylizer: StylizerConfig = StylizerConfig(),
    composite: CompositeConfig = CompositeConfig(),
    outputs: OutputConfig = OutputConfig(),
) -> str:
    """Segment the prompted object(s) of ``image``, stylize, composite; write ``output``.

    Args:
        image: the photo (PNG, JPEG, ...; its EXIF orientation is applied).
        output: the result; its format follows its suffix (.png, .jpg, .jpeg, .webp).
        prompts: boxes and points on the photo, in displayed pixel coordinates, and a style
            per box (empty: the stylizer's style for every region).
        segmenter: the segmentation backend (SAM needs its weights; GrabCut is offline).
        stylizer: the style-transfer backend and the style image.
        composite: object or background mode, soft edge, colour preservation, ROI.
        outputs: the output folder holding the cache.
    """
    job = check_photo_job(image, output, prompts, segmenter, stylizer, composite)
    run = PrefectRunner(Path(outputs.out) / "cache")
    record = photo_stages(run, image, job.prompts, job.styles, segmenter, stylizer, composite)
    target = write_image(job.output, read_rgb(record.result().path("composite")))
    get_run_logger().info("wrote %s", target)
    return str(target)
