"""Every configuration model refuses what would silently break a run: NaN and infinity in any
float setting (``--feather nan`` painted every image black and said ``ok``), as one line that
names the field. The rule lives once, on the base model (``allow_inf_nan=False``), so a float
field added later is covered without a check of its own; this test walks every field of every
model to prove it.
"""

from __future__ import annotations

import types
import typing

import pytest
from pydantic import BaseModel

from segstyle_core.backends import ConfigModel
from segstyle_core.config import (
    CompositeConfig,
    DatasetSelection,
    OutputConfig,
    PhotoPrompts,
    PromptConfig,
)
from segstyle_core.errors import ConfigError
from segstyle_core.segment import SegmenterConfig
from segstyle_core.stylize import StylizerConfig
from segstyle_core.stylize.gatys_config import GatysConfig
from segstyle_core.video.config import VideoOptions
from segstyle_core.video.track import TrackerConfig

MODELS: tuple[type[ConfigModel], ...] = (
    CompositeConfig,
    DatasetSelection,
    OutputConfig,
    PhotoPrompts,
    PromptConfig,
    SegmenterConfig,
    StylizerConfig,
    GatysConfig,
    VideoOptions,
    TrackerConfig,
)


def _is_float(annotation: object) -> bool:
    """``float`` or ``float | None`` (and unions holding float)."""
    if annotation is float:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return float in typing.get_args(annotation)
    return False


FLOAT_FIELDS = [
    (model, name)
    for model in MODELS
    for name, info in model.model_fields.items()
    if _is_float(info.annotation)
]


def test_the_models_have_float_settings_to_check() -> None:
    assert {m.__name__ for m, _ in FLOAT_FIELDS} >= {"CompositeConfig", "GatysConfig"}
    assert all(issubclass(m, BaseModel) for m in MODELS)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan", "Infinity"])
@pytest.mark.parametrize(("model", "name"), FLOAT_FIELDS, ids=lambda v: getattr(v, "__name__", v))
def test_float_settings_refuse_nan_and_infinity(
    model: type[ConfigModel], name: str, value: object
) -> None:
    with pytest.raises(ConfigError) as info:
        model(**{name: value})
    message = str(info.value)
    assert "\n" not in message
    assert f"{name}: Input should be a finite number" in message


def test_a_finite_float_setting_is_kept() -> None:
    assert CompositeConfig(feather_px=2.5).feather_px == 2.5
    assert GatysConfig(content_weight=5000.0).content_weight == 5000.0


def test_classes_are_kept_once_each_in_order() -> None:
    assert DatasetSelection(classes=("car", "person", "Car", " car ")).classes == ("car", "person")


def test_an_invalid_item_is_named_without_its_tuples_too_short() -> None:
    """A tuple of at least one item whose only item is invalid names the item, not also the
    emptied tuple; an empty tuple names the tuple."""
    with pytest.raises(ConfigError) as bad_item:
        GatysConfig(content_layers=("conv4_2", "nope"))
    assert str(bad_item.value).startswith("GatysConfig.content_layers.1: ")
    with pytest.raises(ConfigError) as only_bad:
        GatysConfig(content_layers=("nope",))
    assert str(only_bad.value).startswith("GatysConfig.content_layers.0: ")
    assert "at least 1 item" not in str(only_bad.value)
    with pytest.raises(ConfigError, match=r"^GatysConfig\.content_layers: .*at least 1 item"):
        GatysConfig(content_layers=())
