"""The cached steps of a video run, free of Prefect: decode, stylize a chunk, encode, score.

Each is a :class:`~segstyle_core.stagecache.Stage` keyed on the content of its input files; the
Prefect tasks (:mod:`segstyle.tasks.video`) wrap them one-to-one. A chunk's key also holds the
files the previous chunk hands on (:meth:`ChunkRecord.carry`: its last frame, mask, painting
and output), so a change early in the video invalidates every later chunk and nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segstyle_core.cityscapes import frame_from_image_path
from segstyle_core.config import CompositeConfig
from segstyle_core.errors import ConfigError
from segstyle_core.images import read_mask, read_rgb
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import StageKey, StageRecord, stage
from segstyle_core.stylize import StylizerConfig
from segstyle_core.video.chunks import Carry, ChunkRecord, stylize_chunk
from segstyle_core.video.config import VideoOptions
from segstyle_core.video.evaluate import gt_track, track_scores
from segstyle_core.video.io import frame_files, iter_frames, probe, write_video
from segstyle_core.video.temporal import TemporalOptions
from segstyle_core.video.track import TrackerConfig

__all__ = [
    "ChunkRecord",
    "EncodeRecord",
    "FramesRecord",
    "ScoreRecord",
    "encode_video",
    "extract_frames",
    "score_video",
    "stylize_video_chunk",
    "temporal_options",
]


# ----------------------------------------------------------------------------- video_frames


@dataclass(frozen=True, kw_only=True)
class FramesRecord(StageRecord):
    """Output ``frames``: the decoded frames folder (``frame_000000.png``, ...).

    Attributes:
        fps: the video's frame rate.
        width / height: the frame size in pixels.
        frame_count: how many frames were decoded.
    """

    fps: float
    width: int
    height: int
    frame_count: int

    def frame_paths(self) -> list[str]:
        """The decoded frame files, in order."""
        return [str(path) for path in frame_files(self.path("frames"))]


def _frames_key(name: str, video: str, cache_dir: str) -> StageKey:
    return StageKey({"video": video}, {})


@stage("video_frames", key=_frames_key, code=("segstyle_core.video.io",))
def extract_frames(out: Path, name: str, video: str, cache_dir: str) -> FramesRecord:
    """Decode the video file ``video`` into ``frames/frame_000000.png``, ... (streamed)."""
    folder = write_video(out / "frames", iter_frames(video), probe(video).fps)
    info = probe(folder)
    return FramesRecord(
        outputs={"frames": str(folder)},
        fps=info.fps,
        width=info.width,
        height=info.height,
        frame_count=len(frame_files(folder)),
    )


# ----------------------------------------------------------------------------- video_chunk


def temporal_options(composite: CompositeConfig, options: VideoOptions) -> TemporalOptions:
    """The :class:`TemporalOptions` of a video run: its blend, and the composite's mode and
    feather.

    Raises:
        ConfigError: a composite setting video does not support (colour preservation, ROI).
    """
    unsupported = [
        name for name in ("preserve_color", "roi_margin_px") if getattr(composite, name) is not None
    ]
    if unsupported:
        raise ConfigError(
            f"composite {', '.join(unsupported)}: not supported for video; leave them none"
        )
    return TemporalOptions(
        blend=options.blend, mode=composite.mode, feather_px=composite.feather_px
    )


def _backend_key(config: StylizerConfig | TrackerConfig) -> dict[str, Any]:
    return {"identity": dataclasses.asdict(config.identity()), "settings": config.settings()}


def _chunk_key(
    first_index: int,
    frame_paths: list[str],
    prompt: dict[str, Any] | None,
    previous: ChunkRecord | None,
    stylizer: StylizerConfig,
    tracker: TrackerConfig,
    composite: CompositeConfig,
    options: VideoOptions,
    cache_dir: str,
) -> StageKey:
    files: dict[str, Any] = {f"frame_{i}": path for i, path in enumerate(frame_paths)}
    files["style"] = stylizer.style_path()
    if previous is not None:
        files.update(previous.carry().files())
    config = {
        "first_index": first_index,
        "prompt": prompt,
        "tracker": _backend_key(tracker),
        "stylizer": _backend_key(stylizer),
        "content_size": options.height if stylizer.backend == "feedforward" else None,
        "temporal": dataclasses.asdict(temporal_options(composite, options)),
    }
    return StageKey(files, config)


@stage(
    "video_chunk",
    key=_chunk_key,
    code=(
        "segstyle_core.video.chunks",
        "segstyle_core.video.temporal",
        "segstyle_core.video.track",
        "segstyle_core.video.flow",
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
    cache_dir: str,
) -> ChunkRecord:
    """Track, stylize and composite frames ``first_index``... (see
    :func:`segstyle_core.video.chunks.stylize_chunk`), starting from ``prompt`` (the first
    chunk's box, :meth:`Prompt.as_dict`) or from ``previous``, the record of the chunk before.

    The stylizer paints at ``options.height`` (feed-forward) and blends with
    ``options.blend``; the composite's mode and feather shape the mask's edge.

    Raises:
        ConfigError: neither ``prompt`` nor ``previous``.
    """
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


# ----------------------------------------------------------------------------- video_encode


@dataclass(frozen=True, kw_only=True)
class EncodeRecord(StageRecord):
    """Output ``video``: the encoded video file, or a frame folder."""


def _encode_key(
    name: str, frame_paths: list[str], fps: float, suffix: str, cache_dir: str
) -> StageKey:
    files = {f"frame_{i}": path for i, path in enumerate(frame_paths)}
    return StageKey(files, {"fps": fps, "suffix": suffix})


@stage("video_encode", key=_encode_key, code=("segstyle_core.video.io",))
def encode_video(
    out: Path, name: str, frame_paths: list[str], fps: float, suffix: str, cache_dir: str
) -> EncodeRecord:
    """Encode PNG frames as ``video{suffix}`` (``suffix=""``: a frame folder) at ``fps``."""
    frames = (read_rgb(path) for path in frame_paths)
    return EncodeRecord(outputs={"video": str(write_video(out / f"video{suffix}", frames, fps))})


# ----------------------------------------------------------------------------- video_score


@dataclass(frozen=True, kw_only=True)
class ScoreRecord(StageRecord):
    """The tracked masks against the ground truth of the boxed object; no output files.

    Attributes:
        iou / dice: per frame, in order.
        mean_iou / mean_dice: their means.
    """

    iou: list[float]
    dice: list[float]
    mean_iou: float
    mean_dice: float


def _score_key(
    name: str, image_paths: list[str], mask_paths: list[str], box: list[float], cache_dir: str
) -> StageKey:
    files: dict[str, Any] = {f"image_{i}": path for i, path in enumerate(image_paths)}
    files.update({f"mask_{i}": path for i, path in enumerate(mask_paths)})
    for i, path in enumerate(image_paths):
        files[f"gt_{i}"] = frame_from_image_path(path).instance_ids_path
    return StageKey(files, {"box": list(box)})


@stage(
    "video_score",
    key=_score_key,
    code=("segstyle_core.video.evaluate", "segstyle_core.metrics", "segstyle_core.cityscapes"),
)
def score_video(
    out: Path,
    name: str,
    image_paths: list[str],
    mask_paths: list[str],
    box: list[float],
    cache_dir: str,
) -> ScoreRecord:
    """Score tracked masks against the Cityscapes instance ground truth of the boxed object
    (:func:`segstyle_core.video.evaluate.gt_track`): per-frame and mean IoU and Dice."""
    frames = [frame_from_image_path(path) for path in image_paths]
    truth = gt_track(frames, (box[0], box[1], box[2], box[3]))
    scores = track_scores([read_mask(path) for path in mask_paths], truth)
    return ScoreRecord(
        outputs={},
        iou=[float(v) for v in scores["iou"]],
        dice=[float(v) for v in scores["dice"]],
        mean_iou=float(scores["mean_iou"]),
        mean_dice=float(scores["mean_dice"]),
    )
