"""Flow parameters the flow tests share: an offline run (GrabCut, feed-forward) over a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def offline_params(root: Path, out: Path, **dataset: Any) -> dict[str, Any]:
    """The flow parameters of an offline run over ``root`` (GrabCut, feed-forward)."""
    from segstyle_core import config

    return {
        "dataset": config.DatasetSelection(root=str(root), **{"city": "zurich", **dataset}),
        "prompts": config.PromptConfig(source="gt-instances"),
        "segmenter": config.SegmenterConfig(backend="grabcut"),
        "stylizer": config.StylizerConfig(backend="feedforward"),
        "composite": config.CompositeConfig(feather_px=1.0),
        "outputs": config.OutputConfig(out=str(out)),
    }
