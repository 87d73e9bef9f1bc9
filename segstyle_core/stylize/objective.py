"""The Gatys objective on tensors: VGG features under the configured precision, the loss terms.

Loss terms (``F``/``P`` features of the image / the content image, ``G``/``A`` Gram matrices of
the image / the style image, see :func:`gram_matrix`):

* content: ``mean((F - P)**2)`` per content layer, summed over content layers;
* style: ``sum_l w_l * sum((G_l - A_l)**2)``, ``w_l`` from ``style_layer_weights`` (or equal);
* TV: ``sum |x[i, j+1] - x[i, j]| + sum |x[i+1, j] - x[i, j]|`` over channels, in 8-bit units;
* total: ``content_weight * content + style_weight * style + tv_weight * TV``.

Images are ``1×3×h×w`` float tensors in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from segstyle_core.devices import native_bfloat16
from segstyle_core.stylize.gatys_config import GatysConfig
from segstyle_core.stylize.vgg import VGGFeatures

#: A :class:`VGGFeatures` or its torch.compile wrapper: ``1×3×h×w`` -> ``{layer: 1×C×h'×w'}``.
Network = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _flat(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``B×C×H×W`` features as a matrix without a copy: ``B×HW×C`` for channels-last ones
    (then ``True``), else ``B×C×HW``."""
    b, c, h, w = features.shape
    if features.is_contiguous(memory_format=torch.channels_last) and not features.is_contiguous():
        return features.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return features.reshape(b, c, h * w), False


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Float32 Gram matrices ``B×C×C`` of ``B×C×H×W`` features, divided by ``C*H*W``. The
    product runs in the features' dtype (bfloat16 products accumulate in float32, then round
    to bfloat16 before they are widened)."""
    b, c, h, w = features.shape
    flat, nhwc = _flat(features)
    product = (
        torch.bmm(flat.transpose(1, 2), flat) if nhwc else torch.bmm(flat, flat.transpose(1, 2))
    )
    return _at_least_float32(product) / (c * h * w)


class _StyleTerm(torch.autograd.Function):
    """``weight * sum((gram_matrix(F) - A)**2)`` with a one-product backward,
    ``dF = 2 * weight * (D + Dᵀ) F / (C*H*W)`` for ``D = gram_matrix(F) - A`` (autograd's
    does two, and more passes over the ``C×C`` matrices, which dominate small crops)."""

    @staticmethod
    def forward(
        ctx: Any, features: torch.Tensor, target: torch.Tensor, weight: float
    ) -> torch.Tensor:
        b, c, h, w = features.shape
        flat, nhwc = _flat(features)
        difference = gram_matrix(features).sub_(target)
        ctx.save_for_backward(flat, difference)
        ctx.nhwc, ctx.shape, ctx.scale = nhwc, (b, c, h, w), 2 * weight / (c * h * w)
        return weight * torch.vdot(difference.view(-1), difference.view(-1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        flat, difference = ctx.saved_tensors
        b, c, h, w = ctx.shape
        sym = torch.add(difference, difference.transpose(1, 2)).mul_(grad * ctx.scale)
        sym = sym.to(flat.dtype)
        if ctx.nhwc:
            return torch.bmm(flat, sym).reshape(b, h, w, c).permute(0, 3, 1, 2), None, None
        return torch.bmm(sym, flat).reshape(b, c, h, w), None, None


def _mean_square(difference: torch.Tensor) -> torch.Tensor:
    # not mse_loss nor square().mean(): on CPU their backward takes 4x as long (conv4_2 at
    # 400x800: 13 ms against 3 ms, forward and backward)
    return (difference * difference).sum() / difference.numel()


def content_loss(
    features: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Sum over the layers in ``targets`` of the mean squared feature difference."""
    return torch.stack(
        [
            _mean_square(_at_least_float32(features[name]) - _at_least_float32(target))
            for name, target in targets.items()
        ]
    ).sum()


def style_loss(
    features: Mapping[str, torch.Tensor],
    target_grams: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
) -> torch.Tensor:
    """``sum_l w_l * sum((gram(F_l) - A_l)**2)`` over the layers in ``layer_weights``."""
    return torch.stack(
        [
            _StyleTerm.apply(features[name], target_grams[name], weight)
            for name, weight in layer_weights.items()
        ]
    ).sum()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of ``B×3×H×W`` in ``[0, 1]``, in 8-bit units (×255)."""
    dx = torch.sum(torch.abs(image[:, :, :, 1:] - image[:, :, :, :-1]))
    dy = torch.sum(torch.abs(image[:, :, 1:, :] - image[:, :, :-1, :]))
    return 255.0 * (dx + dy)


def total_loss(
    features: Mapping[str, torch.Tensor],
    image: torch.Tensor,
    content_targets: Mapping[str, torch.Tensor],
    style_grams: Mapping[str, torch.Tensor],
    config: GatysConfig,
) -> dict[str, torch.Tensor]:
    """Weighted loss terms ``{"content", "style", "tv", "total"}`` (``total`` their sum) of
    ``image`` (``1×3×h×w`` in ``[0, 1]``) and its VGG ``features`` (:func:`vgg_features`)."""
    terms = {
        "content": config.content_weight * content_loss(features, content_targets),
        "style": config.style_weight * style_loss(features, style_grams, config.layer_weights()),
        "tv": config.tv_weight * tv_loss(image),
    }
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    return terms


def autocast_dtype(config: GatysConfig, device: torch.device) -> torch.dtype | None:
    """The dtype VGG runs in under ``config.autocast`` on ``device``; ``None`` = float32."""
    if config.autocast == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    return None if config.autocast is None else getattr(torch, config.autocast)


def vgg_features(
    extractor: Network, image: torch.Tensor, config: GatysConfig
) -> dict[str, torch.Tensor]:
    """Features of ``image`` (autocast and memory format as configured): float32, or bfloat16
    under bfloat16 autocast (the losses cast what needs float32; float16 Gram sums would
    overflow). Under autocast a :class:`VGGFeatures` runs as :meth:`VGGFeatures.in_dtype`:
    autocast would cast every weight on every call (it caches casts only of weights that
    require grad)."""
    if config.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(config, image.device)
    if dtype is None:
        return {name: value.float() for name, value in extractor(image).items()}
    if isinstance(extractor, VGGFeatures):
        extractor = extractor.in_dtype(dtype)
    with torch.autocast(image.device.type, dtype=dtype):
        features = extractor(image)
    if dtype == torch.bfloat16:
        return features
    return {name: value.float() for name, value in features.items()}


def grams_of(
    features: Mapping[str, torch.Tensor], layers: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    return {name: gram_matrix(features[name]) for name in layers}
