"""A video run's own settings, beside the shared models of :mod:`segstyle_core.config`."""

from __future__ import annotations

from pydantic import Field

from segstyle_core.backends import ConfigModel
from segstyle_core.stylize import StylizerConfig

#: A video run's default stylizer (Gatys works too, at minutes a frame).
VIDEO_STYLIZER = StylizerConfig(backend="feedforward")


class VideoOptions(ConfigModel):
    """Which frames a video run paints, how steadily, at what size, in what steps."""

    start_frame: int = Field(default=0, ge=0)
    """Frame the box is drawn on; frames before it are copied unchanged."""
    blend: float = Field(default=0.6, ge=0.0, lt=1.0)
    """Weight of the previous frame's painting carried along the optical flow (0: every frame
    painted on its own)."""
    height: int | None = 512
    """Working height of the feed-forward stylizer in pixels; none: the frame's own."""
    chunk_size: int = Field(default=8, ge=1)
    """Frames per cached, retried task (chunks run one after the other)."""
