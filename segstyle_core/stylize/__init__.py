"""Style-transfer backends and their registry.

A backend is described by a JSON-able spec, hashed into cache keys and passed between tasks::

    {"backend": "gatys", "device": "auto", "weights_dir": None, "options": {"iterations": 300}}

``options`` are :class:`~segstyle_core.stylize.gatys.GatysConfig` fields for Gatys and
:class:`~segstyle_core.stylize.feedforward.FeedForwardStylizer` arguments for the
feed-forward backend. :func:`build_stylizer` loads each distinct backend once per process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segstyle_core import weights
from segstyle_core.devices import MODELS, resolve_device
from segstyle_core.errors import ConfigError
from segstyle_core.stylize.base import Progress, ProgressCallback, Stylizer

STYLIZERS = ("gatys", "feedforward")

__all__ = [
    "STYLIZERS",
    "Progress",
    "ProgressCallback",
    "Stylizer",
    "build_stylizer",
    "min_style_side",
    "stylizer_identity",
    "stylizer_spec",
]


def stylizer_spec(
    backend: str = "gatys",
    device: str = "auto",
    weights_dir: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validated stylizer spec (see the module docstring)."""
    if backend not in STYLIZERS:
        raise ConfigError(f"unknown stylizer {backend!r}: use one of {', '.join(STYLIZERS)}")
    return {
        "backend": backend,
        "device": device,
        "weights_dir": weights_dir,
        "options": dict(options or {}),
    }


def stylizer_identity(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``name``, ``variant`` and ``weights_sha256`` of a spec, without loading the model.

    Raises:
        WeightsError: the VGG19 checkpoint is missing or fails its checksum.
    """
    if spec["backend"] == "gatys":
        path = weights.find_checkpoint("vgg19", spec.get("weights_dir"))
        digest = weights.verify_checkpoint(path, "vgg19")
        return {"name": "gatys", "variant": "vgg19", "weights_sha256": digest}
    from segstyle_core.stylize.feedforward import MODEL_VARIANT, model_sha256

    return {"name": "feedforward", "variant": MODEL_VARIANT, "weights_sha256": model_sha256()}


def min_style_side(spec: Mapping[str, Any]) -> int:
    """The smallest style-image side, in pixels, the spec's backend accepts."""
    if spec["backend"] == "gatys":
        from segstyle_core.stylize.gatys import MIN_SIDE
    else:
        from segstyle_core.stylize.feedforward import MIN_SIDE
    return MIN_SIDE


def build_stylizer(spec: Mapping[str, Any]) -> Stylizer:
    """The stylizer of a spec, loaded once per process and reused."""
    device = str(resolve_device(spec.get("device", "auto")))
    identity = stylizer_identity(spec)
    options = dict(spec.get("options", {}))
    key = (identity["name"], device, identity["weights_sha256"], repr(sorted(options.items())))

    def factory() -> Stylizer:
        if spec["backend"] == "gatys":
            from segstyle_core.stylize.gatys import GatysConfig, GatysStylizer

            path = weights.find_checkpoint("vgg19", spec.get("weights_dir"))
            return GatysStylizer(GatysConfig(**options), checkpoint=path, device=device)
        from segstyle_core.stylize.feedforward import FeedForwardStylizer

        return FeedForwardStylizer(**options)

    return MODELS.get_or_create(key, factory)
