"""The ``stylize_video`` flow: frames -> chunks (each starting from the one before) -> encode ->
``output``; per-frame flicker (and IoU on a Cityscapes sequence with instance GT) go to
``<out>/runs/video/<name>/metrics.json``."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger

from segstyle.flows.runs import VIDEO_TIMEOUT_S, run_namer, segstyle_flow
from segstyle.tasks.stage import PrefectRunner
from segstyle_core.config import CompositeConfig, OutputConfig
from segstyle_core.fileio import write_json_atomic
from segstyle_core.stylize import StylizerConfig
from segstyle_core.video import io as video_io
from segstyle_core.video import job, stages
from segstyle_core.video.config import VIDEO_STYLIZER, VideoOptions
from segstyle_core.video.evaluate import has_instance_gt
from segstyle_core.video.track import TrackerConfig


def _input_frames(video: str, name: str, run: PrefectRunner) -> list[str]:
    """The input's frame files (a video file is decoded into the cache first)."""
    folder = video
    if video_io.is_container(video):
        record = run(stages.extract_frames, f"video-frames-{name}", video=video).result()
        folder = record.path("frames")
    return [str(p) for p in video_io.frame_files(folder)]


BACKENDS = {"tracker": TrackerConfig().backend, "stylizer": VIDEO_STYLIZER.backend}
NAMER = run_namer(lambda parameters: Path(parameters["video"]).stem, **BACKENDS)


@segstyle_flow("stylize_video", NAMER, VIDEO_TIMEOUT_S)
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
    """Stylize the object boxed on the start frame of ``video`` through the rest of it.

    Args:
        video: an MP4 (or other video file) or a folder of PNG frames.
        output: the result, ``.mp4`` (or another video suffix) or a folder; frames before the
            start frame are copied unchanged.
        box: ``"x0,y0,x1,y1"`` around the object on the start frame.
        tracker: how the mask follows the object (optical flow refined by GrabCut, or SAM 2).
        stylizer: the painter (default: the feed-forward network at ``video_options.height``).
        composite: object or background mode and the mask's soft edge.
        video_options: start frame, blend with the previous painting, height, chunk size.
        outputs: the output folder (cache and ``runs/video/<name>/metrics.json``).
    """
    logger = get_run_logger()
    job.check_video_job(video, output, tracker, stylizer, composite, video_options)
    name = Path(video).stem
    run = PrefectRunner(Path(outputs.out) / "cache")
    paths, fps = _input_frames(video, name, run), video_io.video_fps(video)
    start_frame, chunk_size = video_options.start_frame, video_options.chunk_size
    prompt = job.start_prompt(video, paths, start_frame, box)

    chunks: list[stages.ChunkRecord] = []
    for first in range(start_frame, len(paths), chunk_size):
        chunk = run(
            stages.stylize_video_chunk,
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
        flicker = job.mean_of([row["flicker"] for row in chunk.frames])
        shown = "n/a" if flicker is None else f"{flicker:.2f}"
        last, cached = first + len(chunk.frames) - 1, " (cached)" if chunk.cached else ""
        logger.info("frames %d-%d: mean flicker %s%s", first, last, shown, cached)
        chunks.append(chunk)
    frames = paths[:start_frame] + [path for chunk in chunks for path in chunk.paths("output")]
    masks = [path for chunk in chunks for path in chunk.paths("mask")]
    suffix = Path(output).suffix if video_io.is_container(output) else ""
    encoded = run(
        stages.encode_video, f"video-encode-{name}", frame_paths=frames, fps=fps, suffix=suffix
    ).result()
    target = video_io.publish_encoded(encoded.path("video"), output, fps)

    scored = paths[start_frame:]
    scores = None
    if has_instance_gt(scored):
        scores = run(
            stages.score_video,
            f"video-score-{name}",
            image_paths=scored,
            mask_paths=masks,
            box=list(prompt.box or ()),
        ).result()
    metrics = job.video_metrics(chunks, scores, target)
    write_json_atomic(Path(outputs.out) / "runs" / "video" / name / "metrics.json", metrics)
    done = "wrote %s (%d frames at %.3g fps); mean flicker %s, mean IoU %s"
    logger.info(done, target, len(paths), fps, metrics["mean_flicker"], metrics["mean_iou"])
    return str(target)
