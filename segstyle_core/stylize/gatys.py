"""Gatys et al. neural style transfer on VGG19, optimising the image's pixels.

The defaults reproduce the NST base script the seed paper builds on (Gordić's
``pytorch-neural-style-transfer``, via Nafis): content layer ``conv4_2`` (before its ReLU),
style layers ``relu1_1 .. relu5_1`` (the rectified responses that Gatys et al. call
``conv1_1 .. conv5_1``: Caffe's ReLUs run in place), content/style/TV weights 1e5 / 3e4 / 1,
L-BFGS for up to 1000 objective evaluations, target height 400, initialised from the content
image, VGG input as 0..255 pixels minus the ImageNet mean (``normalization="imagenet255"``;
the weights are calibrated to that scale). The seed paper's own runs used content weight 5000
and a lower style weight to keep the street's geometry.

The performance options of :class:`GatysConfig` default to what
``benchmarks/bench_pipeline.py`` measured (see ``benchmarks/README.md``): bfloat16 autocast
where the device computes it natively, switching to float32 at a loss plateau; coarse-to-fine
over half the budget; stopping at a float32 plateau; the channels-last layout and torch.compile
as this machine's calibration chose (:mod:`segstyle_core.stylize.calibration`).
Together they keep the objective within a few percent of a float32 run (lower, with
coarse-to-fine) at about half its cost. ``content_scale`` (off) serves ROI stylization.
``GatysConfig(autocast=None, channels_last=False, compile=False, plateau_tol=0,
coarse_fraction=0)`` is the seed's plain float32 optimisation.

Loss terms: :mod:`segstyle_core.stylize.objective`.

Images are ``H×W×3 uint8 RGB`` numpy arrays at the boundary; inside, ``1×3×h×w`` float tensors
in ``[0, 1]``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from segstyle_core import devices, weights
from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.fileio import sha256_bytes
from segstyle_core.images import check_rgb
from segstyle_core.stylize import calibration
from segstyle_core.stylize.base import RGB, Progress, ProgressCallback
from segstyle_core.stylize.gatys_config import MIN_SIDE, GatysConfig
from segstyle_core.stylize.objective import (
    Network,
    autocast_dtype,
    grams_of,
    total_loss,
    vgg_features,
)
from segstyle_core.stylize.vgg import IMAGENET_MEAN, VGGFeatures, load_vgg19_features

#: Standard deviation of the ``init="noise"`` image, in ``[0, 1]`` units (90 of 255, as the
#: base script); the noise is centred on the ImageNet mean colour.
NOISE_STD = 90 / 255


# --- image <-> tensor helpers -------------------------------------------------------------------


def working_size(shape: tuple[int, ...], height: int) -> tuple[int, int]:
    """``(height, round(W * height / H))`` for an image of shape ``H×W(×3)``: aspect kept."""
    return height, max(1, round(shape[1] * height / shape[0]))


def content_working_size(shape: tuple[int, ...], config: GatysConfig) -> tuple[int, int]:
    """The content's working size ``(h, w)`` for an image of shape ``H×W(×3)``.

    ``config.height`` high with the aspect kept, or ``config.content_scale`` times ``H×W``
    with the shorter side enlarged to :data:`MIN_SIDE` if it falls below.

    Raises:
        InputError: at ``config.height``, the width falls under :data:`MIN_SIDE`.
    """
    if config.content_scale is None:
        size = working_size(shape, config.height)
        where = f"content image at working height {config.height}"
        _check_side(size, where, "use a less narrow image")
        return size
    height, width = shape[:2]
    scale = max(config.content_scale, MIN_SIDE / min(height, width))
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def _check_side(size: tuple[int, ...], what: str, fix: str) -> None:
    if min(size[:2]) < MIN_SIDE:
        raise InputError(
            f"{what} is {size[1]}x{size[0]} px, under VGG19's minimum of {MIN_SIDE} px a side; "
            f"{fix}"
        )


def _to_tensor(image: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``H×W×3 uint8`` -> ``1×3×h×w`` float in ``[0, 1]`` at ``size = (h, w)`` on ``device``."""
    resized = resize_to(image, size)
    chw = torch.tensor(resized, device=device).permute(2, 0, 1).unsqueeze(0)
    return chw.float().contiguous() / 255.0


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """``1×3×h×w`` float -> ``h×w×3 uint8``, clamped to ``[0, 1]`` and rounded."""
    pixels = image.detach()[0].clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())


def _prepare_style(style: np.ndarray, height: int, device: torch.device) -> torch.Tensor:
    check_rgb(style, "style image")
    fix = "use a larger style image"
    _check_side(style.shape, "style image", fix)
    size = working_size(style.shape, height)
    _check_side(size, f"style image at working height {height}", fix)
    return _to_tensor(style, size, device)


def gatys_objective(
    image: np.ndarray,
    content: np.ndarray,
    style: np.ndarray,
    extractor: VGGFeatures,
    config: GatysConfig,
) -> dict[str, float]:
    """Evaluate the Gatys loss terms of ``image`` (e.g. a composite) without optimising.

    ``content`` and ``style`` are prepared as in :meth:`GatysStylizer.stylize` (content at
    :func:`content_working_size`, style at ``config.height``); ``image`` (``H×W×3 uint8``) is
    resized to the content's working size first. Autocast and memory format apply as
    configured: pass ``autocast=None`` for a float32 measurement.

    Returns:
        ``{"content", "style", "tv", "total"}`` weighted terms as floats (see module doc).
    """
    device = extractor.device
    config = calibration.resolve(config, device)
    check_rgb(content, "content image")
    check_rgb(image, "image")
    size = content_working_size(content.shape, config)
    with torch.no_grad():
        content_t = _to_tensor(content, size, device)
        style_grams = grams_of(
            vgg_features(extractor, _prepare_style(style, config.height, device), config),
            config.style_layers,
        )
        content_feats = vgg_features(extractor, content_t, config)
        image_t = _to_tensor(image, size, device)
        terms = total_loss(
            vgg_features(extractor, image_t, config),
            image_t,
            {name: content_feats[name] for name in config.content_layers},
            style_grams,
            config,
        )
    return {name: float(value) for name, value in terms.items()}


# --- the stylizer ---------------------------------------------------------------------------


class GatysStylizer:
    """Gatys style transfer on VGG19 (the :class:`~segstyle_core.stylize.base.Stylizer` protocol).

    VGG19 is found with :func:`segstyle_core.weights.find_checkpoint` (a missing file raises
    its :class:`~segstyle_core.errors.WeightsError` naming ``segstyle weights download vgg19``),
    checked against the published hash, and shared process-wide through
    :data:`segstyle_core.devices.MODELS`. Style targets (Gram matrices) are computed once per
    style image and kept in a small LRU cache of this instance.
    """

    name = "gatys"
    variant = "vgg19"

    def __init__(
        self,
        config: GatysConfig | None = None,
        *,
        device: str = "auto",
        checkpoint: str | os.PathLike[str] | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        style_cache_size: int = 8,
        extractor: VGGFeatures | None = None,
        verify: bool = True,
    ) -> None:
        """Load VGG19 (or use ``extractor``, from :func:`load_vgg19_features`, e.g. in tests).

        Args:
            config: optimisation settings; ``None`` = :class:`GatysConfig` defaults.
            device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            checkpoint: the ``vgg19-dcbb9e9d.pth`` file; ``None`` = find it with
                :func:`segstyle_core.weights.find_checkpoint`. Verified either way, unless
                ``verify`` is off.
            weights_dir: where to look first when ``checkpoint`` is ``None`` (see
                :func:`segstyle_core.weights.weights_dir`); torch hub's cache is searched too.
            style_cache_size: how many styles' Gram matrices to keep.
            extractor: a loaded feature extractor to use instead of the checkpoint search;
                ``weights_sha256`` is then ``None``. It must provide the config's layers.
            verify: check ``checkpoint`` against the official file's published hash; off for a
                VGG19 file of your own (``stylizer.vgg_checkpoint``), identified by its full
                SHA-256 alone.
        """
        self.device = devices.resolve_device(device)
        self.config = config or GatysConfig()
        self.weights_sha256: str | None = None
        if extractor is None:
            path = checkpoint or weights.find_checkpoint("vgg19", weights_dir)
            extractor, self.weights_sha256 = self._load_extractor(path, verify)
        else:
            missing = set(self.config.layers) - set(extractor.layers)
            if missing:
                raise ConfigError(
                    f"extractor lacks layers {sorted(missing)}: load it with the config's layers"
                )
            extractor = self._place(extractor)
        self.extractor = extractor
        self._network = self._compiled()
        self._style_cache: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._style_cache_size = style_cache_size
        self._lock = threading.Lock()

    @property
    def config(self) -> GatysConfig:
        """The settings, ``"auto"`` speed options resolved by this machine's calibration."""
        return self._config

    @config.setter
    def config(self, config: GatysConfig) -> None:
        self._config = calibration.resolve(config, self.device)
        if hasattr(self, "extractor"):
            self._network = self._compiled()

    def _compiled(self) -> Network:
        """The extractor, through torch.compile (fixed shapes) if the config asks for it."""
        if self.config.compile:
            return torch.compile(self.extractor, dynamic=False)
        return self.extractor

    def _load_extractor(
        self, path: str | os.PathLike[str], verify: bool = True
    ) -> tuple[VGGFeatures, str]:
        """Verify the VGG19 checkpoint; return the process-wide extractor and its SHA-256."""
        if verify:
            sha256 = weights.verify_checkpoint(path, "vgg19")
        else:
            sha256 = weights.own_checkpoint(path, "checkpoint")[1]
        cfg = self.config
        key = (
            "gatys",
            self.variant,
            str(self.device),
            sha256,
            tuple(sorted(cfg.layers)),
            cfg.pooling,
            cfg.normalization,
            cfg.channels_last,
        )
        extractor = devices.MODELS.get_or_create(
            key,
            lambda: self._place(
                load_vgg19_features(path, cfg.layers, cfg.pooling, cfg.normalization)
            ),
        )
        return extractor, sha256

    def _place(self, extractor: VGGFeatures) -> VGGFeatures:
        """Move ``extractor`` (in place) to the device and memory format of this stylizer."""
        placed = extractor.to(self.device)
        return placed.to(memory_format=torch.channels_last) if self.config.channels_last else placed

    def style_targets(
        self, style: np.ndarray, height: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Gram matrices ``{style layer: 1×C×C}`` of ``style`` (``h×w×3 uint8``), cached.

        ``style`` is resized to ``height`` (``None`` = the config's) with its aspect kept. The
        cache key is the style's SHA-256 and shape, its working size, the style layers and the
        device; the least recently used entry is dropped beyond ``style_cache_size``.
        """
        height = height or self.config.height
        key = (
            sha256_bytes(np.ascontiguousarray(style).tobytes()),
            style.shape,
            working_size(style.shape, height),
            self.config.style_layers,
            str(self.device),
        )
        with self._lock:
            if key in self._style_cache:
                self._style_cache.move_to_end(key)
                return self._style_cache[key]
        with torch.no_grad():
            features = vgg_features(
                self.extractor, _prepare_style(style, height, self.device), self.config
            )
            grams = grams_of(features, self.config.style_layers)
        with self._lock:
            self._style_cache[key] = grams
            while len(self._style_cache) > self._style_cache_size:
                self._style_cache.popitem(last=False)
        return grams

    def stylize(self, content: RGB, style: RGB, progress: ProgressCallback | None = None) -> RGB:
        """Paint ``content`` (``H×W×3 uint8``) like ``style`` (``h×w×3 uint8``).

        Returns ``h×w×3 uint8`` at :func:`content_working_size` (by default the config's
        working height, ``round(W * height / H)`` wide). ``progress`` gets a :class:`Progress`
        after every objective evaluation (coarse stage first, if any), with the weighted
        ``content``/``style``/``tv``/``total`` terms of that stage's size.

        Raises:
            InputError: not ``H×W×3 uint8``; style image under 32 px on a side.
        """
        cfg = self.config
        check_rgb(content, "content image")
        size = content_working_size(content.shape, cfg)
        # (working size, style height, budget); None = what the stages before left over
        stages: list[tuple[tuple[int, int], int, int | None]] = [(size, cfg.height, None)]
        half = (size[0] // 2, size[1] // 2)
        coarse = round(cfg.iterations * cfg.coarse_fraction)
        if coarse and min(*half, cfg.height // 2) >= MIN_SIDE:
            stages.insert(0, (half, cfg.height // 2, coarse))
        image: torch.Tensor | None = None
        done = 0
        for stage_size, style_height, budget in stages:
            if image is not None:  # coarse result, upsampled, starts the full-size stage
                image = F.interpolate(image, size=stage_size, mode="bilinear", align_corners=False)
            budget = cfg.iterations - done if budget is None else budget
            run = _Run(cfg, self.device, budget, progress, first_step=done, total=cfg.iterations)
            image = self._optimise(content, style, stage_size, style_height, image, run)
            done += run.step
        assert image is not None
        return _to_uint8(image)

    def _optimise(
        self,
        content: np.ndarray,
        style: np.ndarray,
        size: tuple[int, int],
        style_height: int,
        init: torch.Tensor | None,
        run: _Run,
    ) -> torch.Tensor:
        """Optimise a ``1×3×h×w`` image at ``size = (h, w)`` within ``run``'s budget.

        ``init`` starts it (``None`` = the config's ``init``); the style is taken at
        ``style_height``. Returns the optimised image, detached; if the objective becomes NaN
        or infinite (a diverging line search), the run stops and returns the best image it
        evaluated.
        """
        cfg = self.config
        content_t = _to_tensor(content, size, self.device)
        style_grams = self.style_targets(style, style_height)
        with torch.no_grad():
            content_feats = vgg_features(self.extractor, content_t, cfg)
        content_targets: dict[str, torch.Tensor] = {n: content_feats[n] for n in cfg.content_layers}
        start = self._initial_image(content_t, style) if init is None else init
        # The pixels stay contiguous (L-BFGS flattens their gradient with view(-1));
        # _features hands VGG a channels-last copy when configured.
        image = start.contiguous().requires_grad_(True)

        def objective() -> float:
            optimizer.zero_grad()
            features = vgg_features(self._network, image, run.config)  # run.config may switch
            terms = total_loss(features, image, content_targets, style_grams, cfg)
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
        """The starting ``1×3×h×w`` image for ``config.init`` (a fresh tensor, no grad)."""
        cfg = self.config
        if cfg.init == "content":
            return content_t.clone()
        if cfg.init == "style":
            return _to_tensor(style, (content_t.shape[2], content_t.shape[3]), self.device)
        generator = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(content_t.shape, generator=generator) * NOISE_STD
        return (noise + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).to(self.device)


class _Diverged(Exception):
    """The objective became NaN or infinite: the optimisation stops."""


class _Run:
    """Evaluation counter, progress reports, best image and plateau test of one stage.

    ``budget`` evaluations at most; progress steps count on from ``first_step`` up to
    ``total`` (the budget of every stage together). :attr:`config` is the stage's config,
    with ``autocast=None`` once a plateau under autocast switched it to float32.
    """

    def __init__(
        self,
        config: GatysConfig,
        device: torch.device,
        budget: int,
        progress: ProgressCallback | None,
        first_step: int = 0,
        total: int | None = None,
    ) -> None:
        self.config = config
        self.device = device
        self.budget = budget
        self.progress = progress
        self.first_step = first_step
        self.total = budget if total is None else total
        self.step = 0
        self.best: list[float] = []
        self.best_image: torch.Tensor | None = None
        self.diverged = False

    def record(self, terms: Mapping[str, torch.Tensor], image: torch.Tensor) -> float:
        """Count one evaluation of ``image``, keep the best, report progress; return the total.

        Raises:
            _Diverged: the total is NaN or infinite (not counted, not reported).
        """
        losses = {name: value.item() for name, value in terms.items()}
        if not math.isfinite(losses["total"]):
            self.diverged = True
            raise _Diverged
        self.step += 1
        if not self.best or losses["total"] < self.best[-1]:
            self.best_image = image.detach().clone()
        self.best.append(min(losses["total"], self.best[-1]) if self.best else losses["total"])
        if self.progress is not None:
            self.progress(Progress(self.first_step + self.step, self.total, losses))
        return losses["total"]

    def done(self) -> bool:
        """Budget spent, or a plateau in float32; a plateau under autocast switches to float32
        (and restarts the plateau window) instead."""
        if self.step >= self.budget:
            return True
        if not self._plateau():
            return False
        if autocast_dtype(self.config, self.device) is None:
            return True
        self.config = self.config.changed(autocast=None)
        self.best = []
        return False

    def _plateau(self) -> bool:
        """The best loss improved by under ``plateau_tol`` over the last ``plateau_patience``."""
        cfg = self.config
        if cfg.plateau_tol <= 0 or len(self.best) <= cfg.plateau_patience:
            return False
        old = self.best[-1 - cfg.plateau_patience]
        return old - self.best[-1] <= cfg.plateau_tol * abs(old)
