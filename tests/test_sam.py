"""SAM backend on a tiny random-weight SAM saved to disk and loaded through the real loader
(:func:`segstyle_core.segment.load_segmenter`).

The reference for every mask is segment_anything's own ``SamPredictor.predict``, one call per
prompt, keeping the best-scoring mask.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from segstyle_core import devices
from segstyle_core.backends import BackendIdentity
from segstyle_core.devices import ModelCache, resolve_device
from segstyle_core.errors import ConfigError, InputError, WeightsError
from segstyle_core.fileio import sha256_file
from segstyle_core.segment import SegmenterConfig, load_segmenter
from segstyle_core.segment import sam as sam_module
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.sam import SamSegmenter
from segstyle_core.testing import build_sam_tiny
from segstyle_core.weights import CheckpointFile

SEED = 1  # differs from build_sam_tiny's default, so un-loaded weights would show.

PROMPTS = [
    Prompt(box=(20, 10, 40, 30)),
    Prompt(box=(0, 0, 64, 48)),
    Prompt(box=(5.5, 5, 30, 40.25)),
    Prompt(points=((30, 20), (5, 5)), point_labels=(1, 0)),
    Prompt(points=((10, 40),), point_labels=(1,)),
    Prompt(points=((50, 10), (3, 3)), point_labels=(1, 1)),
    Prompt(box=(10, 10, 50, 40), points=((30, 20),), point_labels=(1,)),
]


@pytest.fixture
def image() -> np.ndarray:
    """48×64×3 uint8 RGB: noise with a bright rectangle."""
    array = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    array[10:30, 20:40] = 220
    return array


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CheckpointFile:
    """A tiny SAM's state dict on disk and its SHA-256, its builder registered as variant
    ``tiny``, models loaded into a registry of this test's own."""
    monkeypatch.setitem(sam_module.SAM_BUILDERS, "tiny", build_sam_tiny)
    monkeypatch.setattr(devices, "MODELS", ModelCache())
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_sam_tiny(seed=SEED).state_dict(), path)
    return CheckpointFile(path, sha256_file(path))


def load_tiny(checkpoint: CheckpointFile, **options: Any) -> SamSegmenter:
    """The tiny SAM of ``checkpoint``, on the CPU, through the real loader."""
    segmenter = load_segmenter("sam", "tiny", checkpoint, "cpu", **options)
    assert isinstance(segmenter, SamSegmenter)
    return segmenter


def small_grid(monkeypatch: pytest.MonkeyPatch, points_per_side: int) -> None:
    """Make ``generate`` sample ``points_per_side²`` points and keep every mask (the tiny
    model's random weights pass no quality threshold)."""
    small = functools.partial(
        sam_module.SamAutomaticMaskGenerator,
        points_per_side=points_per_side,
        pred_iou_thresh=0,
        stability_score_thresh=0,
    )
    monkeypatch.setattr(sam_module, "SamAutomaticMaskGenerator", small)


def count_encoder_calls(model: Sam, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    forward = model.image_encoder.forward

    def counting(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return forward(x)

    monkeypatch.setattr(model.image_encoder, "forward", counting)
    return calls


def check_mask_records(records: list[dict[str, Any]], image: np.ndarray) -> None:
    """``records`` are some automatic-mask records of ``image``, in the documented format."""
    assert records
    keys = {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords"}
    for record in records:
        assert keys | {"crop_box"} == set(record)
        mask = record["segmentation"]
        assert mask.shape == image.shape[:2] and mask.dtype == bool
        assert record["area"] == int(mask.sum())
        x, y, w, h = record["bbox"]
        ys, xs = np.nonzero(mask)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max(), ys.max())


def reference_mask(predictor: SamPredictor, prompt: Prompt, multimask: bool) -> np.ndarray:
    """segment_anything's own answer for one prompt: best-scoring mask of ``predict``."""
    masks, scores, _ = predictor.predict(
        point_coords=np.array(prompt.points) if prompt.points else None,
        point_labels=np.array(prompt.point_labels) if prompt.points else None,
        box=np.array(prompt.box) if prompt.box is not None else None,
        multimask_output=multimask,
    )
    return masks[scores.argmax()]


@pytest.mark.parametrize("multimask", [True, False])
def test_masks_equal_sam_predictor(
    tiny_checkpoint: CheckpointFile, image: np.ndarray, multimask: bool
) -> None:
    segmenter = load_tiny(tiny_checkpoint, multimask=multimask, precision="float32")
    # float32: bit-equal to SamPredictor (bfloat16: see test_bfloat16_encoder_...)
    assert segmenter.weights_sha256 == sha256_file(tiny_checkpoint.path)
    assert (segmenter.name, segmenter.variant, segmenter.device) == (
        "sam",
        "tiny",
        torch.device("cpu"),
    )
    predictions = segmenter.segment(image, PROMPTS)

    predictor = SamPredictor(build_sam_tiny(seed=SEED))
    predictor.set_image(image)
    assert len(predictions) == len(PROMPTS)
    for prompt, prediction in zip(PROMPTS, predictions, strict=True):
        assert prediction.mask.shape == (48, 64) and prediction.mask.dtype == bool
        np.testing.assert_array_equal(prediction.mask, reference_mask(predictor, prompt, multimask))
    # Not a vacuous comparison: masks are mixed and differ between prompts.
    assert all(0 < p.mask.mean() < 1 for p in predictions)
    assert len({p.mask.tobytes() for p in predictions}) == len(PROMPTS)


def test_large_groups_are_decoded_in_chunks_with_same_masks(
    tiny_checkpoint: CheckpointFile, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    segmenter = load_tiny(tiny_checkpoint)
    whole = segmenter.segment(image, PROMPTS)
    monkeypatch.setattr(sam_module, "DECODE_BATCH", 2)
    chunked = segmenter.segment(image, PROMPTS)
    for got, want in zip(chunked, whole, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.score == pytest.approx(want.score, abs=1e-5)


def test_segmenters_share_one_loaded_model(
    tiny_checkpoint: CheckpointFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []
    monkeypatch.setitem(
        sam_module.SAM_BUILDERS, "tiny", lambda: builds.append(1) or build_sam_tiny()
    )
    plain = load_tiny(tiny_checkpoint)
    other = load_tiny(tiny_checkpoint, precision="bfloat16", multimask=False)
    assert builds == [1] and other.model is plain.model
    assert other.encoder_dtype == torch.bfloat16 and plain.multimask and not other.multimask
    # The weights came from the file, not from the builder's seed.
    for name, tensor in build_sam_tiny(seed=SEED).state_dict().items():
        assert torch.equal(plain.model.state_dict()[name], tensor), name


def test_config_builds_through_the_factory_from_its_resolved_checkpoint(
    tiny_checkpoint: CheckpointFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle_core import backends

    monkeypatch.setattr(backends, "MODELS", ModelCache())
    monkeypatch.setitem(sam_module.SAM_BUILDERS, "vit_b", build_sam_tiny)  # vit_b's stand-in
    config = SegmenterConfig(sam_variant="vit_b", checkpoint=str(tiny_checkpoint.path))
    config = config.changed(device="cpu", precision="float32")
    segmenter = config.build()
    assert isinstance(segmenter, SamSegmenter) and config.build() is segmenter
    assert config.identity() == BackendIdentity("sam", "vit_b", tiny_checkpoint.sha256)
    assert (segmenter.variant, segmenter.weights_sha256) == ("vit_b", tiny_checkpoint.sha256)
    faster = config.changed(precision="bfloat16").build()
    assert faster is not segmenter and faster.model is segmenter.model  # type: ignore[attr-defined]


def test_embedding_cache_skips_encoder_across_calls_and_instances(
    tiny_checkpoint: CheckpointFile,
    image: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "embeddings"
    sha = tiny_checkpoint.sha256
    model = load_tiny(tiny_checkpoint).model
    calls = count_encoder_calls(model, monkeypatch)
    first = SamSegmenter(model, "tiny", sha, embedding_cache_dir=cache)
    second = SamSegmenter(model, "tiny", sha, embedding_cache_dir=cache)
    uncached = SamSegmenter(build_sam_tiny(seed=SEED), "tiny", sha)

    boxes = first.segment(image, PROMPTS[:3])
    points = first.segment(image, PROMPTS[3:])
    assert len(calls) == 1 and len(list(cache.iterdir())) == 1
    again = second.segment(image, PROMPTS)
    assert len(calls) == 1
    expected = uncached.segment(image, PROMPTS)
    for got, want in zip(boxes + points, expected, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
    for got, want in zip(again, expected, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)

    first.segment(image[::-1].copy(), PROMPTS[:1])  # another image: a miss
    assert len(calls) == 2
    other_weights = SamSegmenter(model, "tiny", "0" * 64, embedding_cache_dir=cache)
    other_weights.segment(image, PROMPTS[:1])  # same image, other weights: a miss
    assert len(calls) == 3


def test_generate_returns_documented_records(
    tiny_checkpoint: CheckpointFile, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_grid(monkeypatch, 4)
    check_mask_records(load_tiny(tiny_checkpoint).generate(image), image)


def test_generate_reuses_cached_embedding(
    tiny_checkpoint: CheckpointFile,
    image: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small_grid(monkeypatch, 2)
    segmenter = load_tiny(tiny_checkpoint, embedding_cache_dir=tmp_path)
    calls = count_encoder_calls(segmenter.model, monkeypatch)
    segmenter.segment(image, PROMPTS[:1])
    assert segmenter.generate(image)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (Prompt(box=(10, 10, 70, 30)), "outside the image"),
        (Prompt(box=(-1, 10, 30, 30)), "outside the image"),
        (Prompt(box=(30, 10, 20, 30)), "inverted"),
        (Prompt(box=(10, 30, 20, 30)), "inverted"),
        (Prompt(points=((10, 49),), point_labels=(1,)), "point outside"),
        (Prompt(points=((10, 10),), point_labels=()), "one label .* per point"),
        (Prompt(points=((10, 10),), point_labels=(2,)), r"labels \[2\] must each be 1"),
        (Prompt(), "neither a box nor points"),
    ],
)
def test_bad_prompts_raise_input_error(
    tiny_checkpoint: CheckpointFile, image: np.ndarray, prompt: Prompt, message: str
) -> None:
    segmenter = load_tiny(tiny_checkpoint)
    with pytest.raises(InputError, match=message) as info:
        segmenter.segment(image, [PROMPTS[0], prompt])
    assert "prompt #1" in str(info.value) and "64×48" in str(info.value)


def test_bad_image_raises_input_error(tiny_checkpoint: CheckpointFile, image: np.ndarray) -> None:
    segmenter = load_tiny(tiny_checkpoint)
    with pytest.raises(InputError, match="H×W×3 uint8"):
        segmenter.segment(image[..., 0], PROMPTS[:1])
    assert segmenter.segment(image, []) == []


def test_missing_official_checkpoint_says_how_to_download(tmp_path: Path) -> None:
    config = SegmenterConfig(sam_variant="vit_b", weights_dir=str(tmp_path), device="cpu")
    with pytest.raises(WeightsError) as info:
        config.build()
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and str(tmp_path) in message
    assert "segstyle weights download sam_vit_b" in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert "--" not in message  # a core message names settings, not flags


def test_checkpoint_errors(tiny_checkpoint: CheckpointFile, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown SAM variant 'vit_x': use one of vit_b, vit_l"):
        load_segmenter("sam", "vit_x", tiny_checkpoint)
    with pytest.raises(WeightsError, match="does not exist: fix segmenter.checkpoint, or leave"):
        SegmenterConfig(checkpoint=str(tmp_path / "absent.pth")).build()
    wider = tmp_path / "wider.pth"
    torch.save(build_sam_tiny(img_size=128).state_dict(), wider)
    with pytest.raises(WeightsError, match="does not fit SAM tiny"):
        load_tiny(CheckpointFile(wider, sha256_file(wider)))
    with pytest.raises(ConfigError, match="precision 'half' is unknown"):
        load_tiny(tiny_checkpoint, precision="half")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="use the device cpu"):
            resolve_device("cuda:0")


def test_model_cache_runs_factory_once_under_threads() -> None:
    cache = ModelCache()
    made: list[int] = []
    gate = threading.Barrier(4)

    def factory() -> object:
        made.append(1)
        time.sleep(0.05)  # let the other threads arrive while this one loads
        return object()

    results: list[object] = []

    def worker() -> None:
        gate.wait()
        results.append(cache.get_or_create(("m", 1), factory))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len({id(r) for r in results}) == 1
    assert cache.get_or_create(("m", 1), factory) is results[0] and len(made) == 1
    assert cache.get_or_create(("m", 2), factory) is not results[0]


def test_bfloat16_encoder_gives_masks_close_to_float32(
    tiny_checkpoint: CheckpointFile, image: np.ndarray
) -> None:
    single = load_tiny(tiny_checkpoint, precision="float32")
    half = load_tiny(tiny_checkpoint, precision="bfloat16")
    patch_embeddings: list[torch.dtype] = []  # the encoder's first layer, a convolution
    half.model.image_encoder.patch_embed.register_forward_hook(
        lambda module, inputs, out: patch_embeddings.append(out.dtype)
    )
    assert (single.encoder_dtype, half.encoder_dtype) == (None, torch.bfloat16)
    reference = single.segment(image, PROMPTS)
    got = half.segment(image, PROMPTS)
    assert patch_embeddings == [torch.float32, torch.bfloat16]  # the encoder ran in bf16
    assert half._predictor.features.dtype == torch.float32  # the decoder gets float32
    cosine = torch.nn.functional.cosine_similarity(
        single._predictor.features.flatten(), half._predictor.features.flatten(), dim=0
    )
    assert 0.999 < cosine < 1  # close, and not the float32 embedding itself
    for want, have in zip(reference, got, strict=True):
        intersection = (want.mask & have.mask).sum()
        assert intersection / (want.mask | have.mask).sum() > 0.98
        assert have.score == pytest.approx(want.score, abs=0.01)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(sam_module, "native_bfloat16", lambda device: native)
    cpu = torch.device("cpu")
    assert sam_module.encoder_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert sam_module.encoder_dtype("float32", cpu) is None
    assert sam_module.encoder_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision 'half' is unknown"):
        sam_module.encoder_dtype("half", cpu)  # type: ignore[arg-type]


def test_embedding_cache_separates_precisions(
    tiny_checkpoint: CheckpointFile,
    image: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = load_tiny(tiny_checkpoint).model
    calls = count_encoder_calls(model, monkeypatch)
    for precision in ("float32", "bfloat16", "float32", "bfloat16"):
        segmenter = SamSegmenter(
            model, "tiny", "x" * 64, embedding_cache_dir=tmp_path / "e", precision=precision
        )
        segmenter.segment(image, PROMPTS[:1])
    assert len(calls) == 2 and len(list((tmp_path / "e").iterdir())) == 2


def test_precision_is_part_of_the_stage_and_registry_keys(
    tiny_checkpoint: CheckpointFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle_core import backends
    from segstyle_core.stages.segment import segmenter_key

    monkeypatch.setattr(backends, "MODELS", ModelCache())
    configs = {
        p: SegmenterConfig(checkpoint=str(tiny_checkpoint.path), precision=p, device="cpu")
        for p in ("auto", "float32", "bfloat16")
    }
    assert SegmenterConfig().precision == "auto"
    keys = [json.dumps(segmenter_key(c), sort_keys=True) for c in configs.values()]
    assert len(set(keys)) == 3
    built = [c.load_once(object) for c in configs.values()]  # one registry entry per precision
    assert len({id(b) for b in built}) == 3
    assert configs["float32"].load_once(object) is built[1]
    with pytest.raises(ConfigError, match="precision"):
        SegmenterConfig(precision="float16")
