"""SAM 2's video predictor as a :class:`~segstyle_core.video.track.MaskTracker`, and the SAM 2.1
variants and builder it shares with :mod:`.sam2_image`. SAM 2 reads a video as a folder of JPEG
frames: each run of frames is written to a temporary folder, prompted on its first frame and
propagated forward from a fresh memory."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segstyle_core import weights
from segstyle_core.errors import ConfigError
from segstyle_core.segment.base import Prompt, lookup_variant

_JPEG_QUALITY = 95

VARIANTS: dict[str, str] = {
    "hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
"""Variant -> the ``sam2`` package's config."""


def sam2_builder(name: str = "build_sam2") -> Callable[..., Any]:
    """``sam2.build_sam``'s builder ``name`` (ConfigError if ``sam2`` is not installed)."""
    try:
        from sam2 import build_sam
    except ImportError as exc:
        raise ConfigError(
            f"SAM 2 needs the sam2 package ({exc}): run `pip install sam2`, or use another "
            "backend (segmenter.backend: grabcut; tracker.backend: flow)"
        ) from None
    builder: Callable[..., Any] = getattr(build_sam, name)
    return builder


class Sam2VideoTracker:
    """The ``sam2`` tracker on ``variant`` filled from ``checkpoint``, on ``device`` (``"cpu"``,
    ``"cuda:0"``); ConfigError: no ``sam2``; WeightsError: the checkpoint is unreadable or does
    not fit."""

    name = "sam2"

    def __init__(self, variant: str, checkpoint: weights.CheckpointFile, device: str) -> None:
        config = lookup_variant(VARIANTS, variant, "SAM 2")
        build = sam2_builder("build_sam2_video_predictor")
        self.predictor = build(config, None, device="cpu")
        weights.load_weights(self.predictor, checkpoint.path, f"SAM 2 {variant}")
        self.predictor.to(device)
        self.variant = variant
        self.device = torch.device(device)
        self.weights_sha256: str | None = checkpoint.sha256

    def _prompt(self, state: dict[str, Any], start: Prompt | np.ndarray) -> None:
        if isinstance(start, np.ndarray):
            self.predictor.add_new_mask(state, frame_idx=0, obj_id=1, mask=start)
            return
        points = np.array(start.points, dtype=np.float32) if start.points else None
        labels = np.array(start.point_labels, dtype=np.int32) if start.points else None
        box = np.array(start.box, dtype=np.float32) if start.box is not None else None
        self.predictor.add_new_points_or_box(
            state, frame_idx=0, obj_id=1, points=points, labels=labels, box=box
        )

    def track(self, frames: Sequence[np.ndarray], start: Prompt | np.ndarray) -> list[np.ndarray]:
        """One ``H×W bool`` mask per frame (``H×W×3 uint8 RGB``), from ``start`` on ``frames[0]``
        (a prompt, or its known mask, which is returned as the first mask)."""
        masks: list[np.ndarray] = [np.zeros(frames[0].shape[:2], dtype=bool)] * len(frames)
        cuda = self.device.type == "cuda"
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cuda)
        with tempfile.TemporaryDirectory(prefix="segstyle-sam2-") as folder:
            for index, frame in enumerate(frames):
                Image.fromarray(frame).save(Path(folder) / f"{index}.jpg", quality=_JPEG_QUALITY)
            with torch.inference_mode(), autocast:
                state = self.predictor.init_state(video_path=folder)
                self._prompt(state, start)
                for index, _, logits in self.predictor.propagate_in_video(state):
                    masks[index] = (logits[0, 0] > 0).cpu().numpy()
        if isinstance(start, np.ndarray):
            masks[0] = start
        return masks
