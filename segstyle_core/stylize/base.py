"""The stylizer protocol shared by every backend (Gatys VGG19, feed-forward ONNX)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Progress:
    """One progress report: ``step`` of ``total`` with named loss terms (may be empty)."""

    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]
#: An ``H×W×3 uint8 RGB`` image.
RGB = np.ndarray


class Stylizer(Protocol):
    """A style-transfer backend. ``name``/``variant``/``weights_sha256`` go into result rows."""

    name: str
    variant: str
    weights_sha256: str | None

    def stylize(self, content: RGB, style: RGB, progress: ProgressCallback | None = None) -> RGB:
        """Paint ``content`` (``H×W×3 uint8 RGB``) in the manner of ``style`` (``h×w×3 uint8``):
        ``H'×W'×3 uint8 RGB`` at the backend's working size."""
        ...
