"""The settings of a Gatys optimisation: a typed model free of torch (the CLI and the flows'
forms read it without loading torch; :mod:`segstyle_core.stylize.gatys` runs it)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from segstyle_core.backends import ConfigModel
from segstyle_core.errors import ConfigError

#: VGG19 pools four times before ``conv5_1``; below this a side has no room left.
MIN_SIDE = 32
#: Reduced-precision types VGG may run in under ``torch.autocast``.
AUTOCAST_DTYPES = ("bfloat16", "float16")
Autocast = Literal["auto", "bfloat16", "float16"]
#: VGG pooling: ``max`` (torchvision) or ``avg`` (Gatys et al.'s suggestion).
Pooling = Literal["max", "avg"]
#: VGG input scaling (see :data:`segstyle_core.stylize.vgg.NORMALIZATION_STD`).
Normalization = Literal["imagenet", "imagenet255"]
#: The base script's layers: content ``conv4_2``, style ``relu1_1 .. relu5_1``.
DEFAULT_CONTENT_LAYERS = ("conv4_2",)
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_LAYERS = tuple(dict.fromkeys(DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS))


class GatysConfig(ConfigModel):
    """Settings of one Gatys optimisation (defaults: the NST base script, see module doc).

    Each field's docstring is its description in the Prefect UI and the CLI's help.
    """

    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    """VGG19 layers matched to the content image (conv4_2, relu4_2, ...)."""
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    """VGG19 layers whose Gram matrices are matched to the style image."""
    style_layer_weights: tuple[float, ...] | None = None
    """One weight per style layer; none: 1 / number of style layers each."""
    content_weight: float = 1e5
    """Weight of the content loss (the seed paper's runs: 5000)."""
    style_weight: float = 3e4
    """Weight of the style loss."""
    tv_weight: float = 1.0
    """Weight of the total-variation (smoothness) loss."""
    height: int = 400
    """Working height in pixels: the content is resized to it (aspect kept), the style to the
    same height (its own aspect); the output has the content's working size."""
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    """lbfgs (torch L-BFGS, strong-Wolfe line search) or adam."""
    iterations: int = 1000
    """Budget of objective evaluations (one VGG forward + backward each), never exceeded;
    L-BFGS line-search evaluations count, and L-BFGS needs at least 2 to move."""
    learning_rate: float = 10 / 255
    """Adam step size in [0, 1] pixel units (10 of 255, as the base script); L-BFGS uses its
    own line search."""
    init: Literal["content", "noise", "style"] = "content"
    """Start from the content image, noise, or the style image resized to the content's size."""
    seed: int = 0
    """Seed of the noise initialisation."""
    pooling: Pooling = "max"
    """VGG pooling: max (torchvision) or avg (Gatys et al.'s suggestion)."""
    normalization: Normalization = "imagenet255"
    """VGG input scaling (see segstyle_core.stylize.vgg.NORMALIZATION_STD)."""
    plateau_tol: float = 1e-3
    """A plateau is a best total loss that improved by less than this (relative) over the last
    plateau_patience evaluations; 0 disables the test. Under autocast a plateau switches the
    rest of the stage to float32; in float32 it ends the stage (its unused budget goes to the
    next). Checked after every Adam step and every L-BFGS step() call."""
    plateau_patience: int = 20
    """Evaluations over which a plateau is measured."""
    autocast: Autocast | None = "auto"
    """Run VGG under torch.autocast in bfloat16 or float16; auto: bfloat16 where the device
    computes it natively, else float32; none: float32. Gram matrices and losses stay float32."""
    channels_last: bool = True
    """Use the channels-last memory format for VGG and the image."""
    content_scale: float | None = None
    """Resize the content by this factor instead of to height (the style still goes to
    height): an ROI crop is then painted at the whole frame's scale. Sides under 32 px are
    enlarged to 32 px."""
    coarse_fraction: float = 0.5
    """Coarse-to-fine: this fraction of the evaluations runs first at half the working size;
    its result, upsampled, starts the full-size run of the rest. 0: off."""

    @model_validator(mode="after")
    def _check(self) -> GatysConfig:
        """Rules across fields (raised as one :class:`ConfigError` line)."""
        if not self.content_layers or not self.style_layers:
            raise ConfigError("Gatys needs at least one content layer and one style layer")
        if self.layers != DEFAULT_LAYERS:  # the defaults are VGG19 layers; others: ask torchvision
            from segstyle_core.stylize.vgg import check_layers

            check_layers(self.layers)
        if self.style_layer_weights is not None and len(self.style_layer_weights) != len(
            self.style_layers
        ):
            raise ConfigError(
                f"style_layer_weights has {len(self.style_layer_weights)} entries for "
                f"{len(self.style_layers)} style layers: give one weight per layer or None"
            )
        for name in ("content_weight", "style_weight", "tv_weight", "plateau_tol"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} is negative: use a value >= 0")
        minimums = (
            ("height", MIN_SIDE),
            ("iterations", 1),
            ("plateau_patience", 1),
        )
        for name, low in minimums:
            if getattr(self, name) < low:
                raise ConfigError(f"{name}={getattr(self, name)} is too small: use >= {low}")
        for name in ("learning_rate", "content_scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be > 0")
        if not 0 <= self.coarse_fraction < 1:
            raise ConfigError(f"coarse_fraction={self.coarse_fraction}: use 0 (off) up to < 1")
        choices = {
            "optimizer": ("lbfgs", "adam"),
            "init": ("content", "noise", "style"),
            "autocast": (None, "auto", *AUTOCAST_DTYPES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is unknown: use one of {allowed}"
                )
        return self

    @property
    def layers(self) -> tuple[str, ...]:
        """Content and style layers, without repeats, in a stable order."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    def layer_weights(self) -> dict[str, float]:
        """``{style layer: weight}`` with the ``1 / len(style_layers)`` default filled in."""
        given = self.style_layer_weights
        equal = (1.0 / len(self.style_layers),) * len(self.style_layers)
        return dict(zip(self.style_layers, given or equal, strict=True))
