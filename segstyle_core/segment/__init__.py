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
from segstyle_core.fileio import file_sha256
from segstyle_core.segment.base import MaskPrediction, Prompt, Segmenter

SEGMENTERS = ("sam", "grabcut")
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
    """The segmentation backend of a run: SAM (needs weights) or GrabCut (offline)."""

    backend: Literal["sam", "grabcut"] = "sam"
    """sam: Segment Anything (needs its checkpoint); grabcut: OpenCV GrabCut, no weights."""
    sam_variant: Literal["vit_b", "vit_l", "vit_h"] = "vit_l"
    """SAM's image encoder (the seed used ViT-L)."""
    checkpoint: str | None = None
    """A SAM checkpoint file of your own; none: the official file of the variant."""
    multimask: bool = True
    """SAM: predict three masks per prompt and keep the best-scored one."""
    precision: SamPrecision = "auto"
    """SAM's image encoder: auto = bfloat16 autocast where the device computes bfloat16
    natively (GPUs of compute capability 8.0+, CPUs with AVX512-BF16 or AMX), else float32;
    float32; bfloat16 (forced, slow where emulated). The embedding goes back to float32 before
    the mask decoder."""
    grabcut_iterations: int = Field(default=5, ge=1)
    """GrabCut: iterations of its energy minimisation."""

    def _sam_checkpoint(self) -> tuple[Path, str]:
        """The SAM checkpoint file and its SHA-256 (official files: verified prefix)."""
        if self.checkpoint:
            path = Path(self.checkpoint)
            return path, file_sha256(path)
        name = f"sam_{self.sam_variant}"
        path = weights.find_checkpoint(name, self.weights_dir)
        return path, weights.verify_checkpoint(path, name)

    def identity(self) -> BackendIdentity:
        """Name, variant and weights SHA-256, without loading the model.

        Raises:
            WeightsError: a SAM checkpoint is missing or fails its checksum.
        """
        if self.backend == "sam":
            return BackendIdentity("sam", self.sam_variant, self._sam_checkpoint()[1])
        from segstyle_core.segment.grabcut import grabcut_variant

        return BackendIdentity("grabcut", grabcut_variant(self.grabcut_iterations), None)

    def build(self, embedding_cache_dir: str | None = None) -> Segmenter:
        """The segmenter, loaded once per process and reused.

        Args:
            embedding_cache_dir: SAM's on-disk image-embedding cache (none: no cache).
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
            from segstyle_core.segment.grabcut import GrabCutSegmenter

            return GrabCutSegmenter(iterations=self.grabcut_iterations)

        return self.load_once(factory, embedding_cache_dir)
