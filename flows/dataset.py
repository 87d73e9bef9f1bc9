"""The dataset-wide flows ``segment_and_stylize`` and ``evaluate_segmentation``: each frame's
stages (:mod:`segstyle_core.pipeline`) as Prefect tasks. A failed image gets a ``failed`` row
and never stops the others; the run then ends Failed (its message: the count and first error).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import pandas as pd
from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from tqdm import tqdm

from segstyle.flows.artifacts import publish_artifacts
from segstyle.flows.cluster import computes_here, task_runner
from segstyle.flows.runs import (
    DATASET_TIMEOUT_S,
    STATE_MESSAGE_CHARS,
    run_namer,
    segstyle_flow,
    setting,
)
from segstyle.tasks.stage import PrefectRunner, publish, sample_city
from segstyle_core import results
from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    OutputConfig,
    PromptConfig,
    SegmenterConfig,
    StylizerConfig,
    city_part,
)
from segstyle_core.errors import SegstyleError, error_line, one_line
from segstyle_core.outputs import run_folder
from segstyle_core.pipeline import Handle, RunSettings, run_frames
from segstyle_core.preflight import check_run_inputs
from segstyle_core.report import write_report
from segstyle_core.rows import frame_rows, run_columns, style_columns
from segstyle_core.run_summary import short_error
from segstyle_core.stagecache import StageRecord

#: Threads, or the Dask cluster of ``SEGSTYLE_DASK_ADDRESS`` (the CLI picks its own).
DATASET_FLOW: dict[str, Any] = {"timeout_s": DATASET_TIMEOUT_S, "task_runner": task_runner()}
SEGMENTER = {"segmenter": SegmenterConfig().backend}


class RunFailed(SegstyleError):
    """Some images failed; their rows are in the Parquet file with their errors."""


def _cities(parameters: Mapping[str, Any]) -> str:
    return city_part(setting(parameters, "dataset", "city", DatasetSelection().city))


def _failed(error: SegstyleError, summary: str) -> State[str]:
    """A run's expected failure: ``summary`` (cut) for the UI, the whole error as its data."""
    return Failed(message=one_line(summary, STATE_MESSAGE_CHARS), data=error)


def _error_of(future: PrefectFuture[Any]) -> str | None:
    """The one-line error of a finished task future, or ``None`` when it completed."""
    future.wait()
    state = future.state
    if state.is_completed():
        return None
    exc = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return f"{state.name}: {state.message}".splitlines()[0]  # NotReady: an upstream failed


def _outcome(stages: Mapping[str, Handle[Any]]) -> tuple[dict[str, StageRecord], str | None]:
    """The records of a frame's completed stages, and ``"<stage>: <error>"`` of the first
    that did not complete (``None``: all did)."""
    futures = cast("Mapping[str, PrefectFuture[StageRecord]]", stages)  # PrefectRunner's
    errors = {name: _error_of(future) for name, future in futures.items()}
    first = next((f"{name}: {error}" for name, error in errors.items() if error), None)
    return {n: f.result() for n, f in futures.items() if errors[n] is None}, first


def run_dataset(
    outputs: OutputConfig,
    dataset: DatasetSelection,
    prompts: PromptConfig,
    segmenter: SegmenterConfig,
    styling: tuple[StylizerConfig, CompositeConfig] | None = None,
) -> State[str]:
    """Run the sample through the stages (no ``styling``: masks and metrics only) and write
    the Parquet: Completed with its path, or Failed (failed images, or a
    :class:`SegstyleError` before any image) with the error."""
    stylizer, composite = styling or (None, CompositeConfig())
    settings = RunSettings(
        dataset=dataset,
        prompts=prompts,
        segmenter=segmenter,
        stylizer=stylizer,
        composite=composite,
    )
    try:
        return _run_dataset(settings, outputs)
    except SegstyleError as error:
        get_run_logger().error("%s", error_line(error))
        return _failed(error, error_line(error))


def _run_dataset(settings: RunSettings, outputs: OutputConfig) -> State[str]:
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    dataset, stylizer = settings.dataset, settings.stylizer
    if dataset.generate_demo and dataset.root:
        from segstyle_core.demo.dataset import ensure_demo_dataset  # a fully cached run skips it

        ensure_demo_dataset(dataset.root)
    context = FlowRunContext.get()
    identities = check_run_inputs(
        dataset,
        settings.prompts,
        settings.segmenter,
        stylizer,
        outputs,
        settings.composite,
        devices_here=context is None or computes_here(context.task_runner),
    )
    out = Path(outputs.out)
    name = flow_run.get_name() or "local"
    flow_run_id = str(flow_run.get_id() or name)
    run_dir = str(run_folder(out, name, flow_run_id))
    config = {k: v and v.model_dump(mode="json") for k, v in vars(settings).items()}
    common = run_columns(
        run_name=name,
        flow_run_id=flow_run_id,
        dataset=dataset,
        config=config,
        segmenter=identities[0],
        stylizer=identities[1],
        mode=settings.composite.mode,
        started=started,
    )
    style_of = style_columns(stylizer) if stylizer is not None else None
    sample = sample_city(dataset)  # each row's city is its frame's (frame_rows)
    per_frame = run_frames(PrefectRunner(out / "cache"), sample.frames, settings)

    rows: list[dict[str, Any]] = []
    failed = []
    flow_name = flow_run.get_flow_name() or "segment_and_stylize"
    # Each image's rows go to disk as it finishes: a kill loses only the images in flight.
    with results.RunRows(
        out / "metrics", flow_name, flow_run_id, resume_key=common["config_sha256"]
    ) as durable:
        if durable.resumed:
            logger.info("took over the rows of killed run(s) %s", ", ".join(durable.resumed))
        frames = zip(sample.frames, per_frame, strict=True)
        progress = tqdm(frames, total=len(per_frame), desc="images", unit="img", disable=None)
        for frame, stages in progress:
            records, error = _outcome(stages)
            published = publish(frame.image_id, run_dir, records) if records else None
            if error:
                failed.append((frame.image_id, error))
                logger.error("%s failed: %s", frame.image_id, error)
            finished = {**common, "finished_at": dt.datetime.now(dt.UTC)}
            image_rows = frame_rows(finished, frame, records, error, published, style_of=style_of)
            durable.write_image(frame.image_id, image_rows)
            rows.extend(image_rows)
        parquet = durable.compact()
    metric = "iou" if settings.automatic else "iou_instance"
    title = f"segstyle {flow_name} · {name}"
    report = write_report(Path(run_dir), pd.DataFrame(rows), config, title, metric=metric)
    publish_artifacts(rows, str(parquet), name, report, out)
    logger.info("wrote %d rows for %d images to %s", len(rows), len(sample.frames), parquet)
    if not failed:
        return Completed(data=str(parquet))
    count = f"{len(failed)} of {len(sample.frames)} images failed"
    first = f"first: {failed[0][0]}: {short_error(failed[0][1])}"
    advice = f"rows with their errors are in {parquet}; fix the inputs and retry this flow run"
    return _failed(RunFailed(f"{count} ({first}); {advice}"), f"{count}; {first}")


STYLED_NAMER = run_namer(_cities, **SEGMENTER, stylizer=StylizerConfig().backend)


@segstyle_flow("segment_and_stylize", STYLED_NAMER, **DATASET_FLOW)
def segment_and_stylize(
    dataset: DatasetSelection = DatasetSelection(),
    prompts: PromptConfig = PromptConfig(),
    segmenter: SegmenterConfig = SegmenterConfig(),
    stylizer: StylizerConfig = StylizerConfig(),
    composite: CompositeConfig = CompositeConfig(),
    outputs: OutputConfig = OutputConfig(),
) -> State[str]:
    """Segment, stylize and composite every fine-annotated frame of the selected cities; score
    every mask. Its result is the run's Parquet file; defaults and descriptions of every
    setting are in :mod:`segstyle_core.config`.

    Args:
        dataset: which frames: root, cities, split, classes, ground truth, sample size, seed.
        prompts: where each frame's prompts come from (GT boxes, automatic, a file).
        segmenter: the segmentation backend (SAM needs its weights; GrabCut is offline).
        stylizer: the style-transfer backend, its settings and the style image.
        composite: object or background mode, soft edge, colour preservation, ROI.
        outputs: the output folder: cache, per-run pictures and report, Parquet metrics.
    """
    return run_dataset(outputs, dataset, prompts, segmenter, (stylizer, composite))


@segstyle_flow("evaluate_segmentation", run_namer(_cities, **SEGMENTER), **DATASET_FLOW)
def evaluate_segmentation(
    dataset: DatasetSelection = DatasetSelection(),
    prompts: PromptConfig = PromptConfig(),
    segmenter: SegmenterConfig = SegmenterConfig(),
    outputs: OutputConfig = OutputConfig(),
) -> State[str]:
    """Masks and metrics only, no styling. Its result is the run's Parquet file.

    Args:
        dataset: which frames: root, cities, split, classes, ground truth, sample size, seed.
        prompts: where each frame's prompts come from (GT boxes, automatic, a file).
        segmenter: the segmentation backend (SAM needs its weights; GrabCut is offline).
        outputs: the output folder: cache, per-run pictures and report, Parquet metrics.
    """
    return run_dataset(outputs, dataset, prompts, segmenter)
