"""Tasks of the video flow: decode frames, stylize a chunk, encode the result, score the track.

Every task is cached on the content of its input files (:class:`tasks.caching.StageCachePolicy`)
and writes into the content-addressed stage cache; a chunk's key also holds the previous
chunk's last frame, mask, painting and output, so a change early in the video invalidates every
later chunk and nothing else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from segstyle_core.cityscapes import frame_from_image_path
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import read_mask, read_rgb
from segstyle_core.pipeline import prompt_from_dict
from segstyle_core.segment.base import Prompt
from segstyle_core.stagecache import run_stage
from segstyle_core.stylize import build_stylizer, stylizer_identity
from segstyle_core.video.chunks import Carry, carry_of, stylize_chunk
from segstyle_core.video.evaluate import gt_track, track_scores
from segstyle_core.video.io import iter_frames, probe, write_video
from segstyle_core.video.temporal import TemporalOptions
from segstyle_core.video.track import build_tracker, tracker_identity
from tasks.caching import StageCachePolicy
from tasks.common import STAGE_OPTIONS, device_slot, timed


def _frames_key(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    return {"video": inputs["video"]}, {}


@task(
    name="video-frames",
    task_run_name="video-frames-{name}",
    cache_policy=StageCachePolicy(stage="video_frames", key_inputs=_frames_key),
    **STAGE_OPTIONS,
)
def extract_frames(name: str, video: str, cache_dir: str) -> dict[str, Any]:
    """Decode the video file ``video`` into ``frames/frame_000000.png``, ... (streamed).

    The record's ``outputs`` hold the frames folder; ``fps``, ``width``, ``height`` and
    ``frame_count`` describe it.
    """
    files, config = _frames_key(locals())

    def compute(out: Path) -> dict[str, Any]:
        folder = write_video(out / "frames", iter_frames(video), probe(video).fps)
        info = probe(folder)
        return {"outputs": {"frames": str(folder)}, **dataclasses.asdict(info)}

    return run_stage("video_frames", cache_dir, files, config, compute)


def _chunk_key(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    files: dict[str, Any] = {f"frame_{i}": p for i, p in enumerate(inputs["frame_paths"])}
    files["style"] = inputs["style_path"]
    if inputs["previous"] is not None:
        files.update(carry_of(inputs["previous"]).files())
    stylizer = inputs["stylizer"]
    config = {
        "first_index": inputs["first_index"],
        "prompt": inputs["prompt"],
        "tracker": tracker_identity(inputs["tracker"]),
        "stylizer": stylizer_identity(stylizer),
        "stylizer_options": stylizer.get("options", {}),
        "temporal": inputs["temporal"],
    }
    return files, config


@task(
    name="video-chunk",
    task_run_name="video-chunk-{first_index}",
    cache_policy=StageCachePolicy(stage="video_chunk", key_inputs=_chunk_key),
    **STAGE_OPTIONS,
)
def stylize_video_chunk(
    first_index: int,
    frame_paths: list[str],
    style_path: str,
    prompt: dict[str, Any] | None,
    previous: dict[str, Any] | None,
    tracker: dict[str, Any],
    stylizer: dict[str, Any],
    temporal: dict[str, Any],
    cache_dir: str,
) -> dict[str, Any]:
    """Track, stylize and composite frames ``first_index``... (see
    :func:`segstyle_core.video.chunks.stylize_chunk`), starting from ``prompt`` (the first
    chunk) or from ``previous``, the record of the chunk before."""
    files, config = _chunk_key(locals())
    timing: dict[str, Any] = {}

    def compute(out: Path) -> dict[str, Any]:
        start: Prompt | Carry
        if previous is not None:
            start = carry_of(previous)
        elif prompt is not None:
            start = prompt_from_dict(prompt)
        else:
            raise ConfigError(f"chunk {first_index}: give the box prompt or the previous chunk")
        with device_slot(stylizer["device"]):
            record = stylize_chunk(
                frame_paths,
                first_index,
                start,
                build_tracker(tracker),
                build_stylizer(stylizer),
                read_rgb(style_path),
                TemporalOptions(**temporal),
                out,
            )
        return {**record, "tracker": config["tracker"], "stylizer": config["stylizer"]}

    with timed(timing):
        record = run_stage("video_chunk", cache_dir, files, config, compute)
    flickers = [row["flicker"] for row in record["frames"] if row["flicker"] is not None]
    get_run_logger().info(
        "frames %d-%d: mean flicker %s",
        first_index,
        first_index + len(frame_paths) - 1,
        f"{sum(flickers) / len(flickers):.2f}" if flickers else "n/a",
    )
    return {**record, **timing}


def _encode_key(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    files = {f"frame_{i}": p for i, p in enumerate(inputs["frame_paths"])}
    return files, {"fps": inputs["fps"], "suffix": inputs["suffix"]}


@task(
    name="video-encode",
    task_run_name="video-encode-{name}",
    cache_policy=StageCachePolicy(stage="video_encode", key_inputs=_encode_key),
    **STAGE_OPTIONS,
)
def encode_video(
    name: str, frame_paths: list[str], fps: float, suffix: str, cache_dir: str
) -> dict[str, Any]:
    """Encode PNG frames as ``video{suffix}`` (``suffix=""``: a frame folder) at ``fps``."""
    files, config = _encode_key(locals())

    def compute(out: Path) -> dict[str, Any]:
        frames = (read_rgb(path) for path in frame_paths)
        return {"outputs": {"video": str(write_video(out / f"video{suffix}", frames, fps))}}

    return run_stage("video_encode", cache_dir, files, config, compute)


def has_instance_gt(image_paths: list[str]) -> bool:
    """True when every frame is a Cityscapes ``leftImg8bit`` image with an instanceIds PNG."""
    try:
        return all(frame_from_image_path(p).instance_ids_path is not None for p in image_paths)
    except InputError:  # a frame outside the Cityscapes layout: no ground truth
        return False


def _score_key(inputs: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    files = {f"image_{i}": p for i, p in enumerate(inputs["image_paths"])}
    files.update({f"mask_{i}": p for i, p in enumerate(inputs["mask_paths"])})
    for i, path in enumerate(inputs["image_paths"]):
        files[f"gt_{i}"] = frame_from_image_path(path).instance_ids_path
    return files, {"box": inputs["box"]}


@task(
    name="video-score",
    task_run_name="video-score-{name}",
    cache_policy=StageCachePolicy(stage="video_score", key_inputs=_score_key),
    **STAGE_OPTIONS,
)
def score_video(
    name: str, image_paths: list[str], mask_paths: list[str], box: list[float], cache_dir: str
) -> dict[str, Any]:
    """Score tracked masks against the Cityscapes instance ground truth of the boxed object
    (:func:`segstyle_core.video.evaluate.gt_track`): per-frame and mean IoU and Dice."""
    files, config = _score_key(locals())

    def compute(out: Path) -> dict[str, Any]:
        frames = [frame_from_image_path(path) for path in image_paths]
        truth = gt_track(frames, (box[0], box[1], box[2], box[3]))
        scores = track_scores([read_mask(p) for p in mask_paths], truth)
        return {"outputs": {}, **scores}

    return run_stage("video_score", cache_dir, files, config, compute)
