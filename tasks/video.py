"""The stage tasks of the video flow, one per stage of :mod:`segstyle_core.video.stages`."""

from __future__ import annotations

from segstyle.tasks.stage import stage_task
from segstyle_core.video import stages

extract_frames = stage_task(stages.extract_frames, "video-frames-{name}")
stylize_video_chunk = stage_task(stages.stylize_video_chunk, "video-chunk-{first_index}")
encode_video = stage_task(stages.encode_video, "video-encode-{name}")
score_video = stage_task(stages.score_video, "video-score-{name}")
