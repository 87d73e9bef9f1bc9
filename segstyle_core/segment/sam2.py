"""SAM 2's video predictor as a :class:`~segstyle_core.video.track.MaskTracker` (optional).

Needs the ``sam2`` package (``pip install sam2``; imported only when a SAM 2 tracker is built)
and a SAM 2.1 checkpoint. The checkpoints are registered here, not in
:data:`segstyle_core.weights.CHECKPOINTS`: they are looked up in the same weights folder
(``--weights-dir`` > ``$SEGSTYLE_WEIGHTS_DIR`` > the user cache), but fetched by hand (the
:class:`~segstyle_core.errors.WeightsError` for a missing one says from where). Their file names
carry no hash, so they are not checked against a published SHA-256; the file's SHA-256 still
goes into every cache key, so another file never reuses old results.

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

_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_JPEG_QUALITY = 95


def _checkpoint(size: str, megabytes: int, letter: str) -> tuple[str, weights.Checkpoint]:
    filename = f"sam2.1_hiera_{size}.pt"
    entry = weights.Checkpoint(
        name=f"sam2.1_hiera_{size}",
        filename=filename,
        url=_URL + filename,
        sha256_prefix="",  # unpublished: see the module docstring
        size_hint=megabytes * 1_000_000,
        description=f"SAM 2.1 Hiera-{letter} video predictor",
    )
    return f"configs/sam2.1/sam2.1_hiera_{letter.lower()}.yaml", entry


#: Variant -> (the ``sam2`` package's config name, checkpoint).
VARIANTS: dict[str, tuple[str, weights.Checkpoint]] = {
    "hiera_tiny": _checkpoint("tiny", 156, "T"),
    "hiera_small": _checkpoint("small", 185, "S"),
    "hiera_base_plus": _checkpoint("base_plus", 324, "B+"),
    "hiera_large": _checkpoint("large", 898, "L"),
}


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

    Raises:
        ConfigError: unknown variant.
        WeightsError: the checkpoint is missing; the message names the file, where it was looked
            for and where to download it from.
    """
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(
                f"SAM 2 checkpoint {path} not found: check the --sam2-checkpoint path"
            )
        return path, file_sha256(path)
    entry = VARIANTS[check_variant(variant)][1]
    try:
        path = weights.find_checkpoint(entry, weights_dir)
    except WeightsError:
        folder = weights.weights_dir(weights_dir)
        raise WeightsError(
            f"SAM 2 checkpoint {entry.filename} not found in {folder}: download {entry.url} "
            f"into that folder (or pick the folder with --weights-dir or "
            f"${weights.ENV_WEIGHTS_DIR})"
        ) from None
    return path, file_sha256(path)


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


def _video_predictor_builder() -> Callable[..., Any]:
    """``sam2.build_sam.build_sam2_video_predictor``, imported on first use.

    Raises:
        ConfigError: the ``sam2`` package is not installed.
    """
    try:
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as exc:
        raise ConfigError(
            f"the SAM 2 tracker needs the sam2 package ({exc}): run `pip install sam2`, or use "
            "--segmenter grabcut"
        ) from None
    return build_sam2_video_predictor


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
        build = _video_predictor_builder()
        config = VARIANTS[check_variant(variant)][0]
        try:
            self.predictor = build(config, str(checkpoint), device=device)
        except (RuntimeError, KeyError, OSError, EOFError) as exc:
            raise WeightsError(
                f"cannot load SAM 2 checkpoint {checkpoint} as {variant} "
                f"({str(exc).splitlines()[0]}): use the {VARIANTS[variant][1].filename} file"
            ) from None
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
