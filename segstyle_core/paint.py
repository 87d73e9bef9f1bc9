"""The paint plan of one image: which style paints which mask, in which order (each distinct
style is stylized once; the composite paints the layers in order, a later over an earlier)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from segstyle_core.composite import Mode
from segstyle_core.config import CompositeConfig, PhotoPrompts
from segstyle_core.errors import ConfigError
from segstyle_core.stylize import StylizerConfig


@dataclass(frozen=True)
class PaintLayer:
    """The masks (indices into the image's per-prompt masks) painted in ``styles[style]``."""

    style: int
    masks: tuple[int, ...]


@dataclass(frozen=True)
class PaintPlan:
    """The distinct style images of one image and its layers, in paint order."""

    styles: tuple[str, ...]
    layers: tuple[PaintLayer, ...]

    def roi_options(self, style: int, settings: CompositeConfig, masks: Any) -> dict[str, Any]:
        """The stylize stage's ROI keywords for ``styles[style]`` with ``roi_margin_px``: its
        masks (sorted indices into ``masks``, a record or handle); else none (whole frame)."""
        if (margin := settings.roi_margin_px) is None:
            return {}
        own = sorted({k for layer in self.layers if layer.style == style for k in layer.masks})
        return dict(roi=masks, roi_margin_px=margin, roi_mode=settings.mode, roi_masks=tuple(own))


def _plan(assigned: Sequence[tuple[str, tuple[int, ...]]], mode: Mode = "object") -> PaintPlan:
    """A plan from ``(style image, mask indices)`` pairs in paint order: consecutive pairs of
    one style merge, maskless ones are dropped (background mode keeps a maskless image's first)."""
    kept = [pair for pair in assigned if pair[1]]
    if not kept and mode == "background":
        kept = list(assigned[:1])
    merged: list[tuple[str, tuple[int, ...]]] = []
    for style, masks in kept:
        if merged and merged[-1][0] == style:
            merged[-1] = (style, tuple(sorted(merged[-1][1] + masks)))
        else:
            merged.append((style, masks))
    styles = tuple(dict.fromkeys(style for style, _ in merged))
    return PaintPlan(styles, tuple(PaintLayer(styles.index(s), masks) for s, masks in merged))


def plan_by_class(
    labels: Sequence[str | None],
    classes: Sequence[str],
    stylizer: StylizerConfig,
    mode: Mode = "object",
) -> PaintPlan:
    """The plan of a dataset image whose ``k``-th mask is of class ``labels[k]`` (``None``: no
    class): first every mask without a style of its own (the plain style), then each class
    with its own style in the order of ``classes``."""
    names = [(label or "").lower() for label in labels]
    own = [c.lower() for c in classes if c.lower() in stylizer.class_styles]
    plain = tuple(k for k, name in enumerate(names) if name not in own)
    assigned = [(stylizer.style_path(), plain)]
    assigned += [
        (stylizer.style_for(name), tuple(k for k, label in enumerate(names) if label == name))
        for name in own
    ]
    return _plan(assigned, mode)


def plan_by_region(region_styles: Sequence[str]) -> PaintPlan:
    """The plan of a photo whose ``k``-th region (mask) is painted in ``region_styles[k]``."""
    return _plan([(style, (k,)) for k, style in enumerate(region_styles)])


def region_styles(
    given: PhotoPrompts, regions: int, stylizer: StylizerConfig, mode: Mode
) -> list[str]:
    """The style of each of a photo's ``regions``: ``given.styles`` paired with its boxes in
    order (a region of points alone takes the first), or else the stylizer's plain style
    (ConfigError: not one per box, several in background mode, or per-class styles)."""
    if stylizer.class_styles:
        raise ConfigError(
            "stylizer.class_styles needs classes; a photo's regions have none: give a single "
            "stylizer.style for every region, or prompts.styles with one per box"
        )
    if given.styles and len(given.styles) != len(given.boxes):
        raise ConfigError(
            f"prompts.styles gives {len(given.styles)} for {len(given.boxes)} boxes "
            "(prompts.boxes): give one per box, paired in order, or a single stylizer.style for "
            "every region"
        )
    paired = given.styles or (stylizer.style_path(),)
    styles = [paired[k] if k < len(paired) else paired[0] for k in range(regions)]
    if mode == "background" and len(set(styles)) > 1:
        raise ConfigError(
            "composite.mode=background paints what lies outside every region, in one style: "
            "give a single stylizer.style (or the same image in every prompts.styles entry), or "
            "set composite.mode=object"
        )
    return styles


def check_paint_settings(
    stylizer: StylizerConfig, mode: Mode, classes: Sequence[str] | None = None
) -> None:
    """ConfigError for per-class styles in background mode or for a class not in ``classes``."""
    if not stylizer.class_styles:
        return
    if mode == "background":
        raise ConfigError(
            "stylizer.class_styles paints objects; composite.mode=background paints what lies "
            "outside every mask: give a single stylizer.style instead, or set "
            "composite.mode=object"
        )
    if classes is not None and (unknown := stylizer.class_styles.keys() - map(str.lower, classes)):
        raise ConfigError(
            f"stylizer.class_styles: {min(unknown)!r} is not among the run's classes "
            f"({','.join(classes)}); add it to dataset.classes or drop its style"
        )
