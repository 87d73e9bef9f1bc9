"""Gatys et al. style transfer on VGG19, optimising the pixels: ``H×W×3 uint8 RGB`` images at
the boundary, ``1×3×h×w`` float tensors in ``[0, 1]`` inside (losses: ``objective``)."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from segstyle_core import devices, weights
from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError
from segstyle_core.fileio import sha256_bytes
from segstyle_core.images import check_rgb
from segstyle_core.stylize import calibration
from segstyle_core.stylize.base import RGB, Progress, ProgressCallback, check_side
from segstyle_core.stylize.gatys_config import MIN_SIDE, GatysConfig
from segstyle_core.stylize.objective import (
    Network,
    autocast_dtype,
    grams_of,
    loss_terms,
    vgg_features,
)
from segstyle_core.stylize.vgg import IMAGENET_MEAN, VGGFeatures, load_vgg19_features

#: Standard deviation of the ``init="noise"`` image around the ImageNet mean (the base script's).
NOISE_STD = 90 / 255


def working_size(shape: tuple[int, ...], height: int) -> tuple[int, int]:
    """``(height, round(W * height / H))`` for an image of shape ``H×W(×3)``: aspect kept."""
    return height, max(1, round(shape[1] * height / shape[0]))


def content_working_size(shape: tuple[int, ...], config: GatysConfig) -> tuple[int, int]:
    """``(h, w)`` of content of shape ``H×W(×3)``: at ``config.height`` (:class:`InputError`:
    width under :data:`MIN_SIDE`), or ``content_scale`` times ``H×W`` (sides >= MIN_SIDE)."""
    if config.content_scale is None:
        size = working_size(shape, config.height)
        where = f"content image at working height {config.height}"
        check_side(size, MIN_SIDE, where, "use a less narrow image")
        return size
    height, width = shape[:2]
    scale = max(config.content_scale, MIN_SIDE / min(height, width))
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def _to_tensor(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``H×W×3 uint8`` -> ``1×3×h×w`` float in ``[0, 1]`` at ``size = (h, w)`` on ``device``."""
    chw = torch.tensor(resize_to(image, size), device=device).permute(2, 0, 1).unsqueeze(0)
    return chw.float().contiguous() / 255.0


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``1×3×h×w`` float -> ``h×w×3 uint8``, clamped to ``[0, 1]`` and rounded."""
    pixels = image.detach()[0].clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())


def _style_grams(
    extractor: VGGFeatures, style: np.ndarray, height: int, config: GatysConfig
) -> dict[str, torch.Tensor]:
    """Gram matrices ``{style layer: 1×C×C}`` of ``style`` (``h×w×3 uint8``) at ``height``."""
    check_rgb(style, "style image")
    fix = "use a larger style image"
    check_side(style.shape, MIN_SIDE, "style image", fix)
    size = working_size(style.shape, height)
    check_side(size, MIN_SIDE, f"style image at working height {height}", fix)
    with torch.no_grad():
        style_t = _to_tensor(style, size, extractor.device)
        return grams_of(vgg_features(extractor, style_t, config), config.style_layers)


def _content_targets(
    extractor: VGGFeatures, content: torch.Tensor, config: GatysConfig
) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        features = vgg_features(extractor, content, config)
    return {name: features[name].float() for name in config.content_layers}  # cast once


def gatys_objective(
    image: RGB, content: RGB, style: RGB, extractor: VGGFeatures, config: GatysConfig
) -> dict[str, float]:
    """Weighted loss terms ``{"content", "style", "tv", "total"}`` of ``image`` (``H×W×3 uint8``)
    at the content's working size, targets as :meth:`GatysStylizer.stylize` prepares them."""
    device = extractor.device
    config = calibration.resolve(config, device)
    check_rgb(content, "content image")
    check_rgb(image, "image")
    size = content_working_size(content.shape, config)
    targets = _content_targets(extractor, _to_tensor(content, size, device), config)
    style_grams = _style_grams(extractor, style, config.height, config)
    with torch.no_grad():
        terms = loss_terms(extractor, _to_tensor(image, size, device), targets, style_grams, config)
    return {name: float(value) for name, value in terms.items()}


class GatysStylizer:
    """Gatys style transfer on VGG19, keeping the Grams of the last ``style_cache_size`` styles."""

    name = "gatys"
    variant = "vgg19"

    def __init__(
        self,
        config: GatysConfig | None = None,
        *,
        device: str = "auto",
        checkpoint: str | os.PathLike[str] | None = None,
        style_cache_size: int = 8,
        extractor: VGGFeatures | None = None,
        verify: bool = True,
    ) -> None:
        """Load VGG19 from ``checkpoint`` (``None``: :func:`segstyle_core.weights.find_checkpoint`),
        checked against the official file's hash unless ``verify`` is off (a file of your own);
        or use ``extractor`` (with the config's layers; ``weights_sha256`` is then ``None``)."""
        self.device = devices.resolve_device(device)
        devices.autotune_convolutions(self.device)
        self._config = calibration.resolve(config or GatysConfig(), self.device)
        self.weights_sha256: str | None = None
        if extractor is None:
            extractor = self._load_extractor(checkpoint or weights.find_checkpoint("vgg19"), verify)
        elif missing := set(self._config.layers) - set(extractor.layers):
            raise ConfigError(
                f"extractor lacks layers {sorted(missing)}: load it with the config's layers"
            )
        else:
            extractor = self._place(extractor)
        self.extractor = extractor
        self.config = self._config  # compiles VGG if configured
        self._style_cache: dict[tuple, dict[str, torch.Tensor]] = {}  # least recent first
        self._style_cache_size = style_cache_size
        self._lock = threading.Lock()

    @property
    def config(self) -> GatysConfig:
        """The settings, ``"auto"`` speed options resolved by this machine's calibration."""
        return self._config

    @config.setter
    def config(self, config: GatysConfig) -> None:
        self._config = calibration.resolve(config, self.device)
        self._network: Network = self.extractor
        if self._config.compile:
            self._network = torch.compile(self.extractor, dynamic=False)

    def _load_extractor(self, path: str | os.PathLike[str], verify: bool) -> VGGFeatures:
        if verify:
            self.weights_sha256 = sha256 = weights.verify_checkpoint(path, "vgg19")
        else:
            self.weights_sha256 = sha256 = weights.own_checkpoint(path, "checkpoint")[1]
        cfg = self.config
        vgg = (tuple(sorted(cfg.layers)), cfg.pooling, cfg.normalization, cfg.channels_last)
        key = ("gatys", self.variant, str(self.device), sha256, *vgg)

        def load() -> VGGFeatures:
            features = load_vgg19_features(path, cfg.layers, cfg.pooling, cfg.normalization)
            return self._place(features)

        return devices.MODELS.get_or_create(key, load)

    def _place(self, extractor: VGGFeatures) -> VGGFeatures:
        placed = extractor.to(self.device)
        return placed.to(memory_format=torch.channels_last) if self.config.channels_last else placed

    def style_targets(self, style: np.ndarray, height: int) -> dict[str, torch.Tensor]:
        """:func:`_style_grams`, cached by the style's bytes, height and layers (computed once,
        under the lock)."""
        digest = sha256_bytes(np.ascontiguousarray(style).tobytes())
        key = (digest, style.shape, height, self.config.style_layers)
        with self._lock:
            grams = self._style_cache.pop(key, None)
            if grams is None:
                grams = _style_grams(self.extractor, style, height, self.config)
            self._style_cache[key] = grams
            while len(self._style_cache) > self._style_cache_size:
                del self._style_cache[next(iter(self._style_cache))]
        return grams

    def stylize(self, content: RGB, style: RGB, progress: ProgressCallback | None = None) -> RGB:
        """Paint ``content`` (``H×W×3 uint8``) like ``style`` (``h×w×3 uint8``); ``h×w×3 uint8``
        at :func:`content_working_size`. ``progress`` gets the weighted loss terms after every
        objective evaluation (coarse stage first). :class:`InputError`: an image too small."""
        cfg = self.config
        check_rgb(content, "content image")
        size = content_working_size(content.shape, cfg)
        half, coarse = (size[0] // 2, size[1] // 2), round(cfg.iterations * cfg.coarse_fraction)
        image, done = None, 0
        if coarse and min(*half, cfg.height // 2) >= MIN_SIDE:
            run = _Run(cfg, self.device, coarse, progress, first_step=0)
            coarse_image = self._optimise(content, style, half, cfg.height // 2, None, run)
            image = F.interpolate(coarse_image, size=size, mode="bilinear", align_corners=False)
            done = run.step  # the full-size stage gets what the coarse one left over
        run = _Run(cfg, self.device, cfg.iterations - done, progress, first_step=done)
        return _to_uint8(self._optimise(content, style, size, cfg.height, image, run))

    def _optimise(
        self,
        content: np.ndarray,
        style: np.ndarray,
        size: tuple[int, int],
        style_height: int,
        init: torch.Tensor | None,
        run: _Run,
    ) -> torch.Tensor:
        """The ``1×3×h×w`` image at ``size`` optimised from ``init`` (``None``: the config's)
        within ``run``'s budget, detached; the best one evaluated if the objective diverged."""
        cfg = self.config
        content_t = _to_tensor(content, size, self.device)
        style_grams = self.style_targets(style, style_height)
        content_targets = _content_targets(self.extractor, content_t, cfg)
        start = self._initial_image(content_t, style) if init is None else init
        # contiguous: L-BFGS flattens the gradient with view(-1); VGG gets a channels-last copy
        image = start.contiguous().requires_grad_(True)

        def objective() -> float:
            optimizer.zero_grad()
            terms = loss_terms(self._network, image, content_targets, style_grams, run.config)
            terms["total"].backward()
            return run.record(terms, image)

        with torch.enable_grad(), contextlib.suppress(_Diverged):
            if cfg.optimizer == "adam":
                optimizer: torch.optim.Optimizer = torch.optim.Adam([image], lr=cfg.learning_rate)
                while not run.done():
                    optimizer.step(objective)
            else:
                optimizer = torch.optim.LBFGS(
                    [image],
                    max_iter=cfg.plateau_patience if cfg.plateau_tol > 0 else run.budget,
                    line_search_fn="strong_wolfe",
                )
                # A step() call evaluates once at its start and at least once in its line
                # search; max_eval = budget - 1 keeps the whole call within the budget.
                while not run.done() and run.budget - run.step >= 2:
                    optimizer.param_groups[0]["max_eval"] = run.budget - run.step - 1
                    before = run.step
                    optimizer.step(objective)
                    if run.step - before <= 1:  # converged: the gradient vanished
                        break
        if run.diverged:
            return start if run.best_image is None else run.best_image
        return image.detach()

    def _initial_image(self, content_t: torch.Tensor, style: np.ndarray) -> torch.Tensor:
        cfg = self.config
        if cfg.init == "content":
            return content_t.clone()
        if cfg.init == "style":
            return _to_tensor(style, (content_t.shape[2], content_t.shape[3]), self.device)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(content_t.shape, generator=generator) * NOISE_STD
        return (noise + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).to(self.device)


class _Diverged(Exception):
    """The objective became NaN or infinite."""


@dataclass
class _Run:
    """One stage of at most ``budget`` evaluations: counter, progress, best image, plateau test;
    :attr:`config` gets ``autocast=None`` once a plateau switched it to float32
    (``float32_after_plateau``)."""

    config: GatysConfig
    device: torch.device
    budget: int
    progress: ProgressCallback | None
    first_step: int
    step: int = 0
    best: list[float] = field(default_factory=list)  # the best total after each evaluation
    best_image: torch.Tensor | None = None
    diverged: bool = False

    def record(self, terms: Mapping[str, torch.Tensor], image: torch.Tensor) -> float:
        """Count, keep the best, report; the total. :class:`_Diverged` for a NaN or inf total."""
        losses = {name: value.item() for name, value in terms.items()}
        if not math.isfinite(losses["total"]):
            self.diverged = True
            raise _Diverged
        self.step += 1
        if not self.best or losses["total"] < self.best[-1]:
            self.best_image = image.detach().clone()
        self.best.append(min(losses["total"], self.best[-1]) if self.best else losses["total"])
        if self.progress is not None:
            self.progress(Progress(self.first_step + self.step, self.config.iterations, losses))
        return losses["total"]

    def done(self) -> bool:
        """Budget spent, or a plateau (``float32_after_plateau`` under autocast: switch to
        float32 instead)."""
        cfg = self.config
        if self.step >= self.budget:
            return True
        if cfg.plateau_tol <= 0 or len(self.best) <= cfg.plateau_patience:
            return False
        old = self.best[-1 - cfg.plateau_patience]
        if old - self.best[-1] > cfg.plateau_tol * abs(old):
            return False
        if not cfg.float32_after_plateau or autocast_dtype(cfg, self.device) is None:
            return True
        self.config = cfg.changed(autocast=None)
        self.best = []
        return False
