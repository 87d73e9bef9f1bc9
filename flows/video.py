"""The ``stylize_video`` flow: one object of a clip, tracked and stylized with stable strokes.

Frames -> chunks of ``chunk_size`` frames (each: track the mask, stylize, blend with the
previous painting, composite; cached, retried, one after the other since each starts from the
previous chunk's last frame) -> encode -> copy to ``output``. When the input is a Cityscapes
sequence with instance ground truth, the tracked masks are scored against it. Per-frame flicker
(and IoU) go to ``<out>/runs/video/<name>/metrics.json``.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from segstyle_core.errors import ConfigError
from segstyle_core.fileio import atomic_write_with, write_json_atomic
from segstyle_core.images import read_rgb
from segstyle_core.prompts import parse_box, validate_prompt
from segstyle_core.segment import segmenter_spec
from segstyle_core.segment.base import Prompt
from segstyle_core.styles import default_style_path
from segstyle_core.stylize import stylizer_spec
from segstyle_core.video.chunks import record_paths
from segstyle_core.video.io import folder_fps, frame_files, is_container, iter_frames, write_video
from segstyle_core.video.temporal import TemporalOptions
from segstyle_core.video.track import tracker_spec
from tasks.video import (
    encode_video,
    extract_frames,
    has_instance_gt,
    score_video,
    stylize_video_chunk,
)


def _input_frames(video: str, name: str, cache_dir: str) -> tuple[list[str], float]:
    """The input's frame files and frame rate (a video file is decoded into the cache first)."""
    if is_container(video):
        record = extract_frames(name, video, cache_dir)
        folder = record["outputs"]["frames"]
        return [str(p) for p in frame_files(folder)], float(record["fps"])
    return [str(p) for p in frame_files(video)], folder_fps(video)


def _publish(encoded: str, output: str, fps: float) -> Path:
    """Put the encoded result at ``output``: a file is copied atomically, a folder rewritten."""
    if not is_container(output):
        return write_video(output, iter_frames(encoded), fps)

    def copy(tmp: Path) -> None:
        shutil.copyfile(encoded, tmp)

    return atomic_write_with(output, copy)


def _metrics(
    chunks: list[dict[str, Any]], scores: dict[str, Any] | None, output: Path
) -> dict[str, Any]:
    """Per-frame rows (``index``, ``flicker``, ``mask_area``, ``iou``, ``dice``) and means."""
    rows = [dict(row) for chunk in chunks for row in chunk["frames"]]
    for position, row in enumerate(rows):
        row["iou"] = scores["iou"][position] if scores else None
        row["dice"] = scores["dice"][position] if scores else None
    flickers = [row["flicker"] for row in rows if row["flicker"] is not None]
    return {
        "output": str(output),
        "frames": rows,
        "mean_flicker": sum(flickers) / len(flickers) if flickers else None,
        "mean_iou": scores["mean_iou"] if scores else None,
        "mean_dice": scores["mean_dice"] if scores else None,
    }


@flow(name="stylize_video")
def stylize_video(
    video: str,
    output: str,
    box: str,
    style: str | None = None,
    start_frame: int = 0,
    segmenter: str = "grabcut",
    sam2_variant: str = "hiera_tiny",
    mode: str = "object",
    blend: float = 0.6,
    feather: float = 0.0,
    strength: float = 1.0,
    height: int | None = 512,
    chunk_size: int = 8,
    device: str = "auto",
    weights_dir: str | None = None,
    out: str = "artifacts",
) -> str:
    """Stylize the object boxed on frame ``start_frame`` of ``video`` through the rest of it.

    Args:
        video: an MP4 (or other video file) or a folder of PNG frames.
        output: the result, ``.mp4`` (or another video suffix) or a folder; frames before
            ``start_frame`` are copied unchanged.
        box: ``"x0,y0,x1,y1"`` around the object on frame ``start_frame``.
        segmenter: ``grabcut`` (optical flow refined by GrabCut, offline) or ``sam2``.
        blend: weight of the previous painting carried along the flow (0: per-frame).
        height: working height of the feed-forward stylizer (``None``: the frame's own).
        chunk_size: frames per cached task.
    """
    if chunk_size < 1 or start_frame < 0:
        raise ConfigError(
            f"chunk_size={chunk_size}, start_frame={start_frame}: use chunk_size >= 1 and "
            "start_frame >= 0"
        )
    logger = get_run_logger()
    name = Path(video).stem
    cache_dir = str(Path(out) / "cache")
    paths, fps = _input_frames(video, name, cache_dir)
    if start_frame >= len(paths):
        raise ConfigError(
            f"start_frame={start_frame}: {video} has {len(paths)} frames; give a smaller index"
        )
    temporal = TemporalOptions(blend=blend, feather_px=feather, mode=mode)  # type: ignore[arg-type]
    height_px, width_px = read_rgb(paths[start_frame]).shape[:2]
    prompt = validate_prompt(Prompt(box=parse_box(box)), width_px, height_px, f"{video} --box")
    if segmenter == "sam2":
        tracker = tracker_spec("sam2", variant=sam2_variant, weights_dir=weights_dir, device=device)
    else:
        tracker = tracker_spec("flow", segmenter_spec(segmenter, device=device))
    options = {"strength": strength, "content_size": height}
    sty_spec = stylizer_spec("feedforward", device=device, options=options)
    style_path = style or str(default_style_path())

    chunks: list[dict[str, Any]] = []
    for first in range(start_frame, len(paths), chunk_size):
        chunks.append(
            stylize_video_chunk(
                first,
                paths[first : first + chunk_size],
                style_path,
                prompt.as_dict() if not chunks else None,
                chunks[-1] if chunks else None,
                tracker,
                sty_spec,
                dataclasses.asdict(temporal),
                cache_dir,
            )
        )
    outputs = [str(p) for chunk in chunks for p in record_paths(chunk, "output")]
    masks = [str(p) for chunk in chunks for p in record_paths(chunk, "mask")]
    suffix = Path(output).suffix if is_container(output) else ""
    encoded = encode_video(name, paths[:start_frame] + outputs, fps, suffix, cache_dir)
    target = _publish(encoded["outputs"]["video"], output, fps)

    scored = paths[start_frame:]
    scores = None
    if has_instance_gt(scored):
        scores = score_video(name, scored, masks, list(prompt.box or ()), cache_dir)
    metrics = _metrics(chunks, scores, target)
    write_json_atomic(Path(out) / "runs" / "video" / name / "metrics.json", metrics)
    logger.info(
        "wrote %s (%d frames at %.3g fps); mean flicker %s, mean IoU %s",
        target,
        len(paths),
        fps,
        metrics["mean_flicker"],
        metrics["mean_iou"],
    )
    return str(target)
