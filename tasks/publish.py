"""Task: copy an image's output pictures from the run's cache into the run directory."""

from __future__ import annotations

from prefect import task

from segstyle_core.outputs import publish_pictures

publish = task(
    name="publish",
    task_run_name="publish-{image_id}",
    retries=2,
    retry_delay_seconds=1,
    persist_result=False,
)(publish_pictures)
