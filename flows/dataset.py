"""The dataset-wide flows: ``segment_and_stylize`` and ``evaluate_segmentation``.

Per image: binarize GT and derive prompts -> segment -> (stylize -> composite) -> metrics ->
publish. One image's failure never stops the others: its row is written with status
``failed`` and its error, and the flow run ends Failed so the Prefect UI offers Retry. A retry
recomputes only what failed; every finished stage comes back from the content cache.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from flows.artifacts import publish_artifacts
from flows.params import backend_specs, style_or_default
from flows.rows import frame_rows
from segstyle_core import results
from segstyle_core.errors import SegstyleError
from segstyle_core.fileio import file_sha256, sha256_json
from segstyle_core.pipeline import check_run_inputs
from segstyle_core.report import write_report
from tasks.composite import composite
from tasks.figures import figures
from tasks.gt import binarize_gt
from tasks.metrics import score_frame
from tasks.publish import publish
from tasks.sample import sample_city
from tasks.segment import segment
from tasks.stylize import stylize

#: Threads for the task runner: heavy stages still run one at a time per device (device slot).
DEFAULT_WORKERS = 4


class RunFailed(SegstyleError):
    """Some images failed; their rows are in the Parquet file with their errors."""


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


def _first_error(futures: dict[str, PrefectFuture[Any] | None]) -> str | None:
    for name, future in futures.items():
        if future is not None:
            error = _error_of(future)
            if error is not None:
                return f"{name}: {error}"
    return None


def run_dataset(
    *,
    dataset: str | None,
    city: str | None,
    split: str,
    classes: list[str],
    prompts: str,
    segmenter: dict[str, Any],
    stylizer: dict[str, Any] | None,
    style: str | None,
    mode: str,
    feather_px: float,
    preserve_color: str | None,
    roi_margin_px: int | None,
    min_area: int,
    limit: int | None,
    seed: int,
    out: str,
) -> str:
    """Run every image of the sample through the stages; write the Parquet; return its path."""
    logger = get_run_logger()
    started = dt.datetime.now(dt.UTC)
    seg_identity, style_identity = check_run_inputs(
        dataset, classes, prompts, segmenter, stylizer, style
    )
    cache_dir = str(Path(out) / "cache")
    run_name = flow_run.get_name() or "local"
    run_dir = str(Path(out) / "runs" / run_name)
    automatic = prompts == "auto"
    config = {
        "dataset": dataset,
        "city": city,
        "split": split,
        "classes": classes,
        "prompts": prompts,
        "segmenter": segmenter,
        "stylizer": stylizer,
        "style": style,
        "mode": mode,
        "feather_px": feather_px,
        "preserve_color": preserve_color,
        "roi_margin_px": roi_margin_px,
        "min_area": min_area,
        "limit": limit,
        "seed": seed,
    }
    common = {
        "run_id": run_name,
        "flow_run_id": str(flow_run.get_id() or run_name),
        "split": split,
        "classes": ",".join(sorted(c.lower() for c in classes)),
        "segmenter": seg_identity["name"],
        "segmenter_variant": seg_identity["variant"],
        "segmenter_weights_sha256": seg_identity["weights_sha256"],
        "mode": mode if stylizer else None,
        "config_sha256": sha256_json(config),
        "started_at": started,
    }
    if stylizer and style_identity:
        common.update(
            stylizer=style_identity["name"],
            stylizer_variant=style_identity["variant"],
            stylizer_weights_sha256=style_identity["weights_sha256"],
            style_name=Path(style).stem if style else None,
            style_sha256=file_sha256(style) if style else None,
        )

    sample = sample_city(dataset, split, city, seed, limit)
    common["city"] = sample["city"]
    frames = sample["frames"]
    gt_futures = [
        binarize_gt.submit(frame, classes, prompts, min_area, cache_dir) for frame in frames
    ]
    per_frame = []
    for frame, gt_future in zip(frames, gt_futures, strict=True):
        futures: dict[str, PrefectFuture[Any] | None] = {"gt": gt_future}
        if _error_of(gt_future) is None and (automatic or gt_future.result()["prompts"]):
            image_id, image_path = frame["image_id"], frame["image_path"]
            seg = segment.submit(
                image_id, image_path, gt_future.result()["prompts"], automatic, segmenter, cache_dir
            )
            futures["segment"] = seg
            met = score_frame.submit(frame, classes, gt_future, seg, automatic, cache_dir)
            futures["metrics"] = met
            if stylizer is not None and style is not None:
                sty = stylize.submit(
                    image_id,
                    image_path,
                    style,
                    stylizer,
                    cache_dir,
                    segment_record=seg if roi_margin_px is not None else None,
                    roi_margin_px=roi_margin_px,
                )
                futures["stylize"] = sty
                futures["composite"] = composite.submit(
                    image_id, image_path, sty, met, mode, feather_px, preserve_color, cache_dir
                )
            futures["figures"] = figures.submit(
                frame,
                gt_future,
                seg,
                met,
                automatic,
                cache_dir,
                stylize_record=futures.get("stylize"),
                composite_record=futures.get("composite"),
            )
        per_frame.append((frame, futures))

    rows: list[dict[str, Any]] = []
    failed = []
    for frame, futures in tqdm(per_frame, desc="images", unit="img", disable=None):
        error = _first_error(futures)
        records = {
            name: f.result()
            for name, f in futures.items()
            if f is not None and _error_of(f) is None
        }
        scores = records["metrics"]["scores"] if error is None and "metrics" in records else None
        published = publish(frame["image_id"], run_dir, records) if records else None
        if error:
            failed.append((frame["image_id"], error))
            logger.error("%s failed: %s", frame["image_id"], error)
        finished = {**common, "finished_at": dt.datetime.now(dt.UTC)}
        rows.extend(frame_rows(finished, frame, records, scores, error, published))

    flow_name = flow_run.get_flow_name() or "segment_and_stylize"
    parquet = results.write_run(rows, Path(out) / "metrics", flow_name, common["flow_run_id"])
    report = write_report(
        Path(run_dir),
        pd.DataFrame(rows),
        config,
        f"segstyle {flow_name} · {run_name}",
        metric="iou" if automatic else "iou_instance",
    )
    publish_artifacts(rows, str(parquet), run_name, report)
    logger.info("wrote %d rows for %d images to %s", len(rows), len(frames), parquet)
    if failed:
        raise RunFailed(
            f"{len(failed)} of {len(frames)} images failed "
            f"(first: {failed[0][0]}: {failed[0][1]}); "
            f"rows with their errors are in {parquet}; fix the inputs and retry this flow run"
        )
    return str(parquet)


@flow(name="segment_and_stylize", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS))
def segment_and_stylize(
    dataset: str | None = None,
    city: str | None = "zurich",
    split: str = "train",
    classes: list[str] = ["car"],  # noqa: B006 - Prefect parameters are copied per run
    prompts: str = "largest",
    segmenter: str = "sam",
    sam_variant: str = "vit_l",
    stylizer: str = "gatys",
    style: str | None = None,
    mode: str = "object",
    nst: dict[str, Any] | None = None,
    strength: float = 1.0,
    feather: float = 0.0,
    preserve_color: str | None = None,
    roi_margin: int | None = None,
    min_area: int = 100,
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    weights_dir: str | None = None,
    out: str = "artifacts",
) -> str:
    """Segment, stylize and composite every fine-annotated frame of a city; score every mask.

    Returns the Parquet file of the run. ``nst`` holds Gatys settings
    (:class:`~segstyle_core.stylize.gatys.GatysConfig` fields); ``strength`` is the
    feed-forward stylizer's blend. ``style`` defaults to the project's generated painting.
    """
    seg_spec, sty_spec = backend_specs(
        segmenter, sam_variant, stylizer, nst, strength, device, weights_dir
    )
    return run_dataset(
        dataset=dataset,
        city=city,
        split=split,
        classes=classes,
        prompts=prompts,
        segmenter=seg_spec,
        stylizer=sty_spec,
        style=style_or_default(style),
        mode=mode,
        feather_px=feather,
        preserve_color=preserve_color,
        roi_margin_px=roi_margin,
        min_area=min_area,
        limit=limit,
        seed=seed,
        out=out,
    )


@flow(name="evaluate_segmentation", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_WORKERS))
def evaluate_segmentation(
    dataset: str | None = None,
    city: str | None = "zurich",
    split: str = "train",
    classes: list[str] = ["car"],  # noqa: B006 - Prefect parameters are copied per run
    prompts: str = "largest",
    segmenter: str = "sam",
    sam_variant: str = "vit_l",
    min_area: int = 100,
    limit: int | None = None,
    seed: int = 0,
    device: str = "auto",
    weights_dir: str | None = None,
    out: str = "artifacts",
) -> str:
    """Masks and metrics only, no styling. Returns the Parquet file of the run."""
    return run_dataset(
        dataset=dataset,
        city=city,
        split=split,
        classes=classes,
        prompts=prompts,
        segmenter=backend_specs(segmenter, sam_variant, None, None, 0.0, device, weights_dir)[0],
        stylizer=None,
        style=None,
        mode="object",
        feather_px=0.0,
        preserve_color=None,
        roi_margin_px=None,
        min_area=min_area,
        limit=limit,
        seed=seed,
        out=out,
    )
