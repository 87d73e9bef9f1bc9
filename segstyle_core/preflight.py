"""Preflight of a dataset run: what would fail every image is checked once, before any image.

:func:`check_run_inputs` looks at the dataset root, the class names, the prompts file, the
checkpoints and the style image, and raises the first problem found as one line that names the
file and the fix; on success it returns the backends' identities, which go into every result
row. The backends are imported inside it, so importing this module stays cheap for the CLI.
"""

from __future__ import annotations

from segstyle_core import cityscapes
from segstyle_core.backends import BackendIdentity
from segstyle_core.config import DatasetSelection, PromptConfig
from segstyle_core.errors import InputError
from segstyle_core.images import read_rgb
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import PROMPT_SOURCES
from segstyle_core.segment import SegmenterConfig
from segstyle_core.stylize import StylizerConfig


def check_style(stylizer: StylizerConfig) -> None:
    """Check that the style image reads and is large enough for the stylizer.

    Raises:
        InputError: one line naming the file and the fix.
    """
    style = stylizer.style_path()
    height, width = read_rgb(style).shape[:2]
    minimum = stylizer.min_style_side()
    if min(height, width) < minimum:
        raise InputError(
            f"{style}: style image is {width}x{height} px, under the {stylizer.backend} "
            f"stylizer's minimum of {minimum} px a side; use a larger image"
        )


def check_run_inputs(
    dataset: DatasetSelection,
    prompts: PromptConfig,
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig | None,
) -> tuple[BackendIdentity, BackendIdentity | None]:
    """Fail fast, before any image, on what would fail every image; return backend identities.

    Checks the dataset root, the class names, the prompts file, the checkpoints (present and
    matching their checksums) and the style image.

    Raises:
        SegstyleError: the first problem found, as one line naming the file and the fix.
    """
    cityscapes.resolve_root(dataset.root)
    cityscapes.class_ids(list(dataset.classes))
    if prompts.source not in PROMPT_SOURCES:
        load_prompts_file(prompts.source)
    seg_identity = segmenter.identity()
    if stylizer is None:
        return seg_identity, None
    style_identity = stylizer.identity()
    check_style(stylizer)
    return seg_identity, style_identity
