"""SAM 2's video predictor as a :class:`~segstyle_core.video.track.MaskTracker`, and the SAM 2.1
variants and checkpoint lookup it shares with the image segmenter
(:mod:`segstyle_core.segment.sam2_image`).

Needs the ``sam2`` package (imported only when a SAM 2 model is built) and a SAM 2.1
checkpoint. The official checkpoints are entries of :data:`segstyle_core.weights.CHECKPOINTS`
(``sam2.1_hiera_tiny`` ...): looked up in the weights folder (``--weights-dir`` >
``$SEGSTYLE_WEIGHTS_DIR`` > the user cache) and fetched with ``segstyle weights download``.
Meta publishes no hash for them, so only the full SHA-256 recorded at download
(``<file>.sha256``) is checked; the file's SHA-256 goes into every cache key and result row, so
another file never reuses old results.

SAM 2 reads a video as a folder of JPEG frames: each run of frames is written to a temporary
folder, prompted on its first frame (a box and/or points, or the mask the previous run ended
with) and propagated forward. Each run starts a fresh SAM 2 memory from that mask.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segstyle_core import weights
from segstyle_core.backends import BackendIdentity
from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.fileio import file_sha256
from segstyle_core.segment.base import Prompt

_JPEG_QUALITY = 95


def _variant(size: str, letter: str) -> tuple[str, weights.Checkpoint]:
    config = f"configs/sam2.1/sam2.1_hiera_{letter.lower()}.yaml"
    return config, weights.CHECKPOINTS[f"sam2.1_hiera_{size}"]


#: Variant -> (the ``sam2`` package's config name, official checkpoint).
VARIANTS: dict[str, tuple[str, weights.Checkpoint]] = {
    "hiera_tiny": _variant("tiny", "t"),
    "hiera_small": _variant("small", "s"),
    "hiera_base_plus": _variant("base_plus", "b+"),
    "hiera_large": _variant("large", "l"),
}
SAM2_VARIANTS = tuple(VARIANTS)


def check_variant(variant: str) -> str:
    """``variant`` if it is a SAM 2 variant.

    Raises:
        ConfigError: unknown variant (the message lists them).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown SAM 2 variant {variant!r}: use one of {', '.join(VARIANTS)}")
    return variant


def sam2_checkpoint(
    variant: str, checkpoint: str | None = None, weights_dir: str | None = None
) -> tuple[Path, str]:
    """The checkpoint file of a SAM 2 tracker and its SHA-256.

    Args:
        variant: a key of :data:`VARIANTS` (names the official file).
        checkpoint: a checkpoint file of your own (wins over the variant's official file).
        weights_dir: the checkpoints folder (default: ``$SEGSTYLE_WEIGHTS_DIR``, else the user
            cache).

    Returns:
        The file and its full SHA-256 (an official file is first checked against the full hash
        recorded at its download, see :func:`segstyle_core.weights.verify_checkpoint`).

    Raises:
        ConfigError: unknown variant.
        WeightsError: the checkpoint is missing (the message names the file, where it was
            looked for, the download command and address) or fails its recorded hash.
    """
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(
                f"SAM 2 checkpoint {path} not found: fix the checkpoint path, or leave it out "
                f"to use the downloaded official {VARIANTS[check_variant(variant)][1].name}"
            )
        return path, file_sha256(path)
    entry = VARIANTS[check_variant(variant)][1]
    try:
        path = weights.find_checkpoint(entry, weights_dir)
    except WeightsError:
        folder = weights.weights_dir(weights_dir)
        raise WeightsError(
            f"SAM 2 checkpoint {entry.filename} not found in {folder}: run `segstyle weights "
            f"download {entry.name}` (from {entry.url}; pick the folder with --weights-dir or "
            f"${weights.ENV_WEIGHTS_DIR})"
        ) from None
    return path, weights.verify_checkpoint(path, entry)


def sam2_identity(
    variant: str, checkpoint: str | None = None, weights_dir: str | None = None
) -> BackendIdentity:
    """Name (``sam2``), variant and weights SHA-256 of a SAM 2 tracker, without loading it
    (arguments as :func:`sam2_checkpoint`).

    Raises:
        WeightsError: the checkpoint is missing.
    """
    _, digest = sam2_checkpoint(variant, checkpoint, weights_dir)
    return BackendIdentity("sam2", variant, digest)


def sam2_builder(name: str = "build_sam2") -> Callable[..., Any]:
    """A model builder of ``sam2.build_sam`` (``build_sam2``, ``build_sam2_video_predictor``),
    imported on first use.

    Raises:
        ConfigError: the ``sam2`` package is not installed.
    """
    try:
        from sam2 import build_sam
    except ImportError as exc:
        raise ConfigError(
            f"SAM 2 needs the sam2 package ({exc}): run `pip install sam2`, or use "
            "--segmenter grabcut"
        ) from None
    builder: Callable[..., Any] = getattr(build_sam, name)
    return builder


def load_sam2_weights(model: torch.nn.Module, checkpoint: Path, variant: str) -> None:
    """Fill a SAM 2 model built without weights from ``checkpoint`` (``weights_only`` load of
    a plain state dict or of the official ``{"model": state dict}``), every parameter present.

    Raises:
        WeightsError: unsafe/corrupt checkpoint, or one made for another architecture.
    """
    state_dict = weights.load_state_dict(checkpoint)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise WeightsError(
            f"checkpoint {checkpoint} does not fit SAM 2 {variant} "
            f"({str(exc).splitlines()[0]}): pass the variant it was trained as"
        ) from None


class Sam2VideoTracker:
    """The ``sam2`` tracker backend (see the module docstring).

    Args:
        variant: a key of :data:`VARIANTS`.
        checkpoint: the checkpoint file.
        device: torch device string (``"cpu"``, ``"cuda:0"``).
        weights_sha256: the checkpoint's SHA-256 (for records).

    Raises:
        ConfigError: ``sam2`` is not installed.
        WeightsError: the checkpoint does not fit the variant or cannot be read.
    """

    name = "sam2"

    def __init__(self, variant: str, checkpoint: Path, device: str, weights_sha256: str) -> None:
        build = sam2_builder("build_sam2_video_predictor")
        config = VARIANTS[check_variant(variant)][0]
        self.predictor = build(config, None, device="cpu")
        load_sam2_weights(self.predictor, checkpoint, variant)
        self.predictor.to(device)
        self.variant = variant
        self.device = torch.device(device)
        self.weights_sha256: str | None = weights_sha256

    def _prompt(self, state: dict[str, Any], start: Prompt | np.ndarray) -> None:
        """Put ``start`` on frame 0 of ``state`` as object 1."""
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
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
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
