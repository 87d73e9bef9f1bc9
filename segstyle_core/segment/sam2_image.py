"""SAM 2 on still images: ``sam2``'s ``SAM2Base`` behind a caching ``SAM2ImagePredictor``,
sharing batching, precision and embedding cache with SAM (:class:`~.sam.PromptSegmenter`)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segstyle_core.segment.base import MaskPrediction, Prompt
from segstyle_core.segment.sam import PromptSegmenter, best_masks, prompt_arrays
from segstyle_core.segment.sam2 import sam2_model

if TYPE_CHECKING:
    from sam2.modeling.sam2_base import SAM2Base


@functools.cache
def _predictor_class() -> type:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    class CachingSam2Predictor(SAM2ImagePredictor):  # type: ignore[misc]
        _features: Any  # SAM2ImagePredictor's image state (untyped there)
        _orig_hw: Any

        def __init__(self, segmenter: Sam2ImageSegmenter, **kwargs: Any) -> None:
            super().__init__(segmenter.model, **kwargs)
            # sam2 1.1.0 fixes these to a 1024-pixel input; Hiera's maps are 1/4, 1/8, 1/16.
            size = segmenter.model.image_size
            self._bb_feat_sizes = [(size // scale, size // scale) for scale in (4, 8, 16)]
            self.segmenter = segmenter

        def set_image(self, image: np.ndarray) -> None:
            encode = functools.partial(super().set_image, image)
            size = self.model.image_size
            self.segmenter.set_image(self, image, encode, backend="sam2", image_size=size)

        def image_state(self) -> dict[str, Any]:
            """``image_embed``, ``high_res_feats`` (two maps) and ``orig_hw``."""
            return {**self._features, "orig_hw": list(self._orig_hw[0])}

        def set_image_state(self, state: dict[str, Any]) -> None:
            embed, high_res = state["image_embed"], list(state["high_res_feats"])
            orig_hw = tuple(int(v) for v in state["orig_hw"])
            self.reset_predictor()
            self._features = {"image_embed": embed, "high_res_feats": high_res}
            self._orig_hw = [orig_hw]
            self._is_image_set = True

    return CachingSam2Predictor


class Sam2ImageSegmenter(PromptSegmenter):
    """SAM 2 on a loaded ``SAM2Base`` (``multimask`` off: one mask, with SAM 2's fallback to the
    best of three when it is unstable)."""

    name = "sam2"
    label = "SAM 2"
    model: SAM2Base

    architecture = staticmethod(sam2_model)

    def _new_predictor(self, **kwargs: Any) -> Any:
        return _predictor_class()(self, **kwargs)

    def _decode(self, prompts: list[Prompt]) -> list[MaskPrediction]:
        """``SAM2ImagePredictor._predict`` for a batch, but only the best candidate is
        upscaled (the same masks as ``predict`` one prompt at a time)."""
        predictor, model = self._predictor, self.model
        coords, labels, boxes = prompt_arrays(prompts)
        _, points, point_labels, box = predictor._prep_prompts(coords, labels, boxes, None, True)
        coords_parts, label_parts = [], []
        if box is not None:
            # SAM 2 prompts a box as its two corners, labelled 2 and 3, ahead of the points.
            coords_parts.append(box.reshape(-1, 2, 2))
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=box.device)
            label_parts.append(corner_labels.repeat(len(prompts), 1))
        if points is not None:
            coords_parts.append(points)
            label_parts.append(point_labels)
        concat = (torch.cat(coords_parts, dim=1), torch.cat(label_parts, dim=1))
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
        return best_masks(
            low_res,
            scores,
            lambda best: predictor._transforms.postprocess_masks(best, predictor._orig_hw[-1]),
            predictor.mask_threshold,
        )

    def _mask_generator(self) -> Any:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        generator = SAM2AutomaticMaskGenerator(self.model)
        area = generator.min_mask_region_area
        generator.predictor = self._new_predictor(max_hole_area=area, max_sprinkle_area=area)
        return generator
