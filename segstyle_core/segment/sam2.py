"""SAM 2.1's builder, and its video predictor as a :class:`~segstyle_core.video.track.MaskTracker`:
each run of frames is written to a temporary folder of JPEG frames (what SAM 2 reads), prompted on
its first frame and propagated forward from a fresh memory."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from PIL import Image

from segstyle_core.errors import ConfigError
from segstyle_core.segment.base import Prompt, Sam2Variant
from segstyle_core.weights import lookup

_JPEG_QUALITY = 95


def sam2_model(variant: str, builder: str = "build_sam2", **options: Any) -> Any:
    """``variant``'s untrained SAM 2.1 model on the CPU by ``sam2.build_sam``'s ``builder`` from
    the package's config (ConfigError: no ``sam2`` package, an unknown variant)."""
    try:
        from sam2 import build_sam
    except ImportError as exc:
        raise ConfigError(
            f"SAM 2 needs the sam2 package ({exc}): run `pip install sam2`, or use another "
            "backend (segmenter.backend: grabcut; tracker.backend: flow)"
        ) from None
    configs = {  # hiera_base_plus: facebook/sam2.1-hiera-base-plus
        name: build_sam.HF_MODEL_ID_TO_FILENAMES[f"facebook/sam2.1-{name.replace('_', '-')}"][0]
        for name in get_args(Sam2Variant)
    }
    config = lookup(configs, variant, "SAM 2 variant")
    return getattr(build_sam, builder)(config, None, device="cpu", **options)


@dataclass(eq=False)
class Sam2VideoTracker:
    """The ``sam2`` video ``predictor`` (loaded: :func:`~segstyle_core.segment.load_video_tracker`)
    of ``variant`` with weights ``weights_sha256``, on ``device``."""

    predictor: Any
    variant: str
    weights_sha256: str | None
    device: torch.device
    name: str = field(default="sam2", init=False)

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
