"""SAM 2 on still images: box/point prompts decoded in batches, automatic masks.

The model is the ``sam2`` package's ``SAM2Base`` built from its SAM 2.1 config
(:data:`segstyle_core.segment.sam2.VARIANTS`) and filled from the checkpoint by a
``weights_only`` load (:func:`~segstyle_core.segment.sam2.load_sam2_weights`). Prompts go
through a ``SAM2ImagePredictor``: the image encoder runs once per image (``set_image``) and
every prompt for that image is decoded against that embedding, in batches of prompts of one
shape, as :class:`~segstyle_core.segment.sam.SamSegmenter` does for SAM. With an
``embedding_cache_dir`` the embedding (SAM 2's image embedding and its two high-resolution
feature maps) is also kept on disk, keyed by the image's bytes and the weights. The image
encoder's precision follows SAM's rule (:func:`~segstyle_core.segment.sam.encoder_dtype`).
"""

from __future__ import annotations

import functools
import pickle
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segstyle_core.devices import MODELS, resolve_device
from segstyle_core.fileio import atomic_write, sha256_bytes, sha256_json
from segstyle_core.images import check_rgb
from segstyle_core.segment import SamPrecision
from segstyle_core.segment.base import MaskPrediction, Prompt
from segstyle_core.segment.sam import (
    AutomaticMaskOptions,
    BatchedPromptSegmenter,
    encoder_dtype,
)
from segstyle_core.segment.sam2 import (
    VARIANTS,
    check_variant,
    load_sam2_weights,
    sam2_builder,
    sam2_checkpoint,
)

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base

HYDRA_OVERRIDES: dict[str, tuple[str, ...]] = {}
"""Variant -> extra Hydra overrides of its ``sam2`` config (none for the official variants;
tests shrink the input with ``++model.image_size=128``). They change the model, so they are
part of its registry key and of the embedding-cache key."""

_EMBEDDING_FORMAT = 1


def load_sam2_image_model(variant: str, checkpoint: Path, device: torch.device) -> SAM2Base:
    """Build ``variant``'s SAM 2.1 architecture (``sam2.build_sam.build_sam2`` with its
    post-processing defaults) and fill it from ``checkpoint``, on ``device``, in eval mode.

    Raises:
        ConfigError: unknown variant, or the ``sam2`` package is missing.
        WeightsError: unsafe/corrupt checkpoint, or one made for another architecture.
    """
    config = VARIANTS[check_variant(variant)][0]
    build = sam2_builder("build_sam2")
    overrides = list(HYDRA_OVERRIDES.get(variant, ()))
    model: SAM2Base = build(config, None, device="cpu", hydra_overrides_extra=overrides)
    load_sam2_weights(model, checkpoint, variant)
    return model.eval().to(device)


@functools.cache
def _predictor_class() -> type:
    """``SAM2ImagePredictor`` with segstyle's encoder precision and embedding cache."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class CachingSam2Predictor(SAM2ImagePredictor):  # type: ignore[misc]
        """A ``SAM2ImagePredictor`` whose ``set_image`` runs the encoder under autocast in
        ``encoder_dtype`` (``None`` = float32; the features come back as float32) and reuses
        embeddings saved in ``cache_dir``.

        Entries are ``<cache_dir>/<key>.pt`` holding ``image_embed``, ``high_res_feats`` and
        ``orig_hw``; the key hashes the image bytes and shape, the variant, the weights'
        SHA-256, the model's input size and the encoder dtype.
        """

        # SAM2ImagePredictor's image state (untyped there).
        _features: Any
        _orig_hw: Any

        def __init__(
            self,
            model: SAM2Base,
            salt: dict[str, Any],
            cache_dir: Path | None,
            dtype: torch.dtype | None,
            **kwargs: Any,
        ) -> None:
            super().__init__(model, **kwargs)
            # sam2 1.1.0 fixes these to a 1024-pixel input; Hiera's maps are 1/4, 1/8, 1/16.
            size = model.image_size
            self._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8)]
            self._bb_feat_sizes.append((size // 16, size // 16))
            self.encoder_dtype = dtype
            self._cache_dir = cache_dir
            self._salt = {
                **salt,
                "image_size": size,
                "format": _EMBEDDING_FORMAT,
                "encoder_dtype": str(dtype or torch.float32).removeprefix("torch."),
            }

        def set_image(self, image: np.ndarray) -> None:
            if self._cache_dir is None:
                self._encode(image)
                return
            key = sha256_json(
                {
                    **self._salt,
                    "image": sha256_bytes(np.ascontiguousarray(image).tobytes()),
                    "shape": list(image.shape),
                    "dtype": str(image.dtype),
                }
            )
            path = self._cache_dir / f"{key}.pt"
            if self._load_embedding(path):
                return
            self._encode(image)
            features = self._features
            with atomic_write(path) as handle:
                torch.save(
                    {
                        "image_embed": features["image_embed"].cpu(),
                        "high_res_feats": [f.cpu() for f in features["high_res_feats"]],
                        "orig_hw": list(self._orig_hw[0]),
                    },
                    handle,
                )

        def _encode(self, image: np.ndarray) -> None:
            if self.encoder_dtype is None:
                super().set_image(image)
                return
            with torch.autocast(self.device.type, dtype=self.encoder_dtype):
                super().set_image(image)
            self._features = {
                "image_embed": self._features["image_embed"].float(),
                "high_res_feats": [f.float() for f in self._features["high_res_feats"]],
            }

        def _load_embedding(self, path: Path) -> bool:
            """Restore the image state from ``path``; ``False`` if absent or unreadable (an
            unreadable entry is then recomputed and overwritten)."""
            if not path.is_file():
                return False
            try:
                entry = torch.load(path, map_location=self.device, weights_only=True)
                features = {
                    "image_embed": entry["image_embed"],
                    "high_res_feats": list(entry["high_res_feats"]),
                }
                orig_hw = tuple(int(v) for v in entry["orig_hw"])
            except (RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError):
                return False
            self.reset_predictor()
            self._features = features
            self._orig_hw = [orig_hw]
            self._is_image_set = True
            return True

    return CachingSam2Predictor


class Sam2ImageSegmenter(BatchedPromptSegmenter):
    """SAM 2 as a :class:`~segstyle_core.segment.base.Segmenter` for still images.

    Attributes:
        name: ``"sam2"``.
        variant: ``"hiera_tiny"``, ``"hiera_small"``, ``"hiera_base_plus"`` or
            ``"hiera_large"``.
        weights_sha256: full SHA-256 of the checkpoint file the weights came from.
        device: the torch device the model runs on.
        multimask: decode three candidate masks per prompt and keep the best-scoring one
            (off: one mask, with SAM 2's fallback to the best of three when it is unstable).
        precision: the image encoder's precision setting; ``encoder_dtype`` is what it resolved
            to (``None`` = float32).
        amg_options: the automatic generator's options; ``None``: ``SAM2AutomaticMaskGenerator``'s
            own defaults.

    Instances are thread-safe: calls on one instance run one at a time; instances built from
    the same checkpoint and device share one model (:data:`segstyle_core.devices.MODELS`).
    """

    name = "sam2"
    label = "SAM 2"

    def __init__(
        self,
        variant: str = "hiera_tiny",
        checkpoint: str | Path | None = None,
        device: str = "auto",
        weights_dir: str | Path | None = None,
        embedding_cache_dir: str | Path | None = None,
        multimask: bool = True,
        amg_options: AutomaticMaskOptions | None = None,
        precision: SamPrecision = "auto",
    ) -> None:
        """Load ``variant`` from ``checkpoint`` (a file of your own, identified by its full
        SHA-256), or from the official checkpoint found in ``weights_dir`` (checked against the
        full hash recorded at its download: :func:`~segstyle_core.segment.sam2.sam2_checkpoint`).

        Raises:
            ConfigError: unknown variant, device or precision; the ``sam2`` package missing.
            WeightsError: checkpoint missing (the message says how to download it), corrupt,
                unsafe, or made for another variant.
        """
        check_variant(variant)
        encoder_dtype(precision, torch.device("cpu"))  # an unknown precision fails before loading
        path, sha = sam2_checkpoint(
            variant,
            str(checkpoint) if checkpoint is not None else None,
            str(weights_dir) if weights_dir is not None else None,
        )
        resolved = resolve_device(device)
        overrides = HYDRA_OVERRIDES.get(variant, ())
        model = MODELS.get_or_create(
            ("sam2-image", variant, overrides, str(resolved), sha),
            lambda: load_sam2_image_model(variant, path, resolved),
        )
        self._setup(model, variant, sha, embedding_cache_dir, multimask, amg_options, precision)

    @classmethod
    def from_model(
        cls,
        model: SAM2Base,
        variant: str,
        weights_sha256: str,
        embedding_cache_dir: str | Path | None = None,
        multimask: bool = True,
        amg_options: AutomaticMaskOptions | None = None,
        precision: SamPrecision = "auto",
    ) -> Sam2ImageSegmenter:
        """Wrap an already built ``SAM2Base`` (on its current device); ``weights_sha256``
        identifies its weights in cache keys and result rows."""
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
        model: SAM2Base,
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
        self.amg_options = amg_options
        self.precision = precision
        self.encoder_dtype = encoder_dtype(precision, self.device)
        self._model = model
        self._cache_dir = Path(embedding_cache_dir) if embedding_cache_dir is not None else None
        self._predictor = self._new_predictor()
        self._lock = threading.Lock()

    def _new_predictor(self, **kwargs: Any) -> Any:
        """A caching ``SAM2ImagePredictor`` on this segmenter's model (``kwargs``: its own)."""
        salt = {"backend": "sam2", "variant": self.variant, "weights": self.weights_sha256}
        predictor_class = _predictor_class()
        return predictor_class(self._model, salt, self._cache_dir, self.encoder_dtype, **kwargs)

    def segment(self, image: np.ndarray, prompts: list[Prompt]) -> list[MaskPrediction]:
        """One mask per prompt, in prompt order (as :meth:`SamSegmenter.segment
        <segstyle_core.segment.sam.SamSegmenter.segment>`): the image is encoded once, prompts
        are grouped by kind and point count and decoded in batches of up to
        :data:`~segstyle_core.segment.sam.DECODE_BATCH`.

        Returns:
            ``MaskPrediction`` with an ``H×W bool`` mask and SAM 2's predicted IoU as score.

        Raises:
            InputError: bad image array, or a prompt that is empty, inverted or outside the
                image.
        """
        return self._segment_batched(image, prompts)

    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        """Decode prompts of one shape (same kind and point count) in one batch.

        This is ``SAM2ImagePredictor._predict`` for a batch of prompts, except that the best
        candidate is picked at the decoder's low resolution and only that one is upscaled:
        the same masks as ``predict`` one prompt at a time, keeping the best-scoring one.
        """
        predictor = self._predictor
        model = predictor.model
        coords = labels = boxes = None
        if prompts[0].points:
            coords = np.array([p.points for p in prompts], dtype=np.float32)
            labels = np.array([p.point_labels for p in prompts], dtype=np.int32)
        if prompts[0].box is not None:
            boxes = np.array([p.box for p in prompts], dtype=np.float32)
        _, points, point_labels, box = predictor._prep_prompts(coords, labels, boxes, None, True)
        concat = (points, point_labels) if points is not None else None
        if box is not None:
            # SAM 2 prompts a box as its two corners, labelled 2 and 3, ahead of the points.
            corners = box.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=box.device)
            corner_labels = corner_labels.repeat(len(prompts), 1)
            if concat is None:
                concat = (corners, corner_labels)
            else:
                concat = (
                    torch.cat([corners, concat[0]], dim=1),
                    torch.cat([corner_labels, concat[1]], dim=1),
                )
        sparse, dense = model.sam_prompt_encoder(points=concat, boxes=None, masks=None)
        features = predictor._features
        low_res, scores, _, _ = model.sam_mask_decoder(
            image_embeddings=features["image_embed"][-1].unsqueeze(0),
            image_pe=model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=self.multimask,
            repeat_image=len(prompts) > 1,
            high_res_features=[level[-1].unsqueeze(0) for level in features["high_res_feats"]],
        )
        best = scores.argmax(dim=1)
        rows = torch.arange(len(prompts), device=scores.device)
        logits = predictor._transforms.postprocess_masks(
            low_res[rows, best, None], predictor._orig_hw[-1]
        )
        masks = (logits[:, 0] > predictor.mask_threshold).cpu().numpy()
        best_scores = scores[rows, best].float().cpu().tolist()
        return [
            MaskPrediction(mask=mask, score=float(score))
            for mask, score in zip(masks, best_scores, strict=True)
        ]

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Automatic masks for ``image`` (``H×W×3 uint8 RGB``) by ``SAM2AutomaticMaskGenerator``
        with :attr:`amg_options` (``None``: its defaults).

        Returns its records: ``segmentation`` (``H×W bool``), ``area``, ``bbox`` (XYWH),
        ``predicted_iou``, ``stability_score``, ``point_coords``, ``crop_box``. The generator
        uses this segmenter's encoder precision and embedding cache.
        """
        check_rgb(image, "image for SAM 2")
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        options = asdict(self.amg_options) if self.amg_options is not None else {}
        generator = SAM2AutomaticMaskGenerator(self._model, **options)
        # The generator's own predictor, with the same hole/sprinkle filtering, made caching.
        area = generator.min_mask_region_area
        generator.predictor = self._new_predictor(max_hole_area=area, max_sprinkle_area=area)
        with self._lock, torch.inference_mode():
            records: list[dict[str, Any]] = generator.generate(image)
        return records
