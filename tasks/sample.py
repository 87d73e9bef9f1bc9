"""Task: sample the frames of a city that have fine annotations."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from segstyle_core import cityscapes
from segstyle_core.pipeline import frame_to_dict


@task(name="sample-city", task_run_name="sample-{split}-{city}", retries=2, retry_delay_seconds=1)
def sample_city(
    dataset: str | None, split: str, city: str | None, seed: int, limit: int | None
) -> dict[str, Any]:
    """Sample a city (named, or random with ``seed``); return its frames and skipped files."""
    sample = cityscapes.sample_city(dataset, split=split, city=city, seed=seed, limit=limit)
    logger = get_run_logger()
    logger.info("city %s: %d frames with fine annotations", sample.city, len(sample.frames))
    for path, reason in sample.skipped:
        logger.warning("skipped %s: %s", path, reason)
    return {
        "city": sample.city,
        "split": sample.split,
        "frames": [frame_to_dict(f) for f in sample.frames],
        "skipped": [list(item) for item in sample.skipped],
    }
