"""Preflight of a dataset run: what would fail every image is checked once, before any image.

:func:`check_run_inputs` looks at the dataset root, the class names, the sample of frames
(never empty), the prompts file, the checkpoints and the style image, and raises the first
problem found as one line that names the file and the fix; on success it returns the
backends' identities, which go into every result row. The backends are imported inside it, so
importing this module stays cheap for the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from segstyle_core import cityscapes
from segstyle_core.backends import BackendIdentity
from segstyle_core.config import CompositeConfig, DatasetSelection, OutputConfig, PromptConfig
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.fileio import check_writable_folder
from segstyle_core.images import read_rgb
from segstyle_core.paint import check_paint_settings
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import PROMPT_SOURCES
from segstyle_core.segment import SegmenterConfig
from segstyle_core.stylize import StylizerConfig


def check_style(stylizer: StylizerConfig, styles: Sequence[str] = ()) -> None:
    """Check that each style image reads and is large enough for the stylizer.

    Args:
        styles: the images to check; empty: every style of the configuration
            (:meth:`StylizerConfig.style_paths`: the plain one and the per-class ones).

    Raises:
        InputError: one line naming the file and the fix.
    """
    minimum = stylizer.min_style_side()
    for style in dict.fromkeys(styles or stylizer.style_paths()):  # each file read once
        height, width = read_rgb(style).shape[:2]
        if min(height, width) < minimum:
            raise InputError(
                f"{style}: style image is {width}x{height} px, under the {stylizer.backend} "
                f"stylizer's minimum of {minimum} px a side; use a larger image"
            )


#: Unknown ids a message lists before "and N more".
_LISTED = 5


def _listing(values: Sequence[str]) -> str:
    """``"a, b, c, d, e and 7 more"``."""
    shown = ", ".join(values[:_LISTED])
    rest = len(values) - _LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


def check_sample(dataset: DatasetSelection) -> cityscapes.Sample:
    """Sample the run's frames (a folder scan, nothing decoded) and refuse an empty sample.

    A run over no frame would write an empty table and report success, so a limit below 1, a
    city or split without images and a city whose images all lack fine annotations are
    errors before any work.

    Raises:
        ConfigError: a limit below 1, an unknown split or city (the message lists the valid
            ones).
        InputError: no frame with fine annotations (names the folder and the fix).
    """
    place = f"{dataset.split}/{dataset.city_label()}"
    if dataset.limit is not None and dataset.limit < 1:
        raise ConfigError(
            f"limit={dataset.limit} selects no frame of {place}; use a limit of at least 1, "
            "or none for every annotated frame"
        )
    sample = dataset.sample()
    if not sample.frames and len(sample.cities) > 1:
        root = cityscapes.resolve_root(dataset.root)
        where = f"cities {', '.join(sample.cities)} of split {sample.split!r}"
        if not sample.skipped:
            raise InputError(
                f"{root / 'leftImg8bit' / sample.split}: no *_leftImg8bit.png images in {where}, "
                "so the run has no frame; choose other cities or another split"
            )
        path, reason = sample.skipped[0]
        raise InputError(
            f"{root / 'gtFine' / sample.split}: none of the {len(sample.skipped)} images of "
            f"{where} has fine annotations (e.g. {path}: {reason}), so the run has no frame; "
            "choose other cities or another split, or add the gtFine labelIds or color PNGs"
        )
    if not sample.frames:
        root = cityscapes.resolve_root(dataset.root)
        images = root / "leftImg8bit" / sample.split / sample.city
        if not sample.skipped:
            raise InputError(
                f"{images}: no *_leftImg8bit.png images in city {sample.city!r} of split "
                f"{sample.split!r}, so the run has no frame; choose another city or split"
            )
        path, reason = sample.skipped[0]
        raise InputError(
            f"{root / 'gtFine' / sample.split / sample.city}: none of the "
            f"{len(sample.skipped)} images of city {sample.city!r} (split {sample.split!r}) "
            f"has fine annotations (e.g. {path}: {reason}), so the run has no frame; choose "
            "another city or split, or add the gtFine labelIds or color PNGs"
        )
    return sample


def check_prompt_ids(
    path: str, prompt_ids: Iterable[str], sample: cityscapes.Sample, limit: int | None = None
) -> None:
    """Refuse a prompts file none of whose image ids is a frame of the run (a typo, another
    city): the run would segment nothing.

    Raises:
        InputError: one line naming the file, listing a few unknown ids and the fix.
    """
    ids = list(prompt_ids)
    frames = [frame.image_id for frame in sample.frames]
    if not ids or not set(frames).isdisjoint(ids):
        return
    limited = limit is not None and len(frames) == limit
    which = f"{len(frames)} frames of {sample.split}/{sample.city}"
    raise InputError(
        f"{path}: none of its image ids is a frame of this run "
        f"({which}{f' drawn with limit={limit}' if limited else ''}, e.g. {frames[0]}); "
        f"unknown ids: {_listing(ids)}; fix the ids or run the city they belong to"
        + (" without the limit" if limited else "")
    )


def check_run_inputs(
    dataset: DatasetSelection,
    prompts: PromptConfig,
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig | None,
    outputs: OutputConfig,
    composite: CompositeConfig | None = None,
) -> tuple[BackendIdentity, BackendIdentity | None]:
    """Fail fast, before any image, on what would fail every image; return backend identities.

    Checks the output folder, the dataset root, the class names, the sample (at least one
    annotated frame), the prompts file (readable, naming at least one frame of the sample),
    the checkpoints (present and matching their checksums), the style images and the per-class
    styles against the classes and ``composite``'s mode.

    Raises:
        SegstyleError: the first problem found, as one line naming the file and the fix.
    """
    check_writable_folder(outputs.out, f"outputs.out {outputs.out}")
    cityscapes.resolve_root(dataset.root)
    cityscapes.class_ids(list(dataset.classes))
    sample = check_sample(dataset)
    if prompts.source not in PROMPT_SOURCES:
        file_prompts = load_prompts_file(prompts.source)
        check_prompt_ids(prompts.source, file_prompts, sample, dataset.limit)
    seg_identity = segmenter.identity()
    if stylizer is None:
        return seg_identity, None
    check_paint_settings(stylizer, (composite or CompositeConfig()).mode, dataset.classes)
    style_identity = stylizer.identity()
    check_style(stylizer)
    return seg_identity, style_identity
