"""The ``stylize_video`` flow: one object of a clip, tracked and stylized with stable strokes.

Frames -> chunks of ``chunk_size`` frames (each: track the mask, stylize, blend with the
previous painting, composite; cached, retried, one after the other since each starts from the
previous chunk's last frame) -> encode -> copy to ``output``. When the input is a Cityscapes
sequence with instance ground truth, the tracked masks are scored against it. Per-frame flicker
(and IoU) go to ``<out>/runs/video/<name>/metrics.json``. A run is named
``<video>-<tracker>-<stylizer>-<date>``; timeout, crash retries and result settings:
:mod:`segstyle.flows.runs`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from segstyle.flows.runs import FLOW_OPTIONS, VIDEO_TIMEOUT_S, run_name, setting
from segstyle.tasks.stage import PrefectRunner
from segstyle_core.config import CompositeConfig, OutputConfig
from segstyle_core.errors import ConfigError
from segstyle_core.fileio import atomic_write_with, write_json_atomic
from segstyle_core.images import read_rgb
from segstyle_core.preflight import check_style
from segstyle_core.prompts.validation import parse_box, validate_prompt
from segstyle_core.segment.base import Prompt
from segstyle_core.stylize import StylizerConfig
from segstyle_core.video.config import VIDEO_STYLIZER, VideoOptions
from segstyle_core.video.evaluate import has_instance_gt
from segstyle_core.video.io import (
    check_video_output,
    folder_fps,
    frame_files,
    is_container,
    iter_frames,
    write_video,
)
from segstyle_core.video.stages import (
    ChunkRecord,
    ScoreRecord,
    encode_video,
    extract_frames,
    score_video,
    stylize_video_chunk,
    temporal_options,
)
from segstyle_core.video.track import TrackerConfig


def _input_frames(video: str, name: str, run: PrefectRunner) -> tuple[list[str], float]:
    """The input's frame files and frame rate (a video file is decoded into the cache first)."""
    if is_container(video):
        record = run(extract_frames, f"video-frames-{name}", video=video).result()
        return record.frame_paths(), record.fps
    return [str(p) for p in frame_files(video)], folder_fps(video)


def _publish(encoded: str, output: str, fps: float) -> Path:
    """Put the encoded result at ``output``: a file is copied atomically, a folder rewritten."""
    if not is_container(output):
        return write_video(output, iter_frames(encoded), fps)

    def copy(tmp: Path) -> None:
        shutil.copyfile(encoded, tmp)

    return atomic_write_with(output, copy)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metrics(chunks: list[ChunkRecord], scores: ScoreRecord | None, output: Path) -> dict[str, Any]:
    """Per-frame rows (``index``, ``flicker``, ``mask_area``, ``iou``, ``dice``) and means."""
    rows = [dict(row) for chunk in chunks for row in chunk.frames]
    for position, row in enumerate(rows):
        row["iou"] = scores.iou[position] if scores else None
        row["dice"] = scores.dice[position] if scores else None
    return {
        "output": str(output),
        "frames": rows,
        "mean_flicker": _mean([row["flicker"] for row in rows if row["flicker"] is not None]),
        "mean_iou": scores.mean_iou if scores else None,
        "mean_dice": scores.mean_dice if scores else None,
    }


def _video_run_name() -> str:
    """The current run's name: ``<video's stem>-<tracker>-<stylizer>-<date>``."""
    parameters = flow_run.get_parameters()
    return run_name(
        Path(str(parameters.get("video", "video"))).stem,
        setting(parameters, "tracker", "backend", TrackerConfig().backend),
        setting(parameters, "stylizer", "backend", VIDEO_STYLIZER.backend),
    )


@flow(
    name="stylize_video",
    flow_run_name=_video_run_name,
    timeout_seconds=VIDEO_TIMEOUT_S,
    **FLOW_OPTIONS,
)
def stylize_video(
    video: str,
    output: str,
    box: str,
    tracker: TrackerConfig = TrackerConfig(),
    stylizer: StylizerConfig = VIDEO_STYLIZER,
    composite: CompositeConfig = CompositeConfig(),
    video_options: VideoOptions = VideoOptions(),
    outputs: OutputConfig = OutputConfig(),
) -> str:
    """Stylize the object boxed on frame ``video_options.start_frame`` of ``video`` through the
    rest of it.

    Args:
        video: an MP4 (or other video file) or a folder of PNG frames.
        output: the result, ``.mp4`` (or another video suffix) or a folder; frames before the
            start frame are copied unchanged.
        box: ``"x0,y0,x1,y1"`` around the object on the start frame.
        tracker: how the mask follows the object (optical flow refined by GrabCut, or SAM 2).
        stylizer: the painter (default: the feed-forward network at ``video_options.height``).
        composite: object or background mode and the mask's soft edge.
        video_options: start frame, blend with the previous painting, working height, chunk
            size.
        outputs: the output folder (cache and ``runs/video/<name>/metrics.json``).
    """
    logger = get_run_logger()
    temporal_options(composite, video_options)  # unsupported composite settings fail here
    tracker.identity()  # a missing checkpoint fails before any frame
    stylizer.identity()
    check_style(stylizer)
    check_video_output(video, output)
    name = Path(video).stem
    run = PrefectRunner(Path(outputs.out) / "cache")
    paths, fps = _input_frames(video, name, run)
    start_frame, chunk_size = video_options.start_frame, video_options.chunk_size
    if start_frame >= len(paths):
        raise ConfigError(
            f"start_frame={start_frame}: {video} has {len(paths)} frames; give a smaller index"
        )
    height_px, width_px = read_rgb(paths[start_frame]).shape[:2]
    prompt = validate_prompt(Prompt(box=parse_box(box)), width_px, height_px, f"{video} --box")

    chunks: list[ChunkRecord] = []
    for first in range(start_frame, len(paths), chunk_size):
        chunk = run(
            stylize_video_chunk,
            f"video-chunk-{first}",
            first_index=first,
            frame_paths=paths[first : first + chunk_size],
            prompt=prompt.as_dict() if not chunks else None,
            previous=chunks[-1] if chunks else None,
            stylizer=stylizer,
            tracker=tracker,
            composite=composite,
            options=video_options,
        ).result()
        flicker = _mean([row["flicker"] for row in chunk.frames if row["flicker"] is not None])
        logger.info(
            "frames %d-%d: mean flicker %s%s",
            first,
            first + len(chunk.frames) - 1,
            "n/a" if flicker is None else f"{flicker:.2f}",
            " (cached)" if chunk.cached else "",
        )
        chunks.append(chunk)
    outputs_paths = [path for chunk in chunks for path in chunk.paths("output")]
    masks = [path for chunk in chunks for path in chunk.paths("mask")]
    suffix = Path(output).suffix if is_container(output) else ""
    frames = paths[:start_frame] + outputs_paths
    encoded = run(
        encode_video, f"video-encode-{name}", frame_paths=frames, fps=fps, suffix=suffix
    ).result()
    target = _publish(encoded.path("video"), output, fps)

    scored = paths[start_frame:]
    scores = None
    if has_instance_gt(scored):
        scores = run(
            score_video,
            f"video-score-{name}",
            image_paths=scored,
            mask_paths=masks,
            box=list(prompt.box or ()),
        ).result()
    metrics = _metrics(chunks, scores, target)
    write_json_atomic(Path(outputs.out) / "runs" / "video" / name / "metrics.json", metrics)
    logger.info(
        "wrote %s (%d frames at %.3g fps); mean flicker %s, mean IoU %s",
        target,
        len(paths),
        fps,
        metrics["mean_flicker"],
        metrics["mean_iou"],
    )
    return str(target)
