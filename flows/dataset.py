"""The dataset-wide flows: ``segment_and_stylize`` and ``evaluate_segmentation``.

Per image: binarize GT and derive prompts -> segment -> metrics -> (stylize, once per distinct
style of its paint plan -> composite) -> figures -> publish. One image's failure never stops
the others: its row is written with status ``failed`` and its error, and the flow run ends
Failed so the Prefect UI offers Retry. A retry recomputes only what failed; every finished
stage comes back from the run's cache.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from tqdm import tqdm

from segstyle.flows.artifacts import publish_artifacts, short_error
from segstyle.flows.demo_dataset import ensure_demo_dataset
from segstyle.flows.rows import frame_rows, run_columns, style_columns, stylize_stage_names
from segstyle.tasks.device_slots import dask_annotations
from segstyle.tasks.publish import publish
from segstyle.tasks.sample import sample_city
from segstyle.tasks.stages import (
    binarize_gt,
    composite,
    figures,
    score_frame,
    segment,
    stylize,
)
from segstyle_core import results
from segstyle_core.cityscapes import Frame
from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    OutputConfig,
    PromptConfig,
    SegmenterConfig,
    StylizerConfig,
)
from segstyle_core.errors import SegstyleError
from segstyle_core.paint import plan_by_class
from segstyle_core.preflight import check_run_inputs
from segstyle_core.report import write_report
from segstyle_core.stagecache import StageRecord

#: Threads for the task runner: heavy stages still run one at a time per device (device slot).
DEFAULT_WORKERS = 4
#: The flows' task runner (Prefect gives each flow run its own copy).
TASK_RUNNER: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS)


class RunFailed(SegstyleError):
    """Some images failed; their rows are in the Parquet file with their errors."""


@dataclass
class FrameFutures:
    """One frame's stage futures, in pipeline order (absent: the stage did not run)."""

    frame: Frame
    stages: dict[str, PrefectFuture[Any]] = field(default_factory=dict)

    def first_error(self) -> str | None:
        """``"<stage>: <one-line error>"`` of the first stage that did not complete."""
        for name, future in self.stages.items():
            error = _error_of(future)
            if error is not None:
                return f"{name}: {error}"
        return None

    def records(self) -> dict[str, StageRecord]:
        """The records of the stages that completed."""
        return {n: f.result() for n, f in self.stages.items() if _error_of(f) is None}


def _error_of(future: PrefectFuture[Any]) -> str | None:
    """The one-line error of a finished task future, or ``None`` when it completed."""
    future.wait()
    state = future.state
    if state.is_completed():
        return None
    if state.is_failed() or state.is_crashed():
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, BaseException):
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
    # e.g. NotReady: an upstream task failed (that task's error is reported first)
    return f"{state.name}: {state.message}".splitlines()[0]


def _submit_scoring(
    futures: FrameFutures,
    dataset: DatasetSelection,
    automatic: bool,
    segmenter: SegmenterConfig,
    cache_dir: str,
) -> None:
    """Submit one frame's ``segment`` and ``metrics`` stages after its ``gt`` stage (each later
    stage takes the futures of the stages it needs: a failed one makes it NotReady)."""
    frame, gt = futures.frame, futures.stages["gt"]
    if _error_of(gt) is not None or not (automatic or gt.result().prompts):
        return
    with dask_annotations(segmenter.device):
        masks = segment.submit(
            frame.image_id,
            str(frame.image_path),
            gt.result().prompts,
            automatic,
            segmenter,
            cache_dir,
        )
    scores = score_frame.submit(frame, dataset.classes, gt, masks, automatic, cache_dir)
    futures.stages.update(segment=masks, metrics=scores)


def _mask_labels(futures: FrameFutures, automatic: bool) -> list[str | None] | None:
    """The class of each of a frame's scored masks, in the metrics stage's order; ``None`` when
    the frame has no scores (nothing to segment, or a failed stage).

    With prompts, the masks are the prompts', whose classes the ``gt`` stage already gave; in
    automatic mode they are known once the ``metrics`` stage has matched the masks (it waits).
    """
    scores = futures.stages.get("metrics")
    if scores is None:
        return None
    if not automatic:
        return [prompt.get("class_name") for prompt in futures.stages["gt"].result().prompts]
    if _error_of(scores) is not None:
        return None
    return [score["prompt"].get("class_name") for score in scores.result().scores]


def _submit_painting(
    futures: FrameFutures,
    classes: tuple[str, ...],
    automatic: bool,
    stylizer: StylizerConfig | None,
    settings: CompositeConfig,
    cache_dir: str,
) -> None:
    """Submit a frame's ``stylize`` stages (one per distinct style of its paint plan,
    :func:`segstyle_core.paint.plan_by_class`), ``composite`` and ``figures`` (which shows the
    first style's painting); they take the ``metrics`` stage's future: its used masks."""
    labels = _mask_labels(futures, automatic)
    if labels is None:
        return
    frame, gt = futures.frame, futures.stages["gt"]
    masks, scores = futures.stages["segment"], futures.stages["metrics"]
    image_id, image_path = frame.image_id, str(frame.image_path)
    stylized: list[PrefectFuture[Any]] = []
    painted = None
    if stylizer is not None:
        plan = plan_by_class(labels, classes, stylizer, settings.mode)
        with dask_annotations(stylizer.device):
            stylized = [
                stylize.submit(
                    image_id,
                    image_path,
                    style,
                    stylizer,
                    cache_dir,
                    **plan.roi_options(index, settings, scores),
                )
                for index, style in enumerate(plan.styles)
            ]
        painted = composite.submit(
            image_id, image_path, stylized, scores, plan.layers, settings, cache_dir
        )
        futures.stages.update(stylize_stage_names(stylized))
        futures.stages["composite"] = painted
    futures.stages["figures"] = figures.submit(
        frame,
        gt,
        masks,
        scores,
        automatic,
        cache_dir,
        stylized=stylized[0] if stylized else None,
        painted=painted,
    )


def run_dataset(
    dataset: DatasetSelection,
    prompts: PromptConfig,
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig | None,
    settings: CompositeConfig,
    output: OutputConfig,
) -> str:
    """Run every image of the sample through the stages; write the Parquet; return its path."""
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    if dataset.generate_demo and dataset.root:
        ensure_demo_dataset(dataset.root)
    seg_identity, style_identity = check_run_inputs(
        dataset, prompts, segmenter, stylizer, output, settings
    )
    out = Path(output.out)
    cache_dir = str(out / "cache")
    run_name = flow_run.get_name() or "local"
    run_dir = str(out / "runs" / run_name)
    config = {
        "dataset": dataset.model_dump(mode="json"),
        "prompts": prompts.model_dump(mode="json"),
        "segmenter": segmenter.model_dump(mode="json"),
        "stylizer": stylizer.model_dump(mode="json") if stylizer else None,
        "composite": settings.model_dump(mode="json"),
    }
    common = run_columns(
        run_name=run_name,
        flow_run_id=str(flow_run.get_id() or run_name),
        dataset=dataset,
        config=config,
        segmenter=seg_identity,
        stylizer=style_identity,
        mode=settings.mode,
        started=started,
    )

    style_of = style_columns(stylizer) if stylizer is not None else None
    sample = sample_city(dataset)  # each row's city is its frame's (frame_rows)
    per_frame = [
        FrameFutures(
            frame,
            {
                "gt": binarize_gt.submit(
                    frame, dataset.classes, prompts, cache_dir, dataset.gt, seed=dataset.seed
                )
            },
        )
        for frame in sample.frames
    ]
    automatic = prompts.source == "auto"
    painting = (dataset.classes, automatic, stylizer, settings, cache_dir)
    for futures in per_frame:
        _submit_scoring(futures, dataset, automatic, segmenter, cache_dir)
        if not automatic:  # the prompts' classes are known: paint without waiting
            _submit_painting(futures, *painting)
    if automatic:  # the automatic masks' classes are known once matched, frame by frame
        for futures in per_frame:
            _submit_painting(futures, *painting)

    rows: list[dict[str, Any]] = []
    failed = []
    flow_name = flow_run.get_flow_name() or "segment_and_stylize"
    # Each image's rows are on disk as soon as it finishes (a part); the end compacts them
    # into the run's one file. A kill or a full disk loses only the images still in flight.
    with results.RunRows(
        out / "metrics", flow_name, common["flow_run_id"], resume_key=common["config_sha256"]
    ) as durable:
        if durable.resumed:
            logger.info("took over the rows of killed run(s) %s", ", ".join(durable.resumed))
        for futures in tqdm(per_frame, desc="images", unit="img", disable=None):
            image_id = futures.frame.image_id
            error = futures.first_error()
            records = futures.records()
            published = publish(image_id, run_dir, records) if records else None
            if error:
                failed.append((image_id, error))
                logger.error("%s failed: %s", image_id, error)
            finished = {**common, "finished_at": dt.datetime.now(dt.UTC)}
            image_rows = frame_rows(
                finished, futures.frame, records, error, published, style_of=style_of
            )
            durable.write_image(image_id, image_rows)
            rows.extend(image_rows)
        parquet = durable.compact()
    report = write_report(
        Path(run_dir),
        pd.DataFrame(rows),
        config,
        f"segstyle {flow_name} · {run_name}",
        metric="iou" if automatic else "iou_instance",
    )
    publish_artifacts(rows, str(parquet), run_name, report, out)
    logger.info("wrote %d rows for %d images to %s", len(rows), len(sample.frames), parquet)
    if failed:
        raise RunFailed(
            f"{len(failed)} of {len(sample.frames)} images failed "
            f"(first: {failed[0][0]}: {short_error(failed[0][1])}); "
            f"rows with their errors are in {parquet}; fix the inputs and retry this flow run"
        )
    return str(parquet)


@flow(name="segment_and_stylize", task_runner=TASK_RUNNER)
def segment_and_stylize(
    dataset: DatasetSelection = DatasetSelection(),
    prompts: PromptConfig = PromptConfig(),
    segmenter: SegmenterConfig = SegmenterConfig(),
    stylizer: StylizerConfig = StylizerConfig(),
    composite: CompositeConfig = CompositeConfig(),
    outputs: OutputConfig = OutputConfig(),
) -> str:
    """Segment, stylize and composite every fine-annotated frame of the selected cities (one,
    several or a whole split); score every mask.

    Returns the run's Parquet file. Every setting's default and description is in its model
    (:mod:`segstyle_core.config`).

    Args:
        dataset: which frames: the dataset root, cities, split, classes, ground truth source,
            sample size and seed.
        prompts: where each frame's prompts come from (GT boxes, automatic, a file).
        segmenter: the segmentation backend (SAM needs its weights; GrabCut is offline).
        stylizer: the style-transfer backend, its settings and the style image.
        composite: object or background mode, soft edge, colour preservation, ROI.
        outputs: the output folder: cache, per-run pictures and report, Parquet metrics.
    """
    return run_dataset(dataset, prompts, segmenter, stylizer, composite, outputs)


@flow(name="evaluate_segmentation", task_runner=TASK_RUNNER)
def evaluate_segmentation(
    dataset: DatasetSelection = DatasetSelection(),
    prompts: PromptConfig = PromptConfig(),
    segmenter: SegmenterConfig = SegmenterConfig(),
    outputs: OutputConfig = OutputConfig(),
) -> str:
    """Masks and metrics only, no styling. Returns the run's Parquet file.

    Args:
        dataset: which frames: the dataset root, cities, split, classes, ground truth source,
            sample size and seed.
        prompts: where each frame's prompts come from (GT boxes, automatic, a file).
        segmenter: the segmentation backend (SAM needs its weights; GrabCut is offline).
        outputs: the output folder: cache, per-run pictures and report, Parquet metrics.
    """
    return run_dataset(dataset, prompts, segmenter, None, CompositeConfig(), outputs)
