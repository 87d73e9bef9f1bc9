"""What every model backend's configuration shares: an ``identity()`` that names what made a
result (in every Parquet row and cache key) without loading the model, and a load-once build."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Annotated, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from segstyle_core.devices import MODELS
from segstyle_core.errors import ConfigError, one_line

T = TypeVar("T")


def validation_message(error: ErrorDetails) -> str:
    """What pydantic says of one invalid value, without its "Value error, " prefix (a
    validator's own message says what to give)."""
    return error["msg"].removeprefix("Value error, ")


def config_error(model: str, error: ValidationError) -> ConfigError:
    """One line naming each invalid field as ``<model>.<field>`` (the CLI maps those to its
    flags), what it must be and what it got; leaves out a tuple's "too short" that its items'
    errors cause."""
    errors = error.errors()
    parents = {e["loc"][:end] for e in errors for end in range(len(e["loc"]))}
    own = [e for e in errors if e["type"] != "too_short" or e["loc"] not in parents]
    problems = "; ".join(
        f"{'.'.join((model, *(str(part) for part in e['loc'])))}: {validation_message(e)} "
        f"(got {one_line(repr(e.get('input')), 80)})"
        for e in own
    )
    return ConfigError(problems)


class ConfigModel(BaseModel):
    """A configuration model whose invalid values raise one :class:`ConfigError` line (Prefect
    validates flow parameters itself)."""

    #: Frozen (hashable), field docstrings as descriptions (Prefect's forms, the CLI's help),
    #: unknown fields refused (a typo in prefect.yaml fails at once), every float finite (NaN or
    #: infinity would silently paint black or never stop).
    model_config = ConfigDict(
        frozen=True, use_attribute_docstrings=True, extra="forbid", allow_inf_nan=False
    )

    def __init__(self, **data: object) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise config_error(type(self).__name__, error) from None

    def changed(self, **changes: object) -> Self:
        """A validated copy with some fields changed."""
        return type(self)(**{**self.model_dump(), **changes})


@dataclass(frozen=True)
class BackendIdentity:
    """What identifies a backend's results: its name, variant and the weights' SHA-256."""

    name: str
    variant: str
    weights_sha256: str | None


def _device_name(device: str) -> str:
    """``device`` if it names a device torch computes on here (its presence is checked by
    :func:`segstyle_core.preflight.check_devices`); ValueError with the accepted forms."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError("not a device: use auto, cpu, cuda or cuda:N")
    return device


#: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked without importing torch.
DeviceName = Annotated[str, AfterValidator(_device_name)]


class BackendConfig(ConfigModel):
    """Settings every model backend has: where it runs and where its checkpoints live."""

    device: DeviceName = "auto"
    """auto, cpu, cuda or cuda:N."""
    weights_dir: str | None = None
    """Checkpoints folder; none: $SEGSTYLE_WEIGHTS_DIR, else the user cache."""

    def identity(self) -> BackendIdentity:
        raise NotImplementedError

    def load_once(self, factory: Callable[[], T], *extra: Hashable) -> T:
        """``factory()``, built at most once per process for this configuration's type, JSON (the
        device as given: resolving ``auto`` would load torch), identity and ``extra``."""
        key = (type(self).__name__, self.model_dump_json(), self.identity(), *extra)
        return MODELS.get_or_create(key, factory)
