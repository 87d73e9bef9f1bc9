"""Flow parameters -> backend specs, shared by the flows and the CLI's pre-flight check."""

from __future__ import annotations

from typing import Any

from segstyle_core.segment import segmenter_spec
from segstyle_core.stylize import stylizer_spec


def backend_specs(
    segmenter: str,
    sam_variant: str,
    stylizer: str | None,
    nst: dict[str, Any] | None,
    strength: float,
    device: str,
    weights_dir: str | None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The segmenter spec and the stylizer spec (``None`` without a stylizer).

    ``nst`` (Gatys settings) applies to the Gatys backend, ``strength`` to the feed-forward one.
    """
    seg_spec = segmenter_spec(segmenter, sam_variant, weights_dir=weights_dir, device=device)
    if stylizer is None:
        return seg_spec, None
    options = dict(nst or {}) if stylizer == "gatys" else {"strength": strength}
    return seg_spec, stylizer_spec(
        stylizer, device=device, weights_dir=weights_dir, options=options
    )


def style_or_default(style: str | None) -> str:
    """The given style image, else the project's generated geometric abstraction."""
    from segstyle_core.styles import default_style_path

    return style or str(default_style_path())
