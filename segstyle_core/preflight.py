"""Preflight of a dataset run: what would fail every image, checked once before any image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from segstyle_core import cityscapes
from segstyle_core.backends import BackendConfig, BackendIdentity
from segstyle_core.config import CompositeConfig, DatasetSelection, OutputConfig, PromptConfig
from segstyle_core.devices import resolve_device
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.fileio import check_writable_folder
from segstyle_core.images import read_rgb
from segstyle_core.paint import check_paint_settings
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.from_gt import PROMPT_SOURCES
from segstyle_core.segment import SegmenterConfig
from segstyle_core.stylize import StylizerConfig
from segstyle_core.stylize.base import check_side


def check_devices(**backends: BackendConfig | None) -> None:
    """ConfigError naming ``<backend>.device`` (keywords: ``segmenter=config``, ...) for a
    device this machine lacks: ``cuda`` without CUDA, ``cuda:N`` beyond its GPUs (the form of
    the name is the configuration's own check). ``auto`` and ``cpu`` need no check (torch is
    imported only for a CUDA device)."""
    for role, backend in backends.items():
        if backend is not None and backend.device not in ("auto", "cpu"):
            try:
                resolve_device(backend.device)
            except ConfigError as error:
                raise ConfigError(f"{role}.device: {error}") from None


def check_style(stylizer: StylizerConfig, styles: Sequence[str] = ()) -> None:
    """Check that each of ``styles`` (empty: the configuration's) reads and is large enough
    for the stylizer (InputError naming the file)."""
    for style in dict.fromkeys(styles or stylizer.style_paths()):  # each file read once
        shape = read_rgb(style).shape
        check_side(shape, stylizer.min_style_side(), f"{style}: style image", "use a larger image")


def check_sample(dataset: DatasetSelection) -> cityscapes.Sample:
    """The run's frames; ConfigError for a limit below 1, an unknown split or city, InputError
    for no frame with fine annotations (an empty table would read as a success) or a named city
    without one (the run would leave it out silently)."""
    if dataset.limit is not None and dataset.limit < 1:
        raise ConfigError(
            f"limit={dataset.limit} selects no frame of {dataset.split}/{dataset.city_label()}; "
            "use a limit of at least 1, or none for every annotated frame"
        )
    sample = dataset.sample()
    if not sample.frames:
        root = cityscapes.resolve_root(dataset.root)
        if len(sample.cities) > 1:
            folder, choose = sample.split, "choose other cities or another split"
            where = f"cities {', '.join(sample.cities)} of split {sample.split!r}"
        else:
            folder, choose = f"{sample.split}/{sample.city}", "choose another city or split"
            where = f"city {sample.city!r} of split {sample.split!r}"
        if not sample.skipped:
            raise InputError(
                f"{root / 'leftImg8bit' / folder}: no *_leftImg8bit.png images in {where}, so "
                f"the run has no frame; {choose}"
            )
        path, reason = sample.skipped[0]
        raise InputError(
            f"{root / 'gtFine' / folder}: none of the {len(sample.skipped)} images of {where} "
            f"has fine annotations (e.g. {path}: {reason}), so the run has no frame; {choose}, "
            "or add the gtFine labelIds or color PNGs"
        )
    if sample.city != cityscapes.ALL_CITIES and sample.empty_cities:  # cities the user named
        root = cityscapes.resolve_root(dataset.root)
        names = ", ".join(sample.empty_cities)
        raise InputError(
            f"{root / 'gtFine' / sample.split}: no annotated frame of {names}, named in the "
            f"city selection (no gtFine PNGs for gt={dataset.gt} beside its images, or no "
            "images), so the run would leave it out; name only cities with annotations, or add "
            "their gtFine PNGs"
        )
    return sample


def check_prompt_ids(
    path: str, prompt_ids: Iterable[str], sample: cityscapes.Sample, limit: int | None = None
) -> None:
    """InputError (naming a few unknown ids) when none of a prompts file's ids is a run frame."""
    ids = list(prompt_ids)
    frames = [frame.image_id for frame in sample.frames]
    if not ids or not set(frames).isdisjoint(ids):
        return
    limited = limit is not None and len(frames) == limit
    which = f"{len(frames)} frames of {sample.split}/{sample.city}"
    unknown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    raise InputError(
        f"{path}: none of its image ids is a frame of this run "
        f"({which}{f' drawn with limit={limit}' if limited else ''}, e.g. {frames[0]}); "
        f"unknown ids: {unknown}; fix the ids or run the city they belong to"
        + (" without the limit" if limited else "")
    )


def check_run_inputs(
    dataset: DatasetSelection,
    prompts: PromptConfig,
    segmenter: SegmenterConfig,
    stylizer: StylizerConfig | None,
    outputs: OutputConfig,
    composite: CompositeConfig | None = None,
    *,
    devices_here: bool = True,
) -> tuple[BackendIdentity, BackendIdentity | None]:
    """Check the output folder, dataset, prompts file, checkpoints, styles and, where the
    tasks compute on this machine (``devices_here``; not on a remote Dask cluster's workers),
    the backends' devices (SegstyleError: the first problem); the backends' identities."""
    check_writable_folder(outputs.out, f"outputs.out {outputs.out}")
    if devices_here:
        check_devices(segmenter=segmenter, stylizer=stylizer)
    cityscapes.resolve_root(dataset.root)
    cityscapes.class_ids(list(dataset.classes))
    sample = check_sample(dataset)
    if prompts.source not in PROMPT_SOURCES:
        check_prompt_ids(prompts.source, load_prompts_file(prompts.source), sample, dataset.limit)
    seg_identity = segmenter.identity()
    if stylizer is None:
        return seg_identity, None
    check_paint_settings(stylizer, (composite or CompositeConfig()).mode, dataset.classes)
    style_identity = stylizer.identity()
    check_style(stylizer)
    return seg_identity, style_identity
