"""The settings of a Gatys optimisation, free of torch (:mod:`segstyle_core.stylize.gatys`)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from segstyle_core.backends import ConfigModel

#: VGG19 pools four times before ``conv5_1``; below this a side has no room left.
MIN_SIDE = 32
#: The names of torchvision's ``vgg19().features`` modules in order: ``convB_I`` is the I-th
#: convolution of block B, ``reluB_I`` its ReLU, ``poolB`` the pooling that ends block B.
VGG19Layer = Literal[
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4",
    "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4",
    "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4",
    "pool5",
]  # fmt: skip


def _vgg19_layer(name: str) -> str:
    if name not in get_args(VGG19Layer):
        raise ValueError(f"not a VGG19 layer; use one of {', '.join(get_args(VGG19Layer))}")
    return name


#: A :data:`VGG19Layer` checked by a validator (as a Literal the Prefect form shows no default).
LayerName = Annotated[str, AfterValidator(_vgg19_layer)]
#: Options that change speed only, not the painting: kept out of stage cache keys and rows;
#: ``auto`` takes the machine's calibration (:mod:`segstyle_core.stylize.calibration`).
SPEED_OPTIONS = ("channels_last", "compile")
Pooling = Literal["max", "avg"]
Normalization = Literal["imagenet", "imagenet255"]


class GatysConfig(ConfigModel):
    """Settings of one Gatys optimisation (defaults: Gordić's ``pytorch-neural-style-transfer``
    with the speed options of ``benchmarks/README.md``; its plain float32 run: ``autocast=None,
    channels_last=False, compile=False, plateau_tol=0, coarse_fraction=0``)."""

    content_layers: tuple[LayerName, ...] = Field(default=("conv4_2",), min_length=1)
    """VGG19 layers matched to the content image (conv4_2, relu4_2, ...)."""
    style_layers: tuple[LayerName, ...] = Field(
        default=("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), min_length=1
    )
    """VGG19 layers whose Gram matrices are matched to the style image."""
    style_layer_weights: tuple[float, ...] | None = None
    """One weight per style layer; none: 1 / number of style layers each."""
    content_weight: float = Field(default=1e5, ge=0)
    """Weight of the content loss (the seed paper's runs: 5000)."""
    style_weight: float = Field(default=3e4, ge=0)
    """Weight of the style loss."""
    tv_weight: float = Field(default=1.0, ge=0)
    """Weight of the total-variation (smoothness) loss."""
    height: int = Field(default=400, ge=MIN_SIDE)
    """Working height in pixels of the content and the output, and of the style (aspects kept)."""
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    """lbfgs (torch L-BFGS, strong-Wolfe line search) or adam."""
    iterations: int = Field(default=1000, ge=1)
    """Budget of objective evaluations (one VGG forward + backward each), never exceeded;
    L-BFGS line-search evaluations count, and L-BFGS needs at least 2 to move."""
    learning_rate: float = Field(default=10 / 255, gt=0)
    """Adam step size in [0, 1] pixel units (10 of 255, as the base script)."""
    init: Literal["content", "noise", "style"] = "content"
    """Start from the content image, noise, or the style image resized to the content's size."""
    seed: int = 0
    """Seed of the noise initialisation."""
    pooling: Pooling = "max"
    """VGG pooling: max (torchvision) or avg (Gatys et al.'s suggestion)."""
    normalization: Normalization = "imagenet255"
    """VGG input: imagenet (torchvision's) or imagenet255 (0..255 minus the ImageNet mean)."""
    plateau_tol: float = Field(default=1e-3, ge=0)
    """A plateau: the best total loss improved by less than this (relative) over the last
    plateau_patience evaluations (0: never). It ends the stage (its unused budget goes to the
    next), or under autocast switches the stage to float32 with float32_after_plateau."""
    plateau_patience: int = Field(default=20, ge=1)
    """Evaluations over which a plateau is measured."""
    float32_after_plateau: bool = False
    """Under autocast, a plateau switches the rest of the stage to float32 instead of ending it:
    a lower objective (bfloat16's rounding stalls the loss) for 2-4.5x the cost per evaluation
    (measured on CPUs with AVX512-BF16 and with AMX)."""
    autocast: Literal["auto", "bfloat16", "float16"] | None = "auto"
    """Run VGG under torch.autocast in bfloat16 or float16 (the losses stay float32); auto:
    bfloat16 where the device computes it natively, else float32; none: float32."""
    channels_last: bool | Literal["auto"] = "auto"
    """Use the channels-last memory format for VGG and the image; auto: as this machine's
    calibration chose (speed only: not part of a stage's cache key)."""
    compile: bool | Literal["auto"] = "auto"
    """Run VGG through torch.compile (inductor, fixed shapes: one compilation per crop size);
    auto: as this machine's calibration chose (speed only: not part of a stage's cache key)."""
    content_scale: float | None = Field(default=None, gt=0)
    """Resize the content by this factor instead of to height (sides at least 32 px; the style
    still goes to height): an ROI crop is then painted at the whole frame's scale."""
    coarse_fraction: float = Field(default=0.5, ge=0, lt=1)
    """Coarse-to-fine: this fraction of the evaluations runs first at half the working size;
    its result, upsampled, starts the full-size run of the rest. 0: off."""

    @field_validator("style_layer_weights")
    @classmethod
    def _one_weight_per_style_layer(
        cls, weights: tuple[float, ...] | None, info: ValidationInfo
    ) -> tuple[float, ...] | None:
        layers = info.data.get("style_layers")
        if weights is not None and layers is not None and len(weights) != len(layers):
            raise ValueError(
                f"{len(weights)} weights for {len(layers)} style layers: give one weight per "
                "style layer, or none"
            )
        return weights

    @property
    def layers(self) -> tuple[str, ...]:
        """Content and style layers, without repeats, in a stable order."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))

    def layer_weights(self) -> dict[str, float]:
        """``{style layer: weight}`` with the ``1 / len(style_layers)`` default filled in."""
        equal = (1.0 / len(self.style_layers),) * len(self.style_layers)
        return dict(zip(self.style_layers, self.style_layer_weights or equal, strict=True))
