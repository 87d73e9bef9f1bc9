"""Segmentation backends and their configuration.

A backend is described by a frozen :class:`SegmenterConfig` (hashed into cache keys, passed
between Prefect tasks, rendered as a form in the Prefect UI). Its :meth:`~SegmenterConfig.identity`
names the results without loading the model; :meth:`~SegmenterConfig.build` loads each distinct
backend once per process (see :func:`segstyle_core.backends.load_once`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from segstyle_core import weights
from segstyle_core.backends import BackendConfig, BackendIdentity
from segstyle_core.segment.base import MaskPrediction, Prompt, Segmenter, grabcut_variant

SEGMENTERS = ("sam", "sam2", "grabcut")
SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")
SamPrecision = Literal["auto", "float32", "bfloat16"]
SAM_PRECISIONS: tuple[SamPrecision, ...] = ("auto", "float32", "bfloat16")

__all__ = [
    "SAM_PRECISIONS",
    "SAM_VARIANTS",
    "SEGMENTERS",
    "MaskPrediction",
    "Prompt",
    "SamPrecision",
    "Segmenter",
    "SegmenterConfig",
]


class SegmenterConfig(BackendConfig):
    """The segmentation backend of a run: SAM or SAM 2 (need weights) or GrabCut (offline)."""

    backend: Literal["sam", "sam2", "grabcut"] = "sam"
    """sam: Segment Anything (needs its checkpoint); sam2: SAM 2.1 (needs its checkpoint);
    grabcut: OpenCV GrabCut, no weights."""
    sam_variant: Literal["vit_b", "vit_l", "vit_h"] = "vit_l"
    """SAM's image encoder (the seed used ViT-L)."""
    sam2_variant: Literal["hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"] = (
        "hiera_large"
    )
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
    grabcut_iterations: int = Field(default=5, ge=1)
    """GrabCut: iterations of its energy minimisation."""

    def _sam_checkpoint(self) -> tuple[Path, str]:
        """The SAM checkpoint file and its full SHA-256 (official files: verified prefix)."""
        if self.checkpoint:
            return weights.own_checkpoint(self.checkpoint, "--checkpoint")
        name = f"sam_{self.sam_variant}"
        path = weights.find_checkpoint(name, self.weights_dir)
        return path, weights.verify_checkpoint(path, name)

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256, without loading the model.

        Raises:
            WeightsError: a SAM or SAM 2 checkpoint is missing or fails its checksum.
        """
        if self.backend == "sam":
            return BackendIdentity("sam", self.sam_variant, self._sam_checkpoint()[1])
        if self.backend == "sam2":
            from segstyle_core.segment.sam2 import sam2_identity

            return sam2_identity(self.sam2_variant, self.checkpoint, self.weights_dir)
        return BackendIdentity("grabcut", grabcut_variant(self.grabcut_iterations), None)

    def build(self, embedding_cache_dir: str | None = None) -> Segmenter:
        """The segmenter, loaded once per process and reused.

        Args:
            embedding_cache_dir: SAM's and SAM 2's on-disk image-embedding cache (none: no cache).
        """

        def factory() -> Segmenter:
            if self.backend == "sam":
                from segstyle_core.segment.sam import SamSegmenter

                path, _ = self._sam_checkpoint()
                return SamSegmenter(
                    variant=self.sam_variant,
                    checkpoint=path,
                    device=self.device,
                    embedding_cache_dir=Path(embedding_cache_dir) if embedding_cache_dir else None,
                    multimask=self.multimask,
                    precision=self.precision,
                )
            if self.backend == "sam2":
                from segstyle_core.segment.sam2 import sam2_checkpoint
                from segstyle_core.segment.sam2_image import Sam2ImageSegmenter

                path, _ = sam2_checkpoint(self.sam2_variant, self.checkpoint, self.weights_dir)
                return Sam2ImageSegmenter(
                    variant=self.sam2_variant,
                    checkpoint=path,
                    device=self.device,
                    embedding_cache_dir=embedding_cache_dir,
                    multimask=self.multimask,
                    precision=self.precision,
                )
            from segstyle_core.segment.grabcut import GrabCutSegmenter

            return GrabCutSegmenter(iterations=self.grabcut_iterations)

        return self.load_once(factory, embedding_cache_dir)
