"""Video: I/O round trips, mask tracking, temporally stable stylization, the flow and the CLI.

Most checks run on the generated clip (:mod:`segstyle_core.demo.clip`): a car changing lanes
in a still street, 256×128, 24 frames, 4 px per frame, with per-frame Cityscapes GT.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segstyle_core.cityscapes import frame_from_image_path
from segstyle_core.demo.clip import Clip, generate_clip
from segstyle_core.errors import ConfigError, InputError, WeightsError
from segstyle_core.images import read_label_map, read_rgb
from segstyle_core.metrics import iou
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.grabcut import GrabCutSegmenter
from segstyle_core.styles import style_path
from segstyle_core.stylize.feedforward import FeedForwardStylizer
from segstyle_core.video.evaluate import gt_track, track_scores
from segstyle_core.video.io import iter_frames, video_fps, write_video
from segstyle_core.video.temporal import TemporalOptions, stylize_chunk, stylize_frame
from segstyle_core.video.track import FlowTracker, TrackerConfig, carry_mask, motion, warp


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    return generate_clip(tmp_path_factory.mktemp("clip") / "cityscapes")


@pytest.fixture(scope="module")
def frames(clip: Clip) -> list[np.ndarray]:
    return [read_rgb(path) for path in clip.image_paths]


@pytest.fixture(scope="module")
def truth(clip: Clip) -> list[np.ndarray]:
    return gt_track([frame_from_image_path(p) for p in clip.image_paths], clip.boxes[0])


@pytest.fixture(scope="module")
def tracked(frames: list[np.ndarray], clip: Clip) -> list[np.ndarray]:
    return FlowTracker(GrabCutSegmenter()).track(frames, Prompt(box=clip.boxes[0]))


@pytest.fixture(scope="module")
def stylizer() -> FeedForwardStylizer:
    return FeedForwardStylizer(content_size=None, threads=1)


def _probe(path: str | Path) -> tuple[float, int, int, int]:
    """A written video's frame rate, width, height and frame count (decoded)."""
    frames = list(iter_frames(path))
    return video_fps(path), frames[0].shape[1], frames[0].shape[0], len(frames)


def _moving_pattern(count: int, height: int, width: int) -> list[np.ndarray]:
    """Smooth colour gradients sliding 2 px per frame (compress well, decode close)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return [
        np.stack(
            [
                127 + 100 * np.sin((xs + 2 * i) / 9.0),
                127 + 100 * np.cos(ys / 7.0),
                127 + 100 * np.sin((xs + ys + 2 * i) / 13.0),
            ],
            axis=-1,
        ).astype(np.uint8)
        for i in range(count)
    ]


# ----------------------------------------------------------------------------- I/O


@pytest.mark.parametrize("fps", ["NaN", "Infinity", "1e-9", "1e9", "0", '"17"'])
def test_a_frame_rate_outside_what_a_video_can_store_is_one_line(tmp_path: Path, fps: str) -> None:
    """NaN and inf broke the encoder's fraction (ValueError, OverflowError), 1e-9 was written
    as 24 fps and 1e9 kept: each sidecar now gets the sidecar's own message and fix."""
    (tmp_path / "video.json").write_text(f'{{"fps": {fps}}}')
    with pytest.raises(InputError, match=r'video.json: unreadable .*write \{"fps": 17.0\}'):
        video_fps(tmp_path)
    if fps != '"17"':  # and no video or sidecar is written at such a rate
        with pytest.raises(ConfigError, match="not between 0.01 and 10000; give a frame rate"):
            write_video(tmp_path / "out", iter(_moving_pattern(2, 16, 16)), json.loads(fps))
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "size"), [("clip.mp4", (64, 48)), ("odd.mp4", (63, 47))])
def test_mp4_round_trip_keeps_rate_size_and_frames(
    tmp_path: Path, name: str, size: tuple[int, int]
) -> None:
    width, height = size
    frames = _moving_pattern(10, height, width)
    path = write_video(tmp_path / name, iter(frames), fps=12.5)
    assert _probe(path) == (12.5, width, height, 10)
    decoded = list(iter_frames(path))
    errors = [
        np.abs(back.astype(int) - original).mean()
        for original, back in zip(frames, decoded, strict=True)
    ]
    shifted = [
        np.abs(back.astype(int) - later).mean()
        for later, back in zip(frames[1:], decoded[:-1], strict=True)
    ]
    assert all(back.shape == frames[0].shape and back.dtype == np.uint8 for back in decoded)
    assert max(errors) < 5.0 < min(shifted)  # H.264 at crf 18, frames in their order
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_frame_folder_round_trip_is_exact_and_drops_stale_frames(tmp_path: Path) -> None:
    frames = _moving_pattern(6, 40, 56)
    folder = write_video(tmp_path / "frames", frames, fps=24.0)
    assert _probe(folder) == _probe(write_video(tmp_path / "again", iter(frames), fps=24.0))
    assert _probe(folder) == (24.0, 56, 40, 6)
    assert all(np.array_equal(a, b) for a, b in zip(frames, iter_frames(folder), strict=True))
    write_video(folder, frames[:2], fps=5.0)
    assert _probe(folder) == (5.0, 56, 40, 2)


def test_bad_video_input_and_output_raise_input_errors(tmp_path: Path) -> None:
    frames = _moving_pattern(3, 32, 32)
    with pytest.raises(InputError, match="frame 1 is 30x32"):
        write_video(tmp_path / "mixed.mp4", [frames[0], frames[1][:, :30]], fps=10)
    assert not list(tmp_path.iterdir())
    with pytest.raises(InputError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=10)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="broken.mp4"):
        list(iter_frames(tmp_path / "broken.mp4"))
    with pytest.raises(InputError, match="no such video file or frame folder"):
        list(iter_frames(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="fps"):
        write_video(tmp_path / "x.mp4", frames, fps=0)


# ----------------------------------------------------------------------------- the clip


def test_clip_is_a_cityscapes_sequence_whose_gt_follows_the_car(
    clip: Clip, truth: list[np.ndarray]
) -> None:
    assert _probe(clip.frames_dir) == (clip.fps, 256, 128, 24)
    for path, mask, instance_id in zip(clip.image_paths, truth, clip.instance_ids, strict=True):
        instance_map = read_label_map(frame_from_image_path(path).instance_ids_path)
        assert np.array_equal(mask, instance_map == instance_id)
    rears = [np.nonzero(mask.any(axis=0))[0].min() for mask in truth]  # rear left corner
    assert np.mean(np.diff(rears)) == pytest.approx(4.0, abs=0.5)


# ----------------------------------------------------------------------------- tracking


def _smooth_texture(rng: np.random.Generator, shape: tuple[int, ...], px: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.normal(0, 1, shape).astype(np.float32), (0, 0), px)
    return ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)


@pytest.mark.parametrize(("model", "least_iou"), [("similarity", 0.95), ("dense", 0.8)])
def test_carry_mask_follows_a_moving_textured_square(model: str, least_iou: float) -> None:
    """A textured 48 px square moves (5, 3) px over a still textured background."""
    rng = np.random.default_rng(0)
    background = np.repeat(_smooth_texture(rng, (128, 192), 2.0)[..., None], 3, axis=2)
    square = _smooth_texture(rng, (48, 48, 3), 1.5)
    before, after = background.copy(), background.copy()
    before[40:88, 60:108] = square
    after[43:91, 65:113] = square
    mask = np.zeros((128, 192), dtype=bool)
    mask[40:88, 60:108] = True
    moved = np.zeros_like(mask)
    moved[43:91, 65:113] = True
    carried = carry_mask(mask, before, after, model)
    assert iou(carried, moved) > least_iou
    # The background uncovered behind the square: warping alone would keep most of it.
    uncovered = (slice(40, 88), slice(60, 65))
    warped = warp(mask.astype(np.float32), motion(before, after).backward) >= 0.5
    assert carried[uncovered].mean() < 0.5 < warped[uncovered].mean()


def test_tracking_beats_reusing_the_first_mask(
    clip: Clip, tracked: list[np.ndarray], truth: list[np.ndarray]
) -> None:
    first = truth[0]
    assert iou(tracked[0], first) > 0.55  # GrabCut on frame 0 from the box
    reused = track_scores([tracked[0]] * len(truth), truth)["mean_iou"]
    scores = track_scores(tracked, truth)
    assert scores["mean_iou"] > 0.6 > 0.4 > reused
    assert min(scores["iou"][-6:]) > 0.5  # still on the car at the end, 90 px from the start


# ----------------------------------------------------------------------------- stylization


def _run(
    stylizer: FeedForwardStylizer,
    frames: list[np.ndarray],
    masks: list[np.ndarray],
    options: TemporalOptions,
) -> tuple[list[np.ndarray], list[float]]:
    style = read_rgb(style_path())
    previous = None
    outputs, flickers = [], []
    for frame, mask in zip(frames, masks, strict=True):
        previous, flicker = stylize_frame(stylizer, style, frame, mask, previous, options)
        outputs.append(previous.output)
        if flicker is not None:
            flickers.append(flicker)
    return outputs, flickers


def test_blending_lowers_flicker_and_keeps_the_background(
    stylizer: FeedForwardStylizer, frames: list[np.ndarray], tracked: list[np.ndarray]
) -> None:
    plain, plain_flicker = _run(stylizer, frames, tracked, TemporalOptions(blend=0.0))
    blended, blended_flicker = _run(stylizer, frames, tracked, TemporalOptions(blend=0.6))
    assert len(plain_flicker) == len(blended_flicker) == len(frames) - 1
    assert np.mean(blended_flicker) < 0.7 * np.mean(plain_flicker)
    for frame, mask, output in zip(frames, tracked, blended, strict=True):
        assert np.array_equal(output[~mask], frame[~mask])  # hard edge: outside untouched
        assert np.abs(output[mask].astype(int) - frame[mask]).mean() > 10  # inside: painted


def test_chunks_chained_by_their_carry_equal_one_pass(
    tmp_path: Path, clip: Clip, stylizer: FeedForwardStylizer
) -> None:
    paths = clip.image_paths[:5]
    tracker = FlowTracker(GrabCutSegmenter())
    style = read_rgb(style_path())
    options = TemporalOptions(blend=0.5, feather_px=1.0)
    start = Prompt(box=clip.boxes[0])
    whole = stylize_chunk(paths, 0, start, tracker, stylizer, style, options, tmp_path / "a")
    head = stylize_chunk(paths[:2], 0, start, tracker, stylizer, style, options, tmp_path / "b")
    tail = stylize_chunk(
        paths[2:], 2, head.carry(), tracker, stylizer, style, options, tmp_path / "c"
    )
    assert [row["index"] for row in tail.frames] == [2, 3, 4]
    assert whole.frames == head.frames + tail.frames
    for kind in ("output", "mask"):
        joined = head.paths(kind) + tail.paths(kind)
        for a, b in zip(whole.paths(kind), joined, strict=True):
            assert np.array_equal(read_rgb(a), read_rgb(b))


# ----------------------------------------------------------------------------- SAM 2


def test_sam2_without_checkpoint_says_where_to_get_it(tmp_path: Path) -> None:
    tracker = TrackerConfig(backend="sam2", sam2_variant="hiera_small", weights_dir=str(tmp_path))
    with pytest.raises(WeightsError, match=r"sam2\.1_hiera_small\.pt not found in .*https://"):
        tracker.identity()
    with pytest.raises(ConfigError, match="hiera_tiny"):
        TrackerConfig(backend="sam2", sam2_variant="vit_l")


def test_sam2_without_the_package_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sam2", None)  # makes `import sam2...` fail
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"placeholder")
    tracker = TrackerConfig(backend="sam2", weights_dir=str(tmp_path), device="cpu")
    with pytest.raises(ConfigError, match="pip install sam2"):
        tracker.build()


@pytest.mark.slow
def test_sam2_tracker_runs_with_random_weights(tmp_path: Path, frames: list[np.ndarray]) -> None:
    """The real SAM 2 code path, on a randomly initialised Hiera-T (masks are meaningless)."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    model = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu")
    torch.save({"model": model.state_dict()}, tmp_path / "sam2.1_hiera_tiny.pt")
    tracker = TrackerConfig(backend="sam2", weights_dir=str(tmp_path), device="cpu").build()
    start = np.zeros(frames[0].shape[:2], dtype=bool)
    start[60:100, 10:80] = True
    masks = tracker.track(frames[:2], start)
    assert masks[0] is start
    assert masks[1].shape == start.shape and masks[1].dtype == bool


# ----------------------------------------------------------------------------- flow and CLI


def test_cli_video_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    from segstyle.flows.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["video", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--box", "--style", "--segmenter", "--blend", "--feather", "--mode", "--out"):
        assert option in text


def test_cli_video_builds_the_flow_models_from_its_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle.flows import cli, video
    from segstyle_core.config import CompositeConfig, OutputConfig
    from segstyle_core.video.config import VIDEO_STYLIZER, VideoOptions

    calls: dict[str, Any] = {}

    def run_flow(flow: Any, *parameters: Any) -> int:
        calls.update(flow=flow, args=parameters)
        return 0

    monkeypatch.setattr(cli, "_run_flow", run_flow)
    argv = ["video", "in.mp4", "--box", "1,2,30,40", "-o", "out.mp4", "--device", "cpu"]
    argv += ["--start-frame", "3", "--height", "none", "--feather", "2", "--mode", "background"]
    argv += ["--strength", "0.5", "--chunk-size", "4", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert calls["flow"] is video.stylize_video
    tracker, stylizer, composite, options, outputs = calls["args"][3:]
    assert calls["args"][:3] == ("in.mp4", "out.mp4", "1,2,30,40")
    assert tracker == TrackerConfig(
        device="cpu", segmenter=TrackerConfig().segmenter.changed(device="cpu")
    )
    assert stylizer == VIDEO_STYLIZER.changed(device="cpu", strength=0.5)
    assert composite == CompositeConfig(mode="background", feather_px=2.0)
    assert options == VideoOptions(start_frame=3, height=None, chunk_size=4)
    assert outputs == OutputConfig(out=str(tmp_path))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_flow_stylizes_the_clip_and_a_second_run_is_all_cached(tmp_path: Path, clip: Clip) -> None:
    from segstyle.flows.video import stylize_video
    from segstyle_core.config import OutputConfig
    from segstyle_core.video.config import VideoOptions

    params = {
        "video": str(clip.frames_dir),
        "output": str(tmp_path / "styled"),
        "box": ",".join(str(v) for v in clip.boxes[2]),
        "video_options": VideoOptions(start_frame=2, height=None, chunk_size=8),
        "outputs": OutputConfig(out=str(tmp_path / "artifacts")),
    }
    first = stylize_video(**params, return_state=True)
    assert first.is_completed(), first.message
    styled = Path(first.result())
    assert _probe(styled) == (clip.fps, 256, 128, 24)
    frames = list(iter_frames(styled))
    originals = [read_rgb(p) for p in clip.image_paths]
    assert all(np.array_equal(frames[i], originals[i]) for i in (0, 1))  # before start_frame
    assert all(not np.array_equal(frames[i], originals[i]) for i in range(2, 24))
    metrics = json.loads((tmp_path / "artifacts/runs/video/clip/metrics.json").read_text())
    assert [row["index"] for row in metrics["frames"]] == list(range(2, 24))
    assert metrics["mean_iou"] > 0.6 and metrics["mean_flicker"] > 0

    second = stylize_video(**params, return_state=True)
    assert second.is_completed(), second.message
    runs = _final_task_runs(second.state_details.flow_run_id, count=5)
    assert sorted(run.name for run in runs) == sorted(
        [
            "video-chunk-2",
            "video-chunk-10",
            "video-chunk-18",
            "video-encode-clip",
            "video-score-clip",
        ]
    )
    assert {run.state.name for run in runs} == {"Cached"}


def _final_task_runs(flow_run_id: Any, count: int) -> list[Any]:
    """The flow run's task runs, polled until ``count`` are final (Prefect reports task runs
    to its server through events, which arrive shortly after the flow returns)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + 60
    while True:
        time.sleep(1)
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        final = sum(bool(run.state and run.state.is_final()) for run in runs)
        if final >= count or time.monotonic() > deadline:
            return runs


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_flow_reads_and_writes_mp4(tmp_path: Path, clip: Clip) -> None:
    from segstyle.flows.video import stylize_video
    from segstyle_core.config import OutputConfig
    from segstyle_core.video.config import VideoOptions

    source = write_video(tmp_path / "street.mp4", (read_rgb(p) for p in clip.image_paths[:8]), 10)
    state = stylize_video(
        video=str(source),
        output=str(tmp_path / "styled.mp4"),
        box=",".join(str(v) for v in clip.boxes[0]),
        video_options=VideoOptions(height=None, chunk_size=5),
        outputs=OutputConfig(out=str(tmp_path / "artifacts")),
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert _probe(state.result()) == (10.0, 256, 128, 8)
    metrics = json.loads((tmp_path / "artifacts/runs/video/street/metrics.json").read_text())
    assert metrics["mean_iou"] is None and metrics["mean_flicker"] > 0  # no ground truth here
    assert len(metrics["frames"]) == 8


def test_video_output_may_not_be_or_hold_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``video -o`` into its own input folder (or onto it, or around it) is refused before any
    work: exit 2 and one line; the input's frames are untouched."""
    from segstyle.flows.cli import EXIT_ERROR, main

    frames = tmp_path / "clip" / "frames"
    frames.mkdir(parents=True)
    (frames / "000000.png").write_bytes(b"not decoded before the check")
    for output in (frames, frames / "styled", frames / "out.mp4", tmp_path / "clip"):
        argv = ["video", str(frames), "--box", "1,2,30,40", "-o", str(output)]
        assert main([*argv, "--out", str(tmp_path / "out")]) == EXIT_ERROR
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "is, holds or lies inside the input" in line, line
    assert sorted(p.name for p in frames.iterdir()) == ["000000.png"]
    assert not (tmp_path / "out").exists()


def test_the_refining_segmenters_own_device_is_checked_before_any_frame(tmp_path: Path) -> None:
    """A flow run's parameters may give the flow tracker's segmenter a device of its own."""
    from segstyle_core.config import CompositeConfig, SegmenterConfig, StylizerConfig
    from segstyle_core.video.config import VideoOptions
    from segstyle_core.video.job import check_video_job
    from segstyle_core.video.track import TrackerConfig

    refiner = SegmenterConfig(backend="grabcut", device="cuda:99")  # no machine has 100 GPUs
    tracker = TrackerConfig(segmenter=refiner)
    stylizer = StylizerConfig(backend="feedforward")
    args = (stylizer, CompositeConfig(), VideoOptions())
    with pytest.raises(ConfigError, match=r"^tracker\.segmenter\.device: device 'cuda:99'"):
        check_video_job(str(tmp_path / "in.mp4"), str(tmp_path / "out.mp4"), tracker, *args)
    assert not (tmp_path / "out.mp4").exists()
