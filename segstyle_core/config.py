"""The typed configuration of a run: the flows' parameters (Prefect's forms) and the CLI's
options, both from these fields, their docstrings the descriptions, each default written once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from segstyle_core import cityscapes
from segstyle_core.backends import ConfigModel
from segstyle_core.segment import SegmenterConfig as SegmenterConfig
from segstyle_core.stylize import StylizerConfig as StylizerConfig
from segstyle_core.stylize.gatys_config import GatysConfig as GatysConfig

# A union member's title names its tab on Prefect's form (else each reads "str").
_PromptMethod = Annotated[Literal["gt-instances", "largest", "auto"], Field(title="from the GT")]
_ColorMethod = Annotated[Literal["luminance", "histogram"], Field(title="method")]


def city_part(city: str | tuple[str, ...] | list[str] | None) -> str:
    """A city selection in a run name: ``zurich``, ``aachen+zurich``, ``5-cities``, ``random``."""
    if city is None:
        return "random"
    parts = city.split(",") if isinstance(city, str) else city
    names = sorted({str(name).strip() for name in parts})
    return "+".join(names) if len(names) <= 3 else f"{len(names)}-cities"


class DatasetSelection(ConfigModel):
    """Which frames of a Cityscapes-layout dataset a run covers."""

    root: str | None = None
    """Dataset root holding leftImg8bit/ and gtFine/; none: $CITYSCAPES_DATASET."""
    city: str | tuple[str, ...] | None = "zurich"
    """City to sample: a name, several (comma-separated; a list in the flows), 'all' (every
    city of the split, sorted) or 'random' (one drawn with the seed). None is 'random'; several
    names are kept sorted and without repeats; one name stays a plain string."""
    split: Literal["train", "val", "test"] = "train"
    """Split: train, val or test."""
    classes: tuple[str, ...] = ("car",)
    """Cityscapes class names whose ground truth is binarized and prompted."""
    gt: Literal["auto", "labelIds", "color"] = "auto"
    """Ground truth to binarize: labelIds, color (the colour PNG) or auto (labelIds where a
    frame has them, else its colour PNG). Frames without it are skipped."""
    limit: int | None = None
    """At most this many frames over all selected cities (a deterministic sample with the
    seed); none: every annotated frame."""
    seed: int = 0
    """Seed of the city and frame sampling, and of the prompt boxes' jitter."""
    generate_demo: bool = False
    """Write the generated demo dataset at the root first when the root does not exist."""

    @field_validator("city", mode="before")
    @classmethod
    def _cities(cls, city: Any) -> Any:
        if isinstance(city, str):
            city = city.split(",")
        if not isinstance(city, list | tuple):
            return city  # None, or a type pydantic refuses
        names = sorted({str(name).strip() for name in city} - {""})
        if not names:
            raise ValueError("give a city name, several, 'all' or 'random'")
        if len(names) == 1:
            return None if names[0] == "random" else names[0]
        if {"all", "random"} & set(names):
            raise ValueError(f"{names}: 'all' and 'random' stand alone, not in a list of cities")
        return tuple(names)

    @field_validator("classes", mode="after")
    @classmethod
    def _distinct_classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        """Stripped, in order, each once (``car,Car`` is ``car``)."""
        first: dict[str, str] = {}
        for name in classes:
            first.setdefault(name.strip().lower(), name.strip())
        return tuple(name for key, name in first.items() if key)

    def city_label(self) -> str:
        """The city selection in words: ``zurich``, ``aachen,zurich``, ``all``, a random city."""
        if self.city is None:
            return "a random city"
        return self.city if isinstance(self.city, str) else ",".join(self.city)

    def sample(self) -> cityscapes.Sample:
        """The selected frames (see :func:`segstyle_core.cityscapes.sample_city`)."""
        return cityscapes.sample_city(
            self.root,
            split=self.split,
            city=self.city,
            seed=self.seed,
            limit=self.limit,
            source=self.gt,
        )


class PromptConfig(ConfigModel):
    """Where the prompts of each frame come from."""

    source: _PromptMethod | Annotated[str, Field(title="prompts file")] = "largest"
    """gt-instances (every GT instance's box), largest (the largest one), auto (automatic
    masks) or the path of a JSON/CSV prompts file."""
    min_area: int = Field(default=100, ge=0)
    """Smallest GT instance, in pixels, that gets a prompt."""
    box_expand_px: int = Field(default=0, ge=0)
    """Grow every prompt box by this many pixels on each side (clipped to the image); points
    stay where they are."""
    box_jitter_px: int = Field(default=0, ge=0)
    """Move each box coordinate, after the expansion, by a random whole number of pixels up
    to this far either way, seeded per frame by the SHA-256 of 'seed:image_id' (frames differ,
    a rerun repeats)."""


class PhotoPrompts(ConfigModel):
    """Where the object is on one photo, in displayed pixel coordinates."""

    boxes: tuple[str, ...] = ()
    """Boxes as x0,y0,x1,y1; each box is one region."""
    points: tuple[str, ...] = ()
    """Points as x,y or x,y,label (1 object, 0 background); with one box they refine it,
    otherwise they form one more region."""
    styles: tuple[str, ...] = ()
    """Style image per box, paired in order (regions painted in box order, a later one over
    an earlier one); empty: the stylizer's style for every region."""
    box_expand_px: int = Field(default=0, ge=0)
    """Grow every box by this many pixels on each side (clipped to the photo); points stay
    where they are."""
    box_jitter_px: int = Field(default=0, ge=0)
    """Move each box coordinate, after the expansion, by a random whole number of pixels up
    to this far either way, drawn with the seed."""
    seed: int = Field(default=0, ge=0)
    """Seed of the box jitter."""


class CompositeConfig(ConfigModel):
    """How the painting is kept: inside or outside the mask, and its edge."""

    mode: Literal["object", "background"] = "object"
    """object: paint inside the mask; background: paint everything outside it."""
    feather_px: float = Field(default=0.0, ge=0.0)
    """Soft edge of the mask, in pixels."""
    preserve_color: _ColorMethod | None = None
    """Keep the photo's colours: luminance transfer or histogram matching; none: off."""
    roi_margin_px: int | None = Field(default=None, ge=0)
    """Stylize only the mask's box plus this margin (pixels); none: the whole frame."""


class OutputConfig(ConfigModel):
    """Where a run writes: its cache, per-run pictures and Parquet metrics."""

    out: str = Field(default="artifacts", min_length=1)
    """Output folder: cache/, runs/<run>/ and metrics/ (Parquet) live under it."""
