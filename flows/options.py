"""Command-line options derived from the configuration models, and the models built back.

Every option of ``segstyle run``/``evaluate``/``stylize`` is a field of a model of
:mod:`segstyle_core.config` (``video``: also of :mod:`segstyle_core.video.config` and
:class:`~segstyle_core.video.track.TrackerConfig`, all but ``--segmenter``): its flag is the
field's name (or the name in :attr:`OptionGroup.flags`), its default and its help line are the
field's default and description. So the CLI, the flows and the Prefect UI share one default
per setting.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    GatysConfig,
    OutputConfig,
    PhotoPrompts,
    PromptConfig,
    SegmenterConfig,
    StylizerConfig,
)
from segstyle_core.errors import ConfigError
from segstyle_core.video.config import VIDEO_STYLIZER, VideoOptions
from segstyle_core.video.track import TrackerConfig

#: The value that sets an optional setting to none on the command line.
NONE = "none"


@dataclass(frozen=True)
class OptionGroup:
    """The options of one configuration model.

    Attributes:
        model: the pydantic model (or pydantic dataclass) whose fields become options.
        title: the help section's title.
        flags: field -> flag name, where the flag differs from the field's name.
        skip: fields that get no option of their own.
        nested: field -> group of a nested model, whose options are flattened into the CLI.
        custom: field -> ``add_argument`` keywords replacing the derived ones (the option's
            value is then turned into the field by the group's own builder).
    """

    model: Any
    title: str
    flags: Mapping[str, str] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    nested: Mapping[str, OptionGroup] = field(default_factory=dict)
    custom: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def fields(self) -> dict[str, FieldInfo]:
        """The model's fields that get options (pydantic models and pydantic dataclasses)."""
        every: dict[str, FieldInfo] = (
            self.model.model_fields
            if isinstance(self.model, type) and issubclass(self.model, BaseModel)
            else self.model.__pydantic_fields__
        )
        return {n: f for n, f in every.items() if n not in self.skip}

    def flag(self, name: str) -> str:
        """The ``--flag`` of field ``name``."""
        return "--" + self.flags.get(name, name).replace("_", "-")

    def dest(self, name: str) -> str:
        """The argparse destination of field ``name`` (unique across groups)."""
        return f"{self.model.__name__}.{name}"


GATYS = OptionGroup(GatysConfig, "Gatys settings (--stylizer gatys)", flags={"seed": "noise_seed"})
DATASET = OptionGroup(DatasetSelection, "dataset", flags={"root": "dataset"})
#: Flags of the box adjustment that :class:`PromptConfig` and :class:`PhotoPrompts` share.
BOX_FLAGS = {"box_expand_px": "box_expand", "box_jitter_px": "box_jitter"}
PROMPTS = OptionGroup(PromptConfig, "prompts", flags={"source": "prompts", **BOX_FLAGS})
#: ``segstyle stylize``: how its boxes are adjusted (``--box``/``--point`` are its own options).
PHOTO_BOXES = OptionGroup(
    PhotoPrompts, "prompt boxes", flags=BOX_FLAGS, skip=frozenset({"boxes", "points", "styles"})
)
SEGMENTER = OptionGroup(SegmenterConfig, "segmentation", flags={"backend": "segmenter"})
#: device and weights_dir are the segmenter's options; the stylizer shares their values.
SHARED_BACKEND_FIELDS = frozenset({"device", "weights_dir"})
#: ``--style``: repeatable; see :func:`split_styles`.
STYLE_OPTION: Mapping[str, Any] = {
    "action": "append",
    "default": argparse.SUPPRESS,  # absent: no --style given (and no "(default: [])" in --help)
    "metavar": "[CLASS=]IMAGE",
    "help": "style image (default: the generated geometric abstraction); run: repeat it as "
    "CLASS=IMAGE for a style per class; stylize: give it once per --box, paired in order",
}
STYLIZER = OptionGroup(
    StylizerConfig,
    "style transfer",
    flags={"backend": "stylizer", "vgg_checkpoint": "vgg"},
    skip=SHARED_BACKEND_FIELDS | {"class_styles"},
    nested={"gatys": GATYS},
    custom={"style": STYLE_OPTION},
)
COMPOSITE = OptionGroup(
    CompositeConfig,
    "compositing",
    flags={"feather_px": "feather", "roi_margin_px": "roi_margin"},
)
OUTPUT = OptionGroup(OutputConfig, "outputs")

#: ``segstyle video``: the tracker's settings (its backend comes from ``--segmenter``; the flow
#: tracker's refining segmenter is the model's default on the tracker's device).
VIDEO_TRACKER = OptionGroup(
    TrackerConfig,
    "mask tracking",
    flags={"checkpoint": "sam2_checkpoint"},
    skip=frozenset({"backend", "segmenter"}),
)
#: ``segstyle video``: the stylizer is :data:`~segstyle_core.video.config.VIDEO_STYLIZER`'s
#: backend, on the tracker's device.
VIDEO_STYLE = OptionGroup(
    StylizerConfig,
    "style transfer",
    skip=SHARED_BACKEND_FIELDS | {"backend", "gatys", "vgg_checkpoint", "class_styles"},
)
VIDEO_COMPOSITE = OptionGroup(
    CompositeConfig,
    "compositing",
    flags={"feather_px": "feather"},
    skip=frozenset({"preserve_color", "roi_margin_px"}),
)
VIDEO = OptionGroup(VideoOptions, "video")
#: ``segstyle video --segmenter`` -> the tracker backend.
VIDEO_SEGMENTERS = {"grabcut": "flow", "sam2": "sam2"}


def _one_line(description: str | None) -> str:
    """The first sentence of a field description, on one line."""
    text = " ".join((description or "").split())
    return text.split(". ")[0].rstrip(".")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(annotation, False)``."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else annotation), True
    return annotation, False


def _scalar(kind: Any, optional: bool) -> Callable[[str], Any]:
    """A converter for one command-line value of type ``kind``."""

    def convert(text: str) -> Any:
        if optional and text.lower() == NONE:
            return None
        return kind(text)

    return convert


def _csv(kind: Any, optional: bool) -> Callable[[str], Any]:
    """A converter of a comma-separated list into a tuple of ``kind``."""

    def convert(text: str) -> Any:
        if optional and text.lower() == NONE:
            return None
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())

    return convert


def _argument(info: FieldInfo, metavar: str) -> dict[str, Any]:
    """``add_argument`` keywords for a field: type or choices, default and help."""
    kind, optional = _unwrap_optional(info.annotation)
    default = info.get_default(call_default_factory=True)
    options: dict[str, Any] = {
        "default": default,
        "help": _one_line(info.description),
        "metavar": metavar,
    }
    if typing.get_origin(kind) is Literal:
        choices = [str(c) for c in typing.get_args(kind)]
        options["choices"] = [*choices, NONE] if optional else choices
        options["type"] = _scalar(str, optional)
        del options["metavar"]
    elif kind is bool:
        options["action"] = argparse.BooleanOptionalAction
        del options["metavar"]
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        options["type"] = _csv(item, optional)
        options["metavar"] = f"{metavar},..."
        if default is not None:
            options["default"] = tuple(default)
        options["help"] += " (comma-separated)"
    elif typing.get_origin(kind) in (typing.Union, types.UnionType) and str in typing.get_args(
        kind
    ):
        options["type"] = _scalar(str, optional)  # e.g. a name or a list: the model parses it
    else:
        options["type"] = _scalar(kind, optional)
    if optional and default is not None:
        options["help"] += f"; '{NONE}' for none"
    return options


def add_options(parser: argparse.ArgumentParser, group: OptionGroup) -> None:
    """Add one option per field of ``group``'s model (and of its nested groups)."""
    section = parser.add_argument_group(group.title)
    for name, info in group.fields().items():
        if name in group.nested:
            add_options(parser, group.nested[name])
            continue
        flag = group.flag(name)
        metavar = flag.removeprefix("--").replace("-", "_").upper()
        keywords = group.custom.get(name) or _argument(info, metavar)
        section.add_argument(flag, dest=group.dest(name), **keywords)


def build(group: OptionGroup, args: argparse.Namespace, **extra: Any) -> Any:
    """The model of ``group`` from parsed options; ``extra`` fields are given directly."""
    values: dict[str, Any] = {}
    for name in group.fields():
        if name in extra:
            continue
        if name in group.nested:
            values[name] = build(group.nested[name], args)
        else:
            values[name] = getattr(args, group.dest(name))
    return group.model(**values, **extra)


def split_styles(values: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Repeated ``--style`` values -> the plain images (in order) and the ``CLASS=IMAGE`` pairs.

    A value naming an existing file is a plain image even when its name holds ``=``.

    Raises:
        ConfigError: a class given two styles.
    """
    plain: list[str] = []
    per_class: dict[str, str] = {}
    for value in values:
        name, separator, image = value.partition("=")
        if not separator or Path(value).is_file():
            plain.append(value)
        elif name.strip().lower() in per_class:
            raise ConfigError(f"--style {value}: class {name!r} already has a style; give one")
        else:
            per_class[name.strip().lower()] = image
    return plain, per_class


def style_values(args: argparse.Namespace) -> list[str]:
    """The ``--style`` values given, in order (none: an empty list)."""
    return list(getattr(args, STYLIZER.dest("style"), []))


def build_stylizer(
    args: argparse.Namespace, segmenter: SegmenterConfig, *, several: bool = False
) -> StylizerConfig:
    """The stylizer model, sharing the segmenter's device and weights folder.

    ``--style IMAGE`` is the plain style; ``--style CLASS=IMAGE`` a class's own. With
    ``several`` (``stylize``: one style per box, see :func:`split_styles`), several plain
    images are allowed and none of them becomes the plain style.

    Raises:
        ConfigError: several plain images where one is expected, or per-class styles where
            there are no classes.
    """
    plain, per_class = split_styles(style_values(args))
    if several and per_class:
        raise ConfigError(
            f"--style {next(iter(per_class))}=...: a photo has no classes; give one --style "
            "IMAGE for every region, or one per --box"
        )
    if len(plain) > 1 and not several:
        raise ConfigError(
            f"--style given {len(plain)} images ({', '.join(plain)}); give one for every class, "
            "or CLASS=IMAGE per class"
        )
    shared = {name: getattr(segmenter, name) for name in SHARED_BACKEND_FIELDS}
    style = plain[0] if len(plain) == 1 else None
    stylizer: StylizerConfig = build(STYLIZER, args, style=style, class_styles=per_class, **shared)
    return stylizer


def build_video_tracker(args: argparse.Namespace) -> TrackerConfig:
    """The tracker of ``segstyle video``: ``--segmenter`` picks the backend; the flow
    tracker's segmenter (the model's default) shares the tracker's device and weights folder."""
    shared = {name: getattr(args, VIDEO_TRACKER.dest(name)) for name in SHARED_BACKEND_FIELDS}
    default = TrackerConfig.model_fields["segmenter"].get_default(call_default_factory=True)
    segmenter = default.changed(**shared)
    backend = VIDEO_SEGMENTERS[args.segmenter]
    tracker: TrackerConfig = build(VIDEO_TRACKER, args, backend=backend, segmenter=segmenter)
    return tracker


def build_video_stylizer(args: argparse.Namespace, tracker: TrackerConfig) -> StylizerConfig:
    """The stylizer of ``segstyle video``, sharing the tracker's device and weights folder."""
    shared = {name: getattr(tracker, name) for name in SHARED_BACKEND_FIELDS}
    stylizer: StylizerConfig = build(
        VIDEO_STYLE, args, backend=VIDEO_STYLIZER.backend, gatys=VIDEO_STYLIZER.gatys, **shared
    )
    return stylizer
