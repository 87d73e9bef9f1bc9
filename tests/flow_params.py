"""Flow parameters the flow tests share: an offline run (GrabCut, feed-forward) over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def offline_params(root: Path, out: Path, **dataset: Any) -> dict[str, Any]:
    """The flow parameters of an offline run over ``root`` (GrabCut, feed-forward)."""
    from segstyle_core.config import (
        CompositeConfig,
        DatasetSelection,
        OutputConfig,
        PromptConfig,
        SegmenterConfig,
        StylizerConfig,
    )

    return {
        "dataset": DatasetSelection(root=str(root), **{"city": "zurich", **dataset}),
        "prompts": PromptConfig(source="gt-instances"),
        "segmenter": SegmenterConfig(backend="grabcut"),
        "stylizer": StylizerConfig(backend="feedforward"),
        "composite": CompositeConfig(feather_px=1.0),
        "outputs": OutputConfig(out=str(out)),
    }
