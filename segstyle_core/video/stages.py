"""The cached stages of a video run: decode, stylize a chunk, encode, score. A chunk's key holds
the previous chunk's carried files, so an early change invalidates every later chunk only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from segstyle_core.cityscapes import frame_from_image_path
from segstyle_core.config import CompositeConfig
from segstyle_core.errors import ConfigError
from segstyle_core.images import read_mask, read_rgb
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageRecord, backend_key, files_key, stage
from segstyle_core.stylize import StylizerConfig
from segstyle_core.video.config import VideoOptions
from segstyle_core.video.evaluate import gt_track, track_scores
from segstyle_core.video.io import iter_frames, video_fps, write_video
from segstyle_core.video.temporal import Carry, ChunkRecord, TemporalOptions, stylize_chunk
from segstyle_core.video.track import TrackerConfig


@stage("video_frames", files=("video",), code=("segstyle_core.video.io",))
def extract_frames(out: Path, video: str) -> StageRecord:
    """Decode the video file ``video`` into output ``frames``: ``frame_000000.png``, ..."""
    frames = write_video(out / "frames", iter_frames(video), video_fps(video))
    return StageRecord(outputs={"frames": str(frames)})


def temporal_options(composite: CompositeConfig, options: VideoOptions) -> TemporalOptions:
    """A video run's blend, and the composite's mode and feather (ConfigError: a composite
    setting video does not support, colour preservation or ROI)."""
    unsupported = ("preserve_color", "roi_margin_px")
    given = [name for name in unsupported if getattr(composite, name) is not None]
    if given:
        raise ConfigError(f"composite {', '.join(given)}: not supported for video; leave them none")
    return TemporalOptions(options.blend, composite.mode, composite.feather_px)


def _carry_key(previous: ChunkRecord | None) -> dict[str, Any] | None:
    if previous is None:
        return None
    return {f"carry_{name}": files_key(path) for name, path in asdict(previous.carry()).items()}


def _stylizer_key(stylizer: StylizerConfig) -> dict[str, Any]:
    return {**backend_key(stylizer, stylizer.settings()), "style": files_key(stylizer.style_path())}


def _tracker_key(tracker: TrackerConfig) -> dict[str, Any]:
    return backend_key(tracker, tracker.settings())


@stage(
    "video_chunk",
    files=("frame_paths",),
    keys={"previous": _carry_key, "stylizer": _stylizer_key, "tracker": _tracker_key},
    code=(
        "segstyle_core.video.temporal",
        "segstyle_core.video.track",
        "segstyle_core.composite",
        "segstyle_core.segment",
        "segstyle_core.stylize",
    ),
    heavy=True,
)
def stylize_video_chunk(
    out: Path,
    first_index: int,
    frame_paths: list[str],
    prompt: dict[str, Any] | None,
    previous: ChunkRecord | None,
    stylizer: StylizerConfig,
    tracker: TrackerConfig,
    composite: CompositeConfig,
    options: VideoOptions,
) -> ChunkRecord:
    """:func:`~segstyle_core.video.temporal.stylize_chunk` from ``prompt`` (the first chunk's box,
    :meth:`Prompt.as_dict`) or ``previous`` (the chunk before's record; ConfigError: neither)."""
    start: Prompt | Carry
    if previous is not None:
        start = previous.carry()
    elif prompt is not None:
        start = Prompt.from_dict(prompt)
    else:
        raise ConfigError(f"chunk {first_index}: give the box prompt or the previous chunk")
    return stylize_chunk(
        frame_paths,
        first_index,
        start,
        tracker.build(),
        stylizer.build(content_size=options.height),
        read_rgb(stylizer.style_path()),
        temporal_options(composite, options),
        out,
    )


@stage("video_encode", files=("frame_paths",), code=("segstyle_core.video.io",))
def encode_video(out: Path, frame_paths: list[str], fps: float, suffix: str) -> StageRecord:
    """Encode PNG frames as output ``video``: ``video{suffix}`` (``suffix=""``: a frame folder)
    at ``fps``."""
    frames = (read_rgb(path) for path in frame_paths)
    return StageRecord(outputs={"video": str(write_video(out / f"video{suffix}", frames, fps))})


@dataclass(frozen=True, kw_only=True)
class ScoreRecord(StageRecord):
    """Per-frame IoU and Dice of the tracked masks against the boxed object's GT, and means."""

    iou: list[float]
    dice: list[float]
    mean_iou: float
    mean_dice: float


def _images_key(image_paths: list[str]) -> list[dict[str, Any]]:
    return [
        {"image": files_key(path), "gt": files_key(frame_from_image_path(path).instance_ids_path)}
        for path in image_paths
    ]


@stage(
    "video_score",
    files=("mask_paths",),
    keys={"image_paths": _images_key},
    code=("segstyle_core.video.evaluate", "segstyle_core.metrics", "segstyle_core.cityscapes"),
)
def score_video(
    out: Path, image_paths: list[str], mask_paths: list[str], box: list[float]
) -> ScoreRecord:
    """Score tracked masks against the boxed object's instance GT (:func:`gt_track`)."""
    frames = [frame_from_image_path(path) for path in image_paths]
    truth = gt_track(frames, (box[0], box[1], box[2], box[3]))
    return ScoreRecord(outputs={}, **track_scores([read_mask(path) for path in mask_paths], truth))
