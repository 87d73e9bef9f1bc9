"""Segmentation backends: :class:`SegmenterConfig` names results without loading and builds
each backend once per process; SAM and SAM 2 models load through :func:`load_model` (image
segmenters: :func:`load_segmenter`; SAM 2's video tracker: :func:`load_video_tracker`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from segstyle_core import devices, weights
from segstyle_core.backends import BackendConfig, BackendIdentity
from segstyle_core.segment.base import (
    Sam2Variant,
    SamPrecision,
    SamVariant,
    Segmenter,
    grabcut_variant,
)

if TYPE_CHECKING:
    import torch

    from segstyle_core.segment.sam import PromptSegmenter
    from segstyle_core.segment.sam2 import Sam2VideoTracker


class SegmenterConfig(BackendConfig):
    """The segmentation backend of a run: SAM or SAM 2 (need weights) or GrabCut (offline)."""

    backend: Literal["sam", "sam2", "grabcut"] = "sam"
    """sam: Segment Anything (needs its checkpoint); sam2: SAM 2.1 (needs its checkpoint);
    grabcut: OpenCV GrabCut, no weights."""
    sam_variant: SamVariant = "vit_l"
    """SAM's image encoder (the seed used ViT-L)."""
    sam2_variant: Sam2Variant = "hiera_large"
    """SAM 2: the SAM 2.1 Hiera image encoder."""
    checkpoint: str | None = None
    """A SAM or SAM 2 checkpoint file of your own (of the variant's architecture), identified
    by its full SHA-256; none: the official file of the variant."""
    multimask: bool = True
    """SAM, SAM 2: predict three masks per prompt and keep the best-scored one."""
    precision: SamPrecision = "auto"
    """SAM's and SAM 2's image encoder: auto = bfloat16 autocast where the device computes
    bfloat16 natively (GPUs of compute capability 8.0+, CPUs with AVX512-BF16 or AMX), else float32;
    float32; bfloat16 (forced, slow where emulated). The embedding goes back to float32 before
    the mask decoder."""
    grabcut_iterations: int = Field(default=5, ge=1, le=100)
    """GrabCut: iterations of its energy minimisation."""

    def _weights(self) -> tuple[str, weights.CheckpointFile]:
        """SAM's or SAM 2's variant and checkpoint."""
        variant: str = self.sam_variant if self.backend == "sam" else self.sam2_variant
        own, folder = self.checkpoint, self.weights_dir
        return variant, sam_checkpoint(self.backend, variant, own, "segmenter.checkpoint", folder)

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256, without loading the model (WeightsError: a
        checkpoint is missing or fails its checksum)."""
        if self.backend == "grabcut":
            return BackendIdentity("grabcut", grabcut_variant(self.grabcut_iterations), None)
        variant, checkpoint = self._weights()
        return BackendIdentity(self.backend, variant, checkpoint.sha256)

    def build(self, embedding_cache_dir: str | None = None) -> Segmenter:
        """The segmenter, loaded once per process; ``embedding_cache_dir``: SAM's on-disk
        image-embedding cache (none: no cache)."""

        def factory() -> Segmenter:
            if self.backend == "grabcut":
                from segstyle_core.segment.grabcut import GrabCutSegmenter

                return GrabCutSegmenter(iterations=self.grabcut_iterations)
            variant, checkpoint = self._weights()
            options = (self.device, embedding_cache_dir, self.multimask, self.precision)
            return load_segmenter(self.backend, variant, checkpoint, *options)

        return self.load_once(factory, embedding_cache_dir)


def sam_checkpoint(
    backend: str, variant: str, own: str | None, field: str, folder: str | None
) -> weights.CheckpointFile:
    """SAM's or SAM 2.1's (``backend``) checkpoint: ``own`` (from the setting ``field``), else
    ``variant``'s official one in ``folder`` (raises as :func:`.weights.resolve_checkpoint`)."""
    official = f"{'sam' if backend == 'sam' else 'sam2.1'}_{variant}"
    return weights.resolve_checkpoint(own, field, official, folder)


def load_segmenter(
    backend: Literal["sam", "sam2"],
    variant: str,
    checkpoint: weights.CheckpointFile,
    device: str = "auto",
    embedding_cache_dir: str | Path | None = None,
    multimask: bool = True,
    precision: SamPrecision = "auto",
) -> PromptSegmenter:
    """SAM's or SAM 2's segmenter on ``variant``'s model filled from ``checkpoint`` (shared as
    :func:`load_model`); the options: :class:`~.sam.PromptSegmenter`'s (ConfigError: unknown
    variant, device or precision, no ``sam2`` package; WeightsError: unsafe, corrupt or for
    another architecture)."""
    from segstyle_core.segment.sam import SamSegmenter
    from segstyle_core.segment.sam2_image import Sam2ImageSegmenter  # imports no sam2 package

    segmenter: type[PromptSegmenter] = SamSegmenter if backend == "sam" else Sam2ImageSegmenter
    resolved = devices.resolve_device(device)
    model = load_model(
        backend, segmenter.architecture, segmenter.label, variant, checkpoint, resolved
    )
    return segmenter(model, variant, checkpoint.sha256, embedding_cache_dir, multimask, precision)


def load_video_tracker(
    variant: str, checkpoint: weights.CheckpointFile, device: str = "auto"
) -> Sam2VideoTracker:
    """SAM 2's video tracker on ``variant``'s predictor filled from ``checkpoint`` (raises as
    :func:`load_segmenter`)."""
    from segstyle_core.segment.sam2 import Sam2VideoTracker, sam2_model

    architecture = functools.partial(sam2_model, builder="build_sam2_video_predictor")
    resolved = devices.resolve_device(device)
    predictor = load_model("sam2-video", architecture, "SAM 2", variant, checkpoint, resolved)
    return Sam2VideoTracker(predictor, variant, checkpoint.sha256, resolved)


def load_model(
    kind: str,
    architecture: Callable[[str], torch.nn.Module],
    label: str,
    variant: str,
    checkpoint: weights.CheckpointFile,
    device: torch.device,
) -> torch.nn.Module:
    """``architecture(variant)`` (named ``label`` in errors) filled from ``checkpoint``, in eval
    mode on ``device``, loaded once per ``kind``, variant, device and weights (WeightsError)."""

    def load() -> torch.nn.Module:
        model = architecture(variant)
        weights.load_weights(model, checkpoint.path, f"{label} {variant}")
        return model.eval().to(device)

    devices.autotune_convolutions(device)  # SAM's image encoder always sees 1024 px
    key = (kind, variant, str(device), checkpoint.sha256)
    return devices.MODELS.get_or_create(key, load)
