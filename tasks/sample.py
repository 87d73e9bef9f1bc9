"""Task: sample the frames of a city (or several, or a whole split) that have fine annotations."""

from __future__ import annotations

from prefect import get_run_logger, task

from segstyle_core import cityscapes
from segstyle_core.config import DatasetSelection


@task(
    name="sample-city",
    task_run_name="sample-{dataset.split}-{dataset.city}",
    retries=2,
    retry_delay_seconds=1,
    persist_result=False,
)
def sample_city(dataset: DatasetSelection) -> cityscapes.Sample:
    """Sample the selected cities; log their frames, the count of images without fine
    annotations, and a warning per malformed file."""
    sample = dataset.sample()
    logger = get_run_logger()
    noun, cities = "city" if len(sample.cities) == 1 else "cities", ", ".join(sample.cities)
    logger.info("%s %s: %d frames with fine annotations", noun, cities, len(sample.frames))
    if sample.unannotated:
        logger.info("left out %d images without fine annotations", len(sample.unannotated))
    for path, reason in sample.skipped:
        if path not in sample.unannotated:
            logger.warning("skipped %s: %s", path, reason)
    return sample
