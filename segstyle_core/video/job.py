"""A video run's checks before any frame, and its per-frame metrics file; apart from
:mod:`segstyle_core.video.stages`, whose source is part of every video stage's cache key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segstyle_core.config import CompositeConfig
from segstyle_core.errors import ConfigError
from segstyle_core.images import read_rgb
from segstyle_core.preflight import check_devices, check_style
from segstyle_core.prompts.validation import parse_box, validate_prompt
from segstyle_core.segment.base import Prompt
from segstyle_core.stylize import StylizerConfig
from segstyle_core.video.config import VideoOptions
from segstyle_core.video.io import check_video_output
from segstyle_core.video.stages import ScoreRecord, temporal_options
from segstyle_core.video.temporal import ChunkRecord
from segstyle_core.video.track import TrackerConfig


def mean_of(values: list[float | None]) -> float | None:
    """The mean of the values that are not ``None``."""
    given = [v for v in values if v is not None]
    return sum(given) / len(given) if given else None


def check_video_job(
    video: str,
    output: str,
    tracker: TrackerConfig,
    stylizer: StylizerConfig,
    composite: CompositeConfig,
    options: VideoOptions,
) -> None:
    """Fail before any frame on unsupported composite settings, a device this machine lacks, a
    missing checkpoint or style image, or an output that would overwrite the input."""
    temporal_options(composite, options)
    refiner = tracker.segmenter if tracker.backend == "flow" else None
    check_devices(tracker=tracker, **{"tracker.segmenter": refiner}, stylizer=stylizer)
    tracker.identity()
    stylizer.identity()
    check_style(stylizer)
    check_video_output(video, output)


def video_metrics(
    chunks: list[ChunkRecord], scores: ScoreRecord | None, output: Path
) -> dict[str, Any]:
    """Per-frame rows (``index``, ``flicker``, ``mask_area``, ``iou``, ``dice``) and means."""
    rows = [dict(row) for chunk in chunks for row in chunk.frames]
    for position, row in enumerate(rows):
        row["iou"] = scores.iou[position] if scores else None
        row["dice"] = scores.dice[position] if scores else None
    return {
        "output": str(output),
        "frames": rows,
        "mean_flicker": mean_of([row["flicker"] for row in rows]),
        "mean_iou": scores.mean_iou if scores else None,
        "mean_dice": scores.mean_dice if scores else None,
    }


def start_prompt(video: str, frame_paths: list[str], start_frame: int, box: str) -> Prompt:
    """The box prompt (``"x0,y0,x1,y1"``) on frame ``start_frame`` of ``frame_paths``, checked
    against that frame's size; :class:`ConfigError` for a start frame past the end."""
    if start_frame >= len(frame_paths):
        raise ConfigError(
            f"start_frame={start_frame}: {video} has {len(frame_paths)} frames; give a smaller "
            "index"
        )
    height_px, width_px = read_rgb(frame_paths[start_frame]).shape[:2]
    return validate_prompt(Prompt(box=parse_box(box)), width_px, height_px, f"{video} start frame")
