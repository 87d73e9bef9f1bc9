"""The command line's options: a ``--flag`` per field of the flows' configuration models (one
default per setting), and the flag of an error's field (``stylizer.style`` -> ``--style``)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, create_model
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
from segstyle_core.video.config import VideoOptions
from segstyle_core.video.track import TrackerConfig

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class Options(Generic[M]):
    """A flag per field of one flow parameter's ``model``: ``flags`` renames fields, ``skip``
    fields get none (one named in ``flags`` is set from that flag), ``nested`` models' flags are
    flattened in, ``cli_types`` are parsed instead of the field's type."""

    parameter: str
    model: type[M]
    flags: Mapping[str, str] = field(default_factory=dict)
    skip: Collection[str] = ()
    nested: Mapping[str, Options[Any]] = field(default_factory=dict)
    cli_types: Mapping[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, tuple[Any, FieldInfo]]:
        """Flag (snake case) -> ``(type, field)``: the fields a command's model gets."""
        found: dict[str, tuple[Any, FieldInfo]] = {}
        for name, info in self.model.__pydantic_fields__.items():
            if name in self.nested:
                found |= self.nested[name].options()
            elif name not in self.skip:
                kind = self.cli_types.get(name, info.annotation)
                found[self.flags.get(name, name)] = (kind, _one_line(info))
        return found

    def flag_names(self) -> dict[str, str]:
        """``<parameter>.<field>`` -> ``--flag``, for every field set from the command line."""
        names: dict[str, str] = {}
        for name in self.model.__pydantic_fields__:
            if name in self.nested:
                inner = self.nested[name].flag_names()
                names |= inner | {
                    f"{self.parameter}.{name}.{key.split('.', 1)[1]}": flag
                    for key, flag in inner.items()
                }
            elif name not in self.skip or name in self.flags:
                flag = "--" + self.flags.get(name, name).replace("_", "-")
                names[f"{self.parameter}.{name}"] = names[f"{self.model.__name__}.{name}"] = flag
        return names

    def build(self, command: BaseModel, **given: Any) -> M:
        """The model of a parsed command's values and the ``given`` fields (an invalid
        value raises :class:`ConfigError` naming its field)."""
        values = {
            name: self.nested[name].build(command)
            if name in self.nested
            else getattr(command, self.flags.get(name, name))
            for name in self.model.__pydantic_fields__
            if name not in given and name not in self.skip
        }
        return self.model(**values, **given)


def _one_line(info: FieldInfo) -> FieldInfo:
    """``info`` with the first sentence of its description, on one line."""
    text = " ".join((info.description or "").split()).split(". ")[0].rstrip(".")
    return FieldInfo.merge_field_infos(info, description=text)


def with_options(command: type[C], *groups: Options[Any]) -> type[C]:
    """``command`` (a model of the command's own arguments) plus every option of ``groups``."""
    fields: dict[str, Any] = {n: option for g in groups for n, option in g.options().items()}
    return create_model(command.__name__, __base__=command, __doc__=command.__doc__, **fields)


def flag_names(groups: Iterable[Options[Any]]) -> dict[str, str]:
    """``<parameter>.<field>`` -> ``--flag`` over ``groups``."""
    return {key: flag for group in groups for key, flag in group.flag_names().items()}


def with_flags(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each ``<parameter>.<field>`` of ``flags`` written as its flag."""
    if not flags:
        return message
    names = sorted(flags, key=len, reverse=True)  # stylizer.gatys.seed before stylizer.gatys
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, names)) + r")(?!\w|\.\w)")
    return pattern.sub(lambda match: flags[match.group(1)], message)


#: The box adjustment's flags, shared by :class:`PromptConfig` and :class:`PhotoPrompts`.
BOX_FLAGS = {"box_expand_px": "box_expand", "box_jitter_px": "box_jitter"}
#: The stylizer shares the segmenter's (or tracker's) device and checkpoints folder.
SHARED = {"device": "device", "weights_dir": "weights_dir"}
#: ``--style``, an argument of ``run`` and ``stylize``: repeatable; see :func:`split_styles`.
STYLE: list[str] = Field(
    default=[],
    description="style image; none: the generated geometric abstraction; run: repeat it as "
    "CLASS=IMAGE for a style per class; stylize: give it once per --box, paired in order",
)

#: ``--city`` is a string: the model splits "a,b" itself.
DATASET = Options("dataset", DatasetSelection, {"root": "dataset"}, cli_types={"city": str | None})
PROMPTS = Options("prompts", PromptConfig, {"source": "prompts", **BOX_FLAGS})
#: ``segstyle stylize``: its boxes' adjustment (``--box``, ``--point``, ``--style`` are its own).
PHOTO_FLAGS = {"boxes": "box", "points": "point", "styles": "style"}
PHOTO_PROMPTS = Options("prompts", PhotoPrompts, PHOTO_FLAGS | BOX_FLAGS, PHOTO_FLAGS)
SEGMENTER = Options("segmenter", SegmenterConfig, {"backend": "segmenter"})
#: ``--style`` is the command's own (:func:`build_stylizer`).
STYLE_FLAGS = {"style": "style", "class_styles": "style"}
STYLIZER = Options(
    "stylizer",
    StylizerConfig,
    {"backend": "stylizer", "vgg_checkpoint": "vgg"} | STYLE_FLAGS | SHARED,
    STYLE_FLAGS | SHARED,
    nested={"gatys": Options("gatys", GatysConfig, {"seed": "noise_seed"})},
)
COMPOSITE = Options(
    "composite", CompositeConfig, {"feather_px": "feather", "roi_margin_px": "roi_margin"}
)
OUTPUTS = Options("outputs", OutputConfig)

#: ``segstyle video``: the tracker (its backend comes from the command's ``--segmenter``; the
#: flow tracker's refining segmenter is the model's default on the tracker's device).
TRACKER = Options(
    "tracker",
    TrackerConfig,
    {"checkpoint": "sam2_checkpoint", "backend": "segmenter"},
    {"backend", "segmenter"},
)
#: ``segstyle video``: the stylizer is the video flow's, on the tracker's device.
VIDEO_STYLIZER = Options(
    "stylizer",
    StylizerConfig,
    SHARED,
    {"backend", "gatys", "vgg_checkpoint", "class_styles", *SHARED},
)
VIDEO_COMPOSITE = Options(
    "composite", CompositeConfig, {"feather_px": "feather"}, {"preserve_color", "roi_margin_px"}
)
VIDEO_OPTIONS = Options("video_options", VideoOptions)


def split_styles(values: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """``--style`` values -> the plain images (in order; an existing file even when its name
    holds ``=``) and the ``CLASS=IMAGE`` pairs; :class:`ConfigError` for a class given two."""
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


def build_stylizer(
    command: BaseModel, styles: Sequence[str], segmenter: SegmenterConfig, *, several: bool = False
) -> StylizerConfig:
    """The stylizer of ``--style`` values, on the segmenter's device and weights: ``IMAGE``
    the plain style, ``CLASS=IMAGE`` a class's; with ``several`` (``stylize``: a style per
    box) several plain images and none is the plain style."""
    plain, per_class = split_styles(styles)
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
    style = plain[0] if len(plain) == 1 else None
    shared = {name: getattr(segmenter, name) for name in SHARED}
    return STYLIZER.build(command, style=style, class_styles=per_class, **shared)
