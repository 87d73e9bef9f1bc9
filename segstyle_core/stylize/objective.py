"""The Gatys objective on ``1×3×h×w`` float images in ``[0, 1]``: VGG features under the
configured precision and the loss terms (content: mean squared feature difference per layer;
style: weighted squared Gram differences; TV in 8-bit units; total: their weighted sum)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from segstyle_core.devices import native_bfloat16
from segstyle_core.stylize.gatys_config import GatysConfig
from segstyle_core.stylize.vgg import ReLU, VGGFeatures

#: A :class:`VGGFeatures` or its torch.compile wrapper: ``1×3×h×w`` -> ``{layer: 1×C×h'×w'}``.
Network = Callable[[torch.Tensor, ReLU | None], dict[str, torch.Tensor]]


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
    """Float32 Gram matrices ``B×C×C`` of ``B×C×H×W`` features, divided by ``C*H*W``; the
    product runs in the features' dtype."""
    b, c, h, w = features.shape
    flat, nhwc = _flat(features)
    left, right = (flat.transpose(1, 2), flat) if nhwc else (flat, flat.transpose(1, 2))
    return _at_least_float32(torch.bmm(left, right)) / (c * h * w)


def _style_gradient(ctx: Any, grad: torch.Tensor, out: torch.Tensor | None = None) -> Any:
    """The term's gradient ``2 * weight * (D + Dᵀ) F / (C*H*W)`` in one product, shaped, laid
    out and typed as ``F``; added to ``out`` (so shaped and laid out) inside it when given."""
    features, difference = ctx.saved_tensors
    sym = torch.add(difference, difference.transpose(1, 2)).mul_(grad * ctx.scale)
    flat, nhwc = _flat(features)
    result = torch.empty_like(features) if out is None else out
    flat_result, _ = _flat(result)  # a view: the product lands in ``result``
    left, right = (flat, sym.to(flat.dtype)) if nhwc else (sym.to(flat.dtype), flat)
    if out is None:
        torch.bmm(left, right, out=flat_result)
    else:
        flat_result.baddbmm_(left, right)
    return result


class _StyleTerm(torch.autograd.Function):
    """``weight * sum((gram_matrix(F) - A)**2)`` with a one-product backward (autograd's does
    two, and more passes over the ``C×C`` matrices, which dominate small crops)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, target: torch.Tensor, weight: float) -> Any:
        """``weight * sum(D**2)`` for ``D = gram_matrix(F) - A`` (``B×C×C``, float32), saving
        ``F`` and ``D`` for :func:`_style_gradient` (also into :class:`_StyledReLU`'s ``ctx``)."""
        difference = gram_matrix(features).sub_(target)
        ctx.save_for_backward(features, difference)
        ctx.scale = 2 * weight / features[0].numel()
        return weight * torch.vdot(difference.view(-1), difference.view(-1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _style_gradient(ctx, grad), None, None


class _StyledReLU(torch.autograd.Function):
    """``relu(x)`` and its :class:`_StyleTerm` in one node. The backward adds the term's
    gradient to the map's inside the product, then applies the ReLU's mask: autograd would sum
    the two gradients in a pass over the whole map (relu1_1 at 400×800: 64×400×800 values).
    The sum lands in the incoming gradient's own buffer: the map may reach the loss only
    through layers whose backward makes a fresh gradient (VGG's convolutions and pools, the
    content term: what :func:`loss_terms` builds), never through one that hands the same
    gradient to another input (an ``add`` with a tensor that requires grad)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, target: torch.Tensor, weight: float) -> Any:
        features = torch.relu(x)
        with torch.autocast(x.device.type, enabled=False):  # the Gram in the maps' dtype
            return features, _StyleTerm.forward(ctx, features, target, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, grad_features: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        features = ctx.saved_tensors[0]
        layout = torch.channels_last if _flat(features)[1] else torch.contiguous_format
        out = grad_features.contiguous(memory_format=layout)  # autograd's buffer, or a copy
        _style_gradient(ctx, grad, out)
        return torch.ops.aten.threshold_backward(out, features, 0), None, None


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
    computed: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``sum_l w_l * sum((gram(F_l) - A_l)**2)`` over the layers in ``layer_weights``; the
    terms in ``computed`` (by their ReLU) are taken as they are."""
    computed = computed or {}
    return torch.stack(
        [
            computed[name]
            if name in computed
            else _StyleTerm.apply(features[name], target_grams[name], weight)
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
    style: torch.Tensor,
    config: GatysConfig,
) -> dict[str, torch.Tensor]:
    """Weighted terms ``{"content", "style", "tv", "total"}`` (total: their sum) of ``image``
    (``1×3×h×w`` in ``[0, 1]``), its :func:`vgg_features` and unweighted :func:`style_loss`."""
    terms = {
        "content": config.content_weight * content_loss(features, content_targets),
        "style": config.style_weight * style,
        "tv": config.tv_weight * tv_loss(image),
    }
    terms["total"] = terms["content"] + terms["style"] + terms["tv"]
    return terms


def loss_terms(
    network: Network,
    image: torch.Tensor,
    content_targets: Mapping[str, torch.Tensor],
    style_grams: Mapping[str, torch.Tensor],
    config: GatysConfig,
) -> dict[str, torch.Tensor]:
    """:func:`total_loss` of ``image`` (``1×3×h×w`` in ``[0, 1]``): its VGG features with the
    style term of each ReLU style layer fused into that ReLU (:class:`_StyledReLU`), except
    where the ReLU's input is float16 (its Gram sums would overflow)."""
    weights = config.layer_weights()
    fused: dict[str, torch.Tensor] = {}

    def relu(names: tuple[str, ...], x: torch.Tensor) -> torch.Tensor:
        name = next((name for name in names if name in weights), None)
        if name is None or x.dtype == torch.float16:
            return torch.relu(x)
        features, fused[name] = _StyledReLU.apply(x, style_grams[name], weights[name])
        return features

    features = vgg_features(network, image, config, relu)
    style = style_loss(features, style_grams, weights, fused)
    return total_loss(features, image, content_targets, style, config)


def autocast_dtype(config: GatysConfig, device: torch.device) -> torch.dtype | None:
    """The dtype VGG runs in under ``config.autocast`` on ``device``; ``None`` = float32."""
    if config.autocast == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    return None if config.autocast is None else getattr(torch, config.autocast)


def vgg_features(
    extractor: Network,
    image: torch.Tensor,
    config: GatysConfig,
    relu: ReLU | None = None,
) -> dict[str, torch.Tensor]:
    """Features of ``image`` (autocast and memory format as configured): float32, or bfloat16
    under bfloat16 autocast. Under autocast a :class:`VGGFeatures` runs as
    :meth:`VGGFeatures.in_dtype` (autocast would cast every frozen weight on every call)."""
    if config.channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    dtype = autocast_dtype(config, image.device)
    if dtype is not None and isinstance(extractor, VGGFeatures):
        extractor = extractor.in_dtype(dtype)
    with torch.autocast(image.device.type, dtype=dtype, enabled=dtype is not None):
        features = extractor(image, relu)
    if dtype == torch.bfloat16:
        return features
    return {name: value.float() for name, value in features.items()}


def grams_of(
    features: Mapping[str, torch.Tensor], layers: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    return {name: gram_matrix(features[name]) for name in layers}
