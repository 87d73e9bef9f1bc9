"""The stylizer protocol shared by every backend (Gatys VGG19, feed-forward ONNX)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from segstyle_core.errors import InputError


@dataclass(frozen=True)
class Progress:
    """One progress report: ``step`` of ``total`` with named loss terms (may be empty)."""

    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
#: An ``H×W×3 uint8 RGB`` image.
RGB = np.ndarray


def check_side(size: tuple[int, ...], minimum: int, what: str, fix: str) -> None:
    """Raise :class:`InputError` naming ``what`` and ``fix`` if ``size`` (``(h, w, ...)``) has a
    side under ``minimum`` px."""
    if min(size[:2]) < minimum:
        raise InputError(
            f"{what} is {size[1]}x{size[0]} px, under the stylizer's minimum of {minimum} px a "
            f"side; {fix}"
        )


class Stylizer(Protocol):
    """A style-transfer backend. ``name``/``variant``/``weights_sha256`` go into result rows."""

    name: str
    variant: str
    weights_sha256: str | None

    def stylize(self, content: RGB, style: RGB, progress: ProgressCallback | None = None) -> RGB:
        """Paint ``content`` (``H×W×3 uint8 RGB``) in the manner of ``style`` (``h×w×3 uint8``):
        ``H'×W'×3 uint8 RGB`` at the backend's working size."""
        ...
