"""Segment Anything, and what SAM 2's image backend shares with it: the image encoder runs
once per image (optionally under bfloat16 autocast, optionally cached on disk), then every
prompt is decoded in a batch against that float32 embedding."""

from __future__ import annotations

import abc
import functools
import pickle
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, get_args

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from segstyle_core.devices import native_bfloat16
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.fileio import atomic_write, sha256_bytes, sha256_json
from segstyle_core.images import check_rgb
from segstyle_core.prompts.validation import check_structure, clip_box
from segstyle_core.segment.base import MaskPrediction, Prompt, SamPrecision, SamVariant
from segstyle_core.weights import lookup

SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    variant: sam_model_registry[variant] for variant in get_args(SamVariant)
}
"""Variant -> builder of the untrained architecture (tests register a ``tiny`` one)."""

DECODE_BATCH = 32
"""Most prompts decoded together: each holds an ``H×W`` float mask while it is upscaled."""

_EMBEDDING_FORMAT = 1


def encoder_dtype(precision: SamPrecision, device: torch.device) -> torch.dtype | None:
    """The image encoder's autocast dtype on ``device`` (``None``: float32; ``auto``: bfloat16
    where :func:`~segstyle_core.devices.native_bfloat16`). ConfigError: unknown precision."""
    if precision not in get_args(SamPrecision):
        raise ConfigError(
            f"SAM precision {precision!r} is unknown: use one of {get_args(SamPrecision)}"
        )
    bfloat16 = precision == "bfloat16" or (precision == "auto" and native_bfloat16(device))
    return torch.bfloat16 if bfloat16 else None


class ImageStatePredictor(Protocol):
    """A predictor whose image state (encoder output, image sizes) reads and restores as a
    ``{name: tensor, list of tensors or of ints}`` (KeyError/TypeError before any change)."""

    def image_state(self) -> dict[str, Any]: ...

    def set_image_state(self, state: dict[str, Any]) -> None: ...


def _map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, dict):
        return {key: _map_tensors(item, function) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_map_tensors(item, function) for item in value]
    return value


class PromptSegmenter(abc.ABC):
    """SAM or SAM 2 on a loaded ``model`` (``variant``, weights ``weights_sha256``) as a
    thread-safe :class:`~.base.Segmenter`; ``multimask``: keep the best of three candidates per
    prompt; ``precision``: :func:`encoder_dtype`."""

    name: str
    label: str

    def __init__(
        self,
        model: torch.nn.Module,
        variant: str,
        weights_sha256: str,
        embedding_cache_dir: str | Path | None = None,
        multimask: bool = True,
        precision: SamPrecision = "auto",
    ) -> None:
        self.model = model.eval()
        self.variant = variant
        self.weights_sha256: str | None = weights_sha256
        self.device = next(model.parameters()).device
        self.multimask = multimask
        self.encoder_dtype = encoder_dtype(precision, self.device)
        self.cache_dir = Path(embedding_cache_dir) if embedding_cache_dir is not None else None
        self._predictor = self._new_predictor()
        self._lock = threading.Lock()

    @staticmethod
    @abc.abstractmethod
    def architecture(variant: str) -> torch.nn.Module:
        """``variant``'s untrained model on the CPU (ConfigError: unknown variant, no package)."""

    @abc.abstractmethod
    def _new_predictor(self) -> Any:
        """A predictor on :attr:`model` whose ``set_image`` goes through :meth:`set_image`."""

    @abc.abstractmethod
    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        """Decode prompts of one kind and point count against the image set, in a batch."""

    @abc.abstractmethod
    def _mask_generator(self) -> Any:
        """The model's automatic mask generator, encoding through :meth:`set_image`."""

    def set_image(
        self,
        predictor: ImageStatePredictor,
        image: np.ndarray,
        encode: Callable[[], None],
        **salt: Any,
    ) -> None:
        """Give ``predictor`` the state of ``image`` from the embedding cache, else by ``encode()``
        (its own ``set_image``, under :attr:`encoder_dtype` autocast, the state back in float32)
        and save it (an unreadable entry is recomputed and overwritten)."""
        path = self._cache_path(image, salt)
        if path is not None and path.is_file():
            try:
                state = torch.load(path, map_location=self.device, weights_only=True)
                predictor.set_image_state(state)
                return
            except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
                pass
        if self.encoder_dtype is None:
            encode()
        else:
            with torch.autocast(self.device.type, dtype=self.encoder_dtype):
                encode()
            predictor.set_image_state(_map_tensors(predictor.image_state(), torch.Tensor.float))
        if path is not None:
            with atomic_write(path) as handle:
                torch.save(_map_tensors(predictor.image_state(), torch.Tensor.cpu), handle)

    def _cache_path(self, image: np.ndarray, salt: dict[str, Any]) -> Path | None:
        """``<cache_dir>/<key>.pt`` (``None``: no cache), the key hashing the model, encoder
        dtype, the predictor's ``salt`` and the image."""
        if self.cache_dir is None:
            return None
        dtype = str(self.encoder_dtype or torch.float32).removeprefix("torch.")
        model = {"variant": self.variant, "weights": self.weights_sha256, "encoder_dtype": dtype}
        pixels = sha256_bytes(np.ascontiguousarray(image).tobytes())
        shape = {"image": pixels, "shape": list(image.shape), "dtype": str(image.dtype)}
        key = sha256_json({**model, "format": _EMBEDDING_FORMAT, **salt, **shape})
        return self.cache_dir / f"{key}.pt"

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One ``H×W bool`` mask per prompt for ``image`` (``H×W×3 uint8 RGB``), in order,
        scored by the predicted IoU; prompts of one kind and point count decoded together,
        :data:`DECODE_BATCH` at a time (InputError: bad image or prompt)."""
        check_rgb(image, f"image for {self.label}")
        height, width = image.shape[:2]
        groups: dict[tuple[bool, int], list[int]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
            _check_prompt(index, prompt, width, height)
            groups[(prompt.box is not None, len(prompt.points))].append(index)
        results: dict[int, MaskPrediction] = {}
        with self._lock, torch.inference_mode():
            if prompts:
                self._predictor.set_image(image)
            for indices in groups.values():
                for start in range(0, len(indices), DECODE_BATCH):
                    chunk = indices[start : start + DECODE_BATCH]
                    decoded = self._decode([prompts[i] for i in chunk])
                    results.update(zip(chunk, decoded, strict=True))
        return [results[i] for i in range(len(prompts))]

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The model's own automatic masks (default options) for ``image`` (``H×W×3 uint8``)."""
        check_rgb(image, f"image for {self.label}")
        generator = self._mask_generator()
        with self._lock, torch.inference_mode():
            return generator.generate(image)


class _CachingPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` goes through :meth:`PromptSegmenter.set_image`."""

    features: torch.Tensor  # set by SamPredictor.set_torch_image: the encoder's output

    def __init__(self, segmenter: SamSegmenter) -> None:
        super().__init__(segmenter.model)
        self.segmenter = segmenter

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        encode = functools.partial(super().set_image, image, image_format)
        self.segmenter.set_image(self, image, encode, image_format=image_format)

    def image_state(self) -> dict[str, Any]:
        """The encoder's features (``1×C×h×w``) and the original/input sizes."""
        sizes = {"original_size": list(self.original_size), "input_size": list(self.input_size)}
        return {"features": self.features, **sizes}

    def set_image_state(self, state: dict[str, Any]) -> None:
        features = state["features"]
        original_size, input_size = tuple(state["original_size"]), tuple(state["input_size"])
        self.reset_image()
        self.features, self.original_size, self.input_size = features, original_size, input_size
        self.is_image_set = True


class SamSegmenter(PromptSegmenter):
    """Segment Anything on a loaded ``Sam``."""

    name = "sam"
    label = "SAM"
    model: Sam

    @staticmethod
    def architecture(variant: str) -> Sam:
        return lookup(SAM_BUILDERS, variant, "SAM variant")()

    def _new_predictor(self) -> _CachingPredictor:
        return _CachingPredictor(self)

    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        """``SamPredictor.predict_torch``, but only the best candidate is upscaled (same
        masks, a third of the upscaling time and memory with ``multimask``)."""
        predictor, model = self._predictor, self.model
        size = predictor.original_size
        coords, labels, box_array = prompt_arrays(prompts)
        tensor = functools.partial(torch.as_tensor, device=self.device)
        points = boxes = None
        if coords is not None and labels is not None:
            coords = predictor.transform.apply_coords(coords, size)
            points = (tensor(coords, dtype=torch.float), tensor(labels, dtype=torch.int))
        if box_array is not None:
            boxes = tensor(predictor.transform.apply_boxes(box_array, size), dtype=torch.float)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, scores = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
        )
        return best_masks(
            low_res,
            scores,
            lambda best: model.postprocess_masks(best, predictor.input_size, size),
            model.mask_threshold,
        )

    def _mask_generator(self) -> SamAutomaticMaskGenerator:
        generator = SamAutomaticMaskGenerator(self.model)
        generator.predictor = self._predictor
        return generator


def prompt_arrays(
    prompts: list[Prompt],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Prompts of one shape as ``N×P×2`` float64 point coordinates, ``N×P`` labels and ``N×4``
    float64 XYXY boxes (``None`` where they have none)."""
    coords = labels = boxes = None
    if prompts[0].points:
        coords = np.array([p.points for p in prompts], dtype=np.float64)
        labels = np.array([p.point_labels for p in prompts])
    if prompts[0].box is not None:
        boxes = np.array([p.box for p in prompts], dtype=np.float64)
    return coords, labels, boxes


def best_masks(
    low_res: torch.Tensor,
    scores: torch.Tensor,
    upscale: Callable[[torch.Tensor], torch.Tensor],
    threshold: float,
) -> list[MaskPrediction]:
    """Each prompt's best candidate (``low_res``: ``N×C×h×w`` logits, ``scores``: ``N×C``),
    upscaled by ``upscale`` and thresholded."""
    best = scores.argmax(dim=1)
    rows = torch.arange(len(scores), device=scores.device)
    masks = (upscale(low_res[rows, best, None])[:, 0] > threshold).cpu().numpy()
    best_scores = scores[rows, best].float().cpu().tolist()
    return list(map(MaskPrediction, masks, best_scores))


def _check_prompt(index: int, prompt: Prompt, width: int, height: int) -> None:
    """InputError unless ``prompt`` is well-formed and inside a ``width×height`` image (a box
    sticking out is refused, not clipped)."""
    where = f"prompt #{index} ({prompt.as_dict()}) for the {width}×{height} image"
    bounds = f"0..{width} × 0..{height}"
    check_structure(prompt, where)
    if prompt.box is not None and clip_box(prompt.box, width, height, where) != prompt.box:
        raise InputError(f"{where} has a box outside the image: clip it to {bounds}")
    if any(not (0 <= x <= width and 0 <= y <= height) for x, y in prompt.points):
        raise InputError(f"{where} has a point outside the image: keep points within {bounds}")
