"""VGG19 feature extractor for Gatys style transfer, layers named as in
:data:`~segstyle_core.stylize.gatys_config.VGG19Layer`; weights only from a checkpoint file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from copy import deepcopy as copy_module
from typing import Any, get_args

import torch
from torch import nn
from torch.nn.grad import conv2d_input
from torchvision.models.vgg import cfgs, make_layers

from segstyle_core import weights
from segstyle_core.errors import WeightsError
from segstyle_core.stylize.gatys_config import Normalization, Pooling, VGG19Layer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Per-channel divisor applied after subtracting :data:`IMAGENET_MEAN` from ``[0, 1]`` pixels:
#: torchvision's statistics, or the NST base script's 0..255 pixels (its loss weights' scale).
NORMALIZATION_STD: dict[Normalization, tuple[float, float, float]] = {
    "imagenet": IMAGENET_STD,
    "imagenet255": (1 / 255, 1 / 255, 1 / 255),
}


#: A ReLU of wanted layers: ``(their names, B×C×h×w input) -> B×C×h×w output``.
ReLU = Callable[[tuple[str, ...], torch.Tensor], torch.Tensor]


class VGGFeatures(nn.Module):
    """Frozen prefix of torchvision's ``vgg19().features`` up to the deepest of ``layers``."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        features: nn.Sequential,
        layers: Iterable[str],
        pooling: Pooling = "max",
        normalization: Normalization = "imagenet",
    ) -> None:
        super().__init__()
        self.layers = tuple(dict.fromkeys(layers))
        names = list(get_args(VGG19Layer))  # GatysConfig checks the layers' names
        deepest = max(names.index(name) for name in self.layers)
        self.features = nn.Sequential(*(_prepare(m, pooling) for m in features[: deepest + 1]))
        self._plan = _plan(names[: deepest + 1], list(self.features), frozenset(self.layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(NORMALIZATION_STD[normalization]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()
        self._copies: dict[torch.dtype, VGGFeatures] = {}  # in_dtype's, not submodules

    def in_dtype(self, dtype: torch.dtype) -> VGGFeatures:
        """A copy with every weight after ``conv1_1`` in ``dtype``, made once per dtype (device
        and memory format as this extractor's then); in bfloat16 on a CPU, those convolutions
        run on weights packed once (:class:`_PackedConv2d`)."""
        copy = self._copies.get(dtype)
        if copy is None:
            copy = copy_module(self, memo={id(self._copies): {}})  # not the other copies
            copy.features[1:].to(dtype)
            if dtype == torch.bfloat16 and _PackedConv2d.available(self.device):
                copy._plan[1:] = [
                    (_PackedConv2d(m) if isinstance(m, nn.Conv2d) else m, names)
                    for m, names in copy._plan[1:]
                ]
            self._copies[dtype] = copy
        return copy

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def forward(self, image: torch.Tensor, relu: ReLU | None = None) -> dict[str, torch.Tensor]:
        """Map ``B×3×H×W`` RGB in ``[0, 1]`` to ``{layer: B×C×h×w}`` for :attr:`layers`;
        ``relu(layers, x)``, when given, computes each wanted ReLU (the objective fuses its style
        terms into them). ``conv1_1`` runs in float32 also under autocast (bfloat16 pixels would
        hide L-BFGS's small line-search steps; it is 0.5 % of the FLOPs); under bfloat16 its
        output is rounded to bfloat16 at once (float16 keeps float32: its Gram sums overflow)."""
        x = (image - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        device = x.device.type
        bfloat16 = torch.is_autocast_enabled(device) and (
            torch.get_autocast_dtype(device) == torch.bfloat16
        )
        for index, (module, names) in enumerate(self._plan):
            if index == 0 and bfloat16:
                x = _Float32ConvolutionToBfloat16.apply(x, module)
            elif index == 0:
                with torch.autocast(device, enabled=False):
                    x = module(x.float())
            elif relu is not None and names and isinstance(module, nn.ReLU):
                x = relu(names, x)
            else:
                x = module(x)
            out |= dict.fromkeys(names, x)
        return out


class _Float32ConvolutionToBfloat16(torch.autograd.Function):
    """``conv(x)`` computed in float32 and rounded to bfloat16; its gradient to ``x`` computed
    in bfloat16 (the incoming gradient is bfloat16 already): oneDNN's float32 backward to 3
    channels takes 7x as long (400x800: 17 ms against 2.5 ms)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        ctx.conv, ctx.input_shape = conv, x.shape
        with torch.autocast(x.device.type, enabled=False):
            return conv(x.float()).to(torch.bfloat16)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        conv: nn.Conv2d = ctx.conv
        weight = conv.weight.to(grad.dtype)
        options = (conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv2d_input(ctx.input_shape, weight, grad, *options).float(), None


class _PackedConv2d(nn.Module):
    """A frozen 3×3 ``conv`` (stride 1, padding 1) on oneDNN weights packed once, for the CPU:
    ``nn.Conv2d`` reorders its weights on every call, forward and backward (0.4 ms for
    512×512×3×3, most of a call on small maps). The gradient to the input is the convolution
    of the incoming gradient with the flipped, transposed kernel, packed too. Same bfloat16
    results as ``conv``; ``torch.ops.mkldnn`` is what inductor packs weights with."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1):
            raise ValueError(f"not a 3x3 convolution of stride and padding 1: {conv}")
        self.bias = conv.bias
        self.packed = _pack(conv.weight)
        self.packed_transposed = _pack(conv.weight.transpose(0, 1).flip(2, 3).contiguous())

    @staticmethod
    def available(device: torch.device) -> bool:
        """Whether ``device`` is a CPU whose oneDNN computes bfloat16 (inductor's check: CPUs
        without AVX512 or AVX-NE-CONVERT keep ``nn.Conv2d``, which has another kernel)."""
        return (
            device.type == "cpu"
            and torch.backends.mkldnn.is_available()
            and bool(torch.backends.mkldnn.enabled)
            and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _PackedConvolution.apply(x, self)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """``O×I×3×3`` weights in oneDNN's blocked layout (chosen for a 64×64 map; any size runs)."""
    ones = [1, 1]
    shape = [1, weight.shape[1], 64, 64]
    return torch.ops.mkldnn._reorder_convolution_weight(weight, ones, ones, ones, 1, shape)


def _convolve(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``B×I×H×W`` -> ``B×O×H×W`` (channels-last) with weights from :func:`_pack`."""
    ones = [1, 1]
    return torch.ops.mkldnn._convolution_pointwise(
        x, packed, bias, ones, ones, ones, 1, "none", [], ""
    )


class _PackedConvolution(torch.autograd.Function):
    """:class:`_PackedConv2d`'s convolution; its backward, the gradient to the input only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, conv: _PackedConv2d) -> torch.Tensor:
        ctx.conv = conv
        return _convolve(x, conv.packed, conv.bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _convolve(grad, ctx.conv.packed_transposed, None), None


def _plan(
    names: list[str], modules: list[nn.Module], wanted: frozenset[str]
) -> list[tuple[nn.Module, tuple[str, ...]]]:
    """``(module, wanted layers its output is)`` in the order they run: a ReLU whose output is
    not wanted runs after the max-pool that follows it, on a quarter of the pixels (max and ReLU
    commute: maps and gradients are bit-identical)."""
    plan: list[tuple[nn.Module, tuple[str, ...]]] = [
        (module, (name,) if name in wanted else ())
        for name, module in zip(names, modules, strict=True)
    ]
    for index in range(len(plan) - 1):
        (relu, relu_names), (pool, pool_names) = plan[index], plan[index + 1]
        if isinstance(relu, nn.ReLU) and isinstance(pool, nn.MaxPool2d) and not relu_names:
            plan[index], plan[index + 1] = (pool, ()), (relu, pool_names)
    return plan


def _prepare(module: nn.Module, pooling: Pooling) -> nn.Module:
    """Out-of-place ReLUs (stored conv outputs stay unrectified); avg pooling if asked."""
    if isinstance(module, nn.ReLU):
        return nn.ReLU(inplace=False)
    if isinstance(module, nn.MaxPool2d) and pooling == "avg":
        return nn.AvgPool2d(kernel_size=module.kernel_size, stride=module.stride)
    return module


def load_vgg19_features(
    path: str | os.PathLike[str],
    layers: Iterable[str],
    pooling: Pooling = "max",
    normalization: Normalization = "imagenet",
) -> VGGFeatures:
    """The ``features.*`` weights of a torchvision VGG19 state dict (checksum unchecked) as a
    :class:`VGGFeatures`; :class:`WeightsError` for a file without them."""
    state = weights.load_state_dict(path)
    prefix = "features."
    feature_state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    with torch.device("meta"):  # no random init: the checkpoint's tensors are assigned
        features = make_layers(cfgs["E"])  # torchvision's VGG19
    try:
        features.load_state_dict(feature_state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(
            f"{path}: not a torchvision VGG19 checkpoint ({detail}); "
            "run `segstyle weights download vgg19`"
        ) from exc
    return VGGFeatures(features, layers, pooling=pooling, normalization=normalization)
