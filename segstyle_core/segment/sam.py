"""Segment Anything backend: box/point prompts decoded in batches, automatic masks.

The image encoder (the expensive part) runs once per image; every prompt for that image is
decoded in a batch against the same embedding. With an ``embedding_cache_dir`` the embedding is
also kept on disk, keyed by the image's bytes and the weights, so a rerun skips the encoder.

The encoder runs under bfloat16 autocast where the device computes bfloat16 natively
(``precision="auto"``, the rule of :func:`segstyle_core.devices.native_bfloat16`); its output,
the embedding, goes back to float32 before the prompt encoder and mask decoder, which always
run in float32. ``benchmarks/bench_encoders.py`` measures the time and the agreement with
float32.
"""

from __future__ import annotations

import pickle
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import Sam

from segstyle_core import weights
from segstyle_core.devices import MODELS, native_bfloat16, resolve_device
from segstyle_core.errors import ConfigError, InputError, WeightsError
from segstyle_core.fileio import atomic_write, file_sha256, sha256_bytes, sha256_json
from segstyle_core.images import check_rgb
from segstyle_core.segment import SAM_PRECISIONS, SamPrecision
from segstyle_core.segment.base import MaskPrediction, Prompt

SAM_BUILDERS: dict[str, Callable[[], Sam]] = {
    variant: sam_model_registry[variant] for variant in ("vit_b", "vit_l", "vit_h")
}
"""Variant -> builder of the architecture with untrained weights. Official variants take their
checkpoint from :data:`segstyle_core.weights.CHECKPOINTS` (``sam_<variant>``); other entries
(tests register :func:`segstyle_core.testing.build_sam_tiny` as ``tiny``) need an explicit
checkpoint path."""

DECODE_BATCH = 32
"""Most prompts decoded together: each holds an ``H×W`` float mask while it is upscaled."""

_EMBEDDING_FORMAT = 1


def encoder_dtype(precision: SamPrecision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of SAM's image encoder on ``device``; ``None`` = float32.

    ``"auto"``: bfloat16 where :func:`~segstyle_core.devices.native_bfloat16` says the device
    computes it in hardware, else float32.

    Raises:
        ConfigError: unknown precision.
    """
    if precision not in SAM_PRECISIONS:
        raise ConfigError(f"SAM precision {precision!r} is unknown: use one of {SAM_PRECISIONS}")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else None
    return torch.bfloat16 if precision == "bfloat16" else None


@dataclass(frozen=True)
class AutomaticMaskOptions:
    """Options of ``SamAutomaticMaskGenerator`` that segstyle exposes (same names, defaults)."""

    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_mask_region_area: int = 0
    points_per_batch: int = 64
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0

    def __post_init__(self) -> None:
        if min(self.points_per_side, self.points_per_batch) < 1 or self.crop_n_layers < 0:
            raise ConfigError(
                f"invalid automatic-mask options {self}: points_per_side and points_per_batch "
                "must be >= 1 and crop_n_layers >= 0"
            )


def load_sam(variant: str, checkpoint: Path, device: torch.device) -> Sam:
    """Build ``variant``'s architecture and fill it from ``checkpoint`` (``weights_only`` load).

    Raises:
        ConfigError: unknown variant.
        WeightsError: unsafe/corrupt checkpoint, or one made for another architecture.
    """
    builder = _builder(variant)
    state_dict = weights.load_state_dict(checkpoint)
    model = builder()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise WeightsError(
            f"checkpoint {checkpoint} does not fit SAM {variant} "
            f"({str(exc).splitlines()[0]}): pass the variant it was trained as"
        ) from None
    return model.eval().to(device)


def _builder(variant: str) -> Callable[[], Sam]:
    try:
        return SAM_BUILDERS[variant]
    except KeyError:
        raise ConfigError(
            f"unknown SAM variant {variant!r}: use one of {', '.join(SAM_BUILDERS)}"
        ) from None


class _CachingPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` reuses image embeddings saved on disk.

    Entries are ``<cache_dir>/<key>.pt`` with the encoder features (``1×C×h×w`` float32) and
    the original/input sizes; the key hashes the image bytes, its shape, the colour format, the
    variant, the weights' SHA-256 and the dtype the encoder ran in (``dtype``: its autocast
    dtype, ``None`` = float32).
    """

    features: torch.Tensor  # set by SamPredictor.set_torch_image: the encoder's output

    def __init__(
        self,
        model: Sam,
        variant: str,
        weights_sha256: str,
        cache_dir: Path | None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(model)
        self.encoder_dtype = dtype
        self._salt = {
            "variant": variant,
            "weights": weights_sha256,
            "format": _EMBEDDING_FORMAT,
            "encoder_dtype": str(dtype or torch.float32).removeprefix("torch."),
        }
        self._cache_dir = cache_dir

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """``SamPredictor``'s, with the encoder under autocast in :attr:`encoder_dtype`; the
        embedding comes back as float32 (what the decoder runs in)."""
        if self.encoder_dtype is None:
            super().set_torch_image(transformed_image, original_image_size)
            return
        with torch.autocast(self.device.type, dtype=self.encoder_dtype):
            super().set_torch_image(transformed_image, original_image_size)
        self.features = self.features.float()

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self._cache_dir is None:
            super().set_image(image, image_format)
            return
        key = sha256_json(
            {
                **self._salt,
                "image": sha256_bytes(np.ascontiguousarray(image).tobytes()),
                "shape": list(image.shape),
                "dtype": str(image.dtype),
                "image_format": image_format,
            }
        )
        path = self._cache_dir / f"{key}.pt"
        if not self._load_embedding(path):
            super().set_image(image, image_format)
            with atomic_write(path) as handle:
                torch.save(
                    {
                        "features": self.features.cpu(),
                        "original_size": list(self.original_size),
                        "input_size": list(self.input_size),
                    },
                    handle,
                )

    def _load_embedding(self, path: Path) -> bool:
        """Restore the predictor's image state from ``path``; ``False`` if absent or unreadable
        (an unreadable entry is then recomputed and overwritten)."""
        if not path.is_file():
            return False
        try:
            entry = torch.load(path, map_location=self.device, weights_only=True)
            features = entry["features"]
            original_size = tuple(entry["original_size"])
            input_size = tuple(entry["input_size"])
        except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
            return False
        self.reset_image()
        self.features = features
        self.original_size = original_size
        self.input_size = input_size
        self.is_image_set = True
        return True


class BatchedPromptSegmenter:
    """What SAM and SAM 2 share in :meth:`segment`: check the image and prompts, encode the
    image once, decode prompts grouped by shape in batches of up to :data:`DECODE_BATCH`.

    Subclasses set ``label`` (the model's name in messages), ``_lock``, ``_predictor`` (with
    ``set_image``) and implement ``_decode`` for prompts of one shape.
    """

    label: str
    _lock: threading.Lock
    _predictor: Any

    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        raise NotImplementedError

    def _segment_batched(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One mask per prompt, in prompt order, for ``image`` (``H×W×3 uint8 RGB``)."""
        check_rgb(image, f"image for {self.label}")
        height, width = image.shape[:2]
        for index, prompt in enumerate(prompts):
            _check_prompt(index, prompt, width, height)
        groups: dict[tuple[bool, int], list[int]] = defaultdict(list)
        for index, prompt in enumerate(prompts):
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


class SamSegmenter(BatchedPromptSegmenter):
    """Segment Anything as a :class:`~segstyle_core.segment.base.Segmenter`.

    Attributes:
        name: ``"sam"``.
        variant: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"`` (or a registered test variant).
        weights_sha256: full SHA-256 of the checkpoint file the weights came from.
        device: the torch device the model runs on.
        multimask: decode three candidate masks per prompt and keep the best-scoring one
            (SAM's authors suggest ``False`` for unambiguous prompts such as boxes).
        precision: the image encoder's precision setting (``"auto"``, ``"float32"``,
            ``"bfloat16"``); ``encoder_dtype`` is what it resolved to (``None`` = float32).

    Instances are thread-safe: calls on one instance run one at a time; instances built from
    the same checkpoint and device share one model (:data:`segstyle_core.devices.MODELS`).
    """

    name = "sam"
    label = "SAM"

    def __init__(
        self,
        variant: str = "vit_l",
        checkpoint: str | Path | None = None,
        device: str = "auto",
        weights_dir: str | Path | None = None,
        embedding_cache_dir: str | Path | None = None,
        multimask: bool = True,
        amg_options: AutomaticMaskOptions | None = None,
        precision: SamPrecision = "auto",
    ) -> None:
        """Load ``variant`` from ``checkpoint``, or from the official checkpoint found in
        ``weights_dir`` (see :func:`segstyle_core.weights.find_checkpoint`), which is checked
        against its published SHA-256 prefix. ``precision``: the image encoder's (see
        :func:`encoder_dtype`); the loaded model is shared whatever the precision.

        Raises:
            ConfigError: unknown variant, device or precision; a non-official variant without
                checkpoint.
            WeightsError: checkpoint missing (the message says how to download it), corrupt,
                unsafe, or made for another variant.
        """
        _builder(variant)
        encoder_dtype(precision, torch.device("cpu"))  # an unknown precision fails before loading
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise WeightsError(
                    f"checkpoint {path} does not exist: fix the path, or leave it out to use "
                    f"the downloaded official sam_{variant} checkpoint"
                )
            sha = file_sha256(path)
        elif f"sam_{variant}" in weights.CHECKPOINTS:
            path = weights.find_checkpoint(f"sam_{variant}", weights_dir)
            sha = weights.verify_checkpoint(path, f"sam_{variant}")
        else:
            raise ConfigError(
                f"SAM variant {variant!r} has no official checkpoint: pass its checkpoint path"
            )
        resolved = resolve_device(device)
        model = MODELS.get_or_create(
            ("sam", variant, str(resolved), sha), lambda: load_sam(variant, path, resolved)
        )
        self._setup(model, variant, sha, embedding_cache_dir, multimask, amg_options, precision)

    @classmethod
    def from_model(
        cls,
        model: Sam,
        variant: str,
        weights_sha256: str,
        embedding_cache_dir: str | Path | None = None,
        multimask: bool = True,
        amg_options: AutomaticMaskOptions | None = None,
        precision: SamPrecision = "auto",
    ) -> SamSegmenter:
        """Wrap an already built ``Sam`` (on its current device); ``weights_sha256`` identifies
        its weights in cache keys and result rows."""
        segmenter = cls.__new__(cls)
        segmenter._setup(
            model.eval(),
            variant,
            weights_sha256,
            embedding_cache_dir,
            multimask,
            amg_options,
            precision,
        )
        return segmenter

    def _setup(
        self,
        model: Sam,
        variant: str,
        weights_sha256: str,
        embedding_cache_dir: str | Path | None,
        multimask: bool,
        amg_options: AutomaticMaskOptions | None,
        precision: SamPrecision,
    ) -> None:
        self.variant = variant
        self.weights_sha256: str | None = weights_sha256
        self.device = model.device
        self.multimask = multimask
        self.amg_options = amg_options or AutomaticMaskOptions()
        self.precision = precision
        self.encoder_dtype = encoder_dtype(precision, self.device)
        self._model = model
        cache_dir = Path(embedding_cache_dir) if embedding_cache_dir is not None else None
        self._predictor = _CachingPredictor(
            model, variant, weights_sha256, cache_dir, self.encoder_dtype
        )
        self._lock = threading.Lock()

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One mask per prompt, in prompt order.

        Args:
            image: ``H×W×3 uint8 RGB``.
            prompts: boxes (XYXY) and/or points (XY, label 1 = foreground, 0 = background) in
                ``image``'s pixel coordinates. SAM's prompt encoder needs equal shapes in a
                batch, so prompts are grouped by kind and point count (all boxes; all prompts
                with 2 points; ...) and each group is decoded in batches of up to
                :data:`DECODE_BATCH` prompts (bounds the memory of full-size masks).

        Returns:
            ``MaskPrediction`` with an ``H×W bool`` mask and SAM's predicted IoU as score.

        Raises:
            InputError: bad image array, or a prompt that is empty, inverted or outside the
                image.
        """
        return self._segment_batched(image, prompts)

    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        """Decode prompts of one shape (same kind and point count) in one batch.

        This is ``SamPredictor.predict_torch`` except that the best candidate mask is picked at
        the decoder's low resolution and only that one is upscaled to the image size: the same
        masks, with a third of the upscaling time and memory when ``multimask`` is on.
        """
        predictor = self._predictor
        model = predictor.model
        size = predictor.original_size
        points = boxes = None
        if prompts[0].points:
            coords = np.array([p.points for p in prompts], dtype=np.float64)
            points = (
                self._tensor(predictor.transform.apply_coords(coords, size), torch.float),
                self._tensor(np.array([p.point_labels for p in prompts]), torch.int),
            )
        if prompts[0].box is not None:
            box_array = np.array([p.box for p in prompts], dtype=np.float64)
            boxes = self._tensor(predictor.transform.apply_boxes(box_array, size), torch.float)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, scores = model.mask_decoder(
            image_embeddings=predictor.features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
        )
        best = scores.argmax(dim=1)
        rows = torch.arange(len(prompts), device=scores.device)
        logits = model.postprocess_masks(low_res[rows, best, None], predictor.input_size, size)
        masks = (logits[:, 0] > model.mask_threshold).cpu().numpy()
        best_scores = scores[rows, best].cpu().tolist()
        return [
            MaskPrediction(mask=mask, score=float(score))
            for mask, score in zip(masks, best_scores, strict=True)
        ]

    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(array, dtype=dtype, device=self.device)

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Automatic masks for ``image`` (``H×W×3 uint8 RGB``) with :attr:`amg_options`.

        Returns ``SamAutomaticMaskGenerator`` records: ``segmentation`` (``H×W bool``), ``area``,
        ``bbox`` (XYWH), ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``.
        The generator uses this segmenter's predictor, so the embedding cache applies.
        """
        check_rgb(image, "image for SAM")
        generator = SamAutomaticMaskGenerator(self._model, **asdict(self.amg_options))
        generator.predictor = self._predictor
        with self._lock, torch.inference_mode():
            return generator.generate(image)


def _check_prompt(index: int, prompt: Prompt, width: int, height: int) -> None:
    """Raise InputError unless ``prompt`` is non-empty and lies inside a ``width×height`` image."""
    where = f"prompt #{index} ({prompt.as_dict()}) for the {width}×{height} image"
    if prompt.box is None and not prompt.points:
        raise InputError(f"{where} has neither a box nor points: give at least one of them")
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (x0 < x1 and y0 < y1):
            raise InputError(
                f"{where} has an empty or inverted box: boxes are XYXY with x0<x1, y0<y1"
            )
        if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
            raise InputError(
                f"{where} has a box outside the image: clip it to 0..{width} × 0..{height}"
            )
    if len(prompt.point_labels) != len(prompt.points):
        raise InputError(f"{where} needs exactly one label per point (1 = object, 0 = background)")
    if any(label not in (0, 1) for label in prompt.point_labels):
        raise InputError(
            f"{where} has a point label other than 0/1: use 1 = object, 0 = background"
        )
    if any(not (0 <= x <= width and 0 <= y <= height) for x, y in prompt.points):
        raise InputError(
            f"{where} has a point outside the image: keep points within 0..{width} × 0..{height}"
        )
