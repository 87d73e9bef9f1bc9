"""VGG19 feature extractor for Gatys style transfer.

Layers are named as in Gatys et al. (:data:`~segstyle_core.stylize.gatys_config.VGG19Layer`):
``convB_I`` is the I-th convolution of block B (its output before the ReLU), ``reluB_I`` the
rectified output, ``poolB`` the pooling that ends block B. :func:`layer_names` gives these names
to the modules of a VGG ``features`` Sequential by walking it.

Weights are the official ImageNet checkpoint (``vgg19-dcbb9e9d.pth``); this module never
downloads and never initialises weights itself: :func:`load_vgg19_features` needs a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from copy import deepcopy as copy_module

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from segstyle_core import weights
from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.stylize.gatys_config import Normalization, Pooling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Per-channel divisor applied after subtracting :data:`IMAGENET_MEAN` from ``[0, 1]`` pixels.
#: ``"imagenet"`` is torchvision's convention (the statistics the weights were trained with);
#: ``"imagenet255"`` is the NST base script's: 0..255 pixels minus the ImageNet mean, unit std.
#: The base script's loss weights (content 1e5, style 3e4) are calibrated to ``"imagenet255"``.
NORMALIZATION_STD: dict[Normalization, tuple[float, float, float]] = {
    "imagenet": IMAGENET_STD,
    "imagenet255": (1 / 255, 1 / 255, 1 / 255),
}

_VGG19_CFG = "E"  # torchvision's configuration name for VGG19


def layer_names(features: nn.Sequential) -> list[str]:
    """Name each module of a VGG ``features`` Sequential: ``conv1_1, relu1_1, ..., pool5``."""
    names: list[str] = []
    block, index = 1, 0
    for module in features:
        if isinstance(module, nn.Conv2d):
            index += 1
            names.append(f"conv{block}_{index}")
        elif isinstance(module, nn.ReLU):
            names.append(f"relu{block}_{index}")
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            names.append(f"pool{block}")
            block, index = block + 1, 0
        else:
            raise TypeError(f"unexpected module {type(module).__name__} in VGG features")
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG19 ``features`` prefix returning named feature maps.

    Input: ``B×3×H×W`` float RGB in ``[0, 1]``; normalisation happens inside. Output: a dict
    ``{layer name: B×C×h×w tensor}`` for the requested layers only.
    """

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
        names = layer_names(features)
        unknown = [name for name in self.layers if name not in names]
        if not self.layers or unknown:
            raise ConfigError(
                f"VGG layers {list(self.layers)}: give one or more of {names[0]}..{names[-1]}, "
                "e.g. conv4_2, relu1_1"
            )
        deepest = max(names.index(name) for name in self.layers)
        self._names = names[: deepest + 1]
        self._wanted = frozenset(self.layers)
        self.features = nn.Sequential(*(_prepare(m, pooling) for m in features[: deepest + 1]))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(NORMALIZATION_STD[normalization]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()
        self._copies: dict[torch.dtype, VGGFeatures] = {}  # in_dtype's, not submodules

    def in_dtype(self, dtype: torch.dtype) -> VGGFeatures:
        """A copy with every weight after ``conv1_1`` in ``dtype`` (``conv1_1`` runs in float32,
        see :meth:`forward`), made once per dtype on first use and kept; device and memory
        format as this extractor's at that time."""
        copy = self._copies.get(dtype)
        if copy is None:
            copy = copy_module(self)
            copy.features[1:].to(dtype)
            self._copies[dtype] = copy
        return copy

    @property
    def device(self) -> torch.device:
        """The device the weights are on."""
        return self.mean.device

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map ``B×3×H×W`` RGB in ``[0, 1]`` to ``{layer: B×C×h×w}`` for :attr:`layers`.

        ``conv1_1`` always runs in float32, also under ``torch.autocast``: bfloat16 keeps 8
        significant bits, so the normalised pixels (about ±128) would be rounded to steps of
        up to half a grey level. That hides the small steps of L-BFGS's line search, which
        then stalls or diverges (measured by ``benchmarks/bench_pipeline.py``); ``conv1_1``
        is 0.5 % of the network's FLOPs.
        """
        x = (image - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for index, (name, module) in enumerate(zip(self._names, self.features, strict=True)):
            if index == 0:
                with torch.autocast(x.device.type, enabled=False):
                    x = module(x.float())
            else:
                x = module(x)
            if name in self._wanted:
                out[name] = x
        return out


def _prepare(module: nn.Module, pooling: Pooling) -> nn.Module:
    """Make ReLUs out-of-place (so stored conv outputs stay unrectified); swap pooling if asked."""
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
    """Load the ``features`` part of a VGG19 ImageNet checkpoint as a :class:`VGGFeatures`.

    ``path`` is a torchvision-format state dict (keys ``features.N.weight``...), loaded with
    :func:`segstyle_core.weights.load_state_dict` (``weights_only=True``). The classifier
    weights in the file are ignored. Checksum verification is the caller's job.

    Raises:
        WeightsError: the file does not hold VGG19 ``features`` weights.
    """
    state = weights.load_state_dict(path)
    prefix = "features."
    feature_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    with torch.device("meta"):  # no random init: the checkpoint's tensors are assigned
        features = make_layers(cfgs[_VGG19_CFG])
    try:
        features.load_state_dict(feature_state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise WeightsError(
            f"{path}: not a torchvision VGG19 checkpoint ({detail}); "
            "run `segstyle weights download vgg19`"
        ) from exc
    return VGGFeatures(features, layers, pooling=pooling, normalization=normalization)
