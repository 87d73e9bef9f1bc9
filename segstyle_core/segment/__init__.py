"""Segmentation backends and their registry.

A backend is described by a JSON-able spec, so that it can be hashed into cache keys and
passed between Prefect tasks::

    {"backend": "sam", "variant": "vit_l", "checkpoint": None, "weights_dir": None,
     "device": "auto", "options": {}}

:func:`build_segmenter` loads each distinct backend once per process (see
:data:`segstyle_core.devices.MODELS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segstyle_core import weights
from segstyle_core.devices import MODELS, resolve_device
from segstyle_core.errors import ConfigError
from segstyle_core.fileio import file_sha256
from segstyle_core.segment.base import MaskPrediction, Prompt, Segmenter

SEGMENTERS = ("sam", "grabcut")
SAM_VARIANTS = ("vit_b", "vit_l", "vit_h")

__all__ = [
    "SEGMENTERS",
    "SAM_VARIANTS",
    "MaskPrediction",
    "Prompt",
    "Segmenter",
    "build_segmenter",
    "segmenter_identity",
    "segmenter_spec",
]


def segmenter_spec(
    backend: str = "sam",
    variant: str = "vit_l",
    checkpoint: str | None = None,
    weights_dir: str | None = None,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validated segmenter spec (see the module docstring)."""
    if backend not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter {backend!r}: use one of {', '.join(SEGMENTERS)}")
    if backend == "sam" and variant not in SAM_VARIANTS:
        raise ConfigError(f"unknown SAM variant {variant!r}: use one of {', '.join(SAM_VARIANTS)}")
    return {
        "backend": backend,
        "variant": variant if backend == "sam" else "opencv",
        "checkpoint": checkpoint,
        "weights_dir": weights_dir,
        "device": device,
        "options": dict(options or {}),
    }


def _sam_checkpoint(spec: Mapping[str, Any]) -> tuple[Path, str]:
    """The SAM checkpoint file of a spec and its verified SHA-256."""
    name = f"sam_{spec['variant']}"
    if spec.get("checkpoint"):
        path = Path(spec["checkpoint"])
        return path, file_sha256(path)
    path = weights.find_checkpoint(name, spec.get("weights_dir"))
    return path, weights.verify_checkpoint(path, name)


def segmenter_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``name``, ``variant`` and ``weights_sha256`` of a spec, without loading the model.

    Raises:
        WeightsError: a SAM checkpoint is missing or fails its checksum.
    """
    if spec["backend"] == "sam":
        _, digest = _sam_checkpoint(spec)
        return {"name": "sam", "variant": spec["variant"], "weights_sha256": digest}
    return {"name": "grabcut", "variant": spec["variant"], "weights_sha256": None}


def build_segmenter(spec: Mapping[str, Any], embedding_cache_dir: str | None = None) -> Segmenter:
    """The segmenter of a spec, loaded once per process and reused."""
    device = str(resolve_device(spec.get("device", "auto")))
    identity = segmenter_identity(spec)
    options = spec.get("options", {})
    key = (
        identity["name"],
        identity["variant"],
        device,
        identity["weights_sha256"],
        repr(sorted(options.items())),
        embedding_cache_dir,
    )

    def factory() -> Segmenter:
        if spec["backend"] == "sam":
            from segstyle_core.segment.sam import AutomaticMaskOptions, SamSegmenter

            path, _ = _sam_checkpoint(spec)
            amg = options.get("automatic")
            return SamSegmenter(
                variant=spec["variant"],
                checkpoint=path,
                device=device,
                embedding_cache_dir=Path(embedding_cache_dir) if embedding_cache_dir else None,
                multimask=options.get("multimask", True),
                amg_options=AutomaticMaskOptions(**amg) if amg else None,
            )
        from segstyle_core.segment.grabcut import GrabCutSegmenter

        return GrabCutSegmenter(**options)

    return MODELS.get_or_create(key, factory)
