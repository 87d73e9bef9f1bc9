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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    GatysConfig,
    OutputConfig,
    PromptConfig,
    SegmenterConfig,
    StylizerConfig,
)
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
    """

    model: Any
    title: str
    flags: Mapping[str, str] = field(default_factory=dict)
    skip: frozenset[str] = frozenset()
    nested: Mapping[str, OptionGroup] = field(default_factory=dict)

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
PROMPTS = OptionGroup(PromptConfig, "prompts", flags={"source": "prompts"})
SEGMENTER = OptionGroup(SegmenterConfig, "segmentation", flags={"backend": "segmenter"})
#: device and weights_dir are the segmenter's options; the stylizer shares their values.
SHARED_BACKEND_FIELDS = frozenset({"device", "weights_dir"})
STYLIZER = OptionGroup(
    StylizerConfig,
    "style transfer",
    flags={"backend": "stylizer", "vgg_checkpoint": "vgg"},
    skip=SHARED_BACKEND_FIELDS,
    nested={"gatys": GATYS},
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
    skip=SHARED_BACKEND_FIELDS | {"backend", "gatys", "vgg_checkpoint"},
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
        section.add_argument(flag, dest=group.dest(name), **_argument(info, metavar))


def build(group: OptionGroup, args: argparse.Namespace, **extra: Any) -> Any:
    """The model of ``group`` from parsed options; ``extra`` fields are given directly."""
    values: dict[str, Any] = {}
    for name in group.fields():
        if name in group.nested:
            values[name] = build(group.nested[name], args)
        else:
            values[name] = getattr(args, group.dest(name))
    return group.model(**values, **extra)


def build_stylizer(args: argparse.Namespace, segmenter: SegmenterConfig) -> StylizerConfig:
    """The stylizer model, sharing the segmenter's device and weights folder."""
    shared = {name: getattr(segmenter, name) for name in SHARED_BACKEND_FIELDS}
    stylizer: StylizerConfig = build(STYLIZER, args, **shared)
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
