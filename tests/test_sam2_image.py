"""SAM 2 on images, on a random-weight SAM 2.1 Hiera-T saved to disk and loaded through the
real loader (:func:`segstyle_core.segment.load_segmenter`); own checkpoints (SAM 2, SAM, VGG19)
and their hashes in result rows.

The model is sam2's own ``configs/sam2.1/sam2.1_hiera_t.yaml`` (the smallest official config)
with its input shrunk to 128 pixels by a Hydra override (added to every variant's architecture
while the tests run, so the loader builds the same architecture). The reference for every mask
is sam2's own ``SAM2ImagePredictor.predict``, one call per prompt, keeping the best-scoring mask.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from segstyle_core import backends, devices, weights
from segstyle_core.backends import BackendIdentity
from segstyle_core.errors import ConfigError, WeightsError
from segstyle_core.fileio import sha256_file
from segstyle_core.segment import SegmenterConfig, load_segmenter
from segstyle_core.segment.base import Prompt
from segstyle_core.segment.sam2 import sam2_model
from segstyle_core.segment.sam2_image import Sam2ImageSegmenter
from segstyle_core.stylize import StylizerConfig
from segstyle_core.weights import CheckpointFile
from tests.test_sam import check_mask_records

CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ("++model.image_size=128",)

PROMPTS = [
    Prompt(box=(20, 10, 40, 30)),
    Prompt(box=(0, 0, 64, 48)),
    Prompt(box=(5.5, 5, 30, 40.25)),
    Prompt(points=((30, 20),), point_labels=(1,)),
    Prompt(points=((10, 40),), point_labels=(1,)),
    Prompt(points=((30, 20), (5, 5)), point_labels=(1, 0)),  # a negative point
    Prompt(points=((12, 8), (40, 30)), point_labels=(0, 1)),  # negative first
    Prompt(points=((50, 10), (3, 3)), point_labels=(1, 1)),
    Prompt(box=(10, 10, 50, 40), points=((30, 20),), point_labels=(1,)),
    Prompt(box=(10, 10, 50, 40), points=((30, 20),), point_labels=(0,)),
]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """48×64×3 uint8 RGB: noise with a bright rectangle."""
    array = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    array[10:30, 20:40] = 220
    return array


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A random SAM 2.1 Hiera-T (128-pixel input) and its checkpoint in the official format
    (``{"model": state dict}``); the variant ``hiera_tiny`` builds that architecture while the
    module runs, and the module's models are loaded into a registry of their own."""
    from sam2.build_sam import build_sam2

    with pytest.MonkeyPatch.context() as patch:
        small = functools.partial(sam2_model, hydra_overrides_extra=list(OVERRIDES))
        patch.setattr(Sam2ImageSegmenter, "architecture", staticmethod(small))
        patch.setattr(devices, "MODELS", devices.ModelCache())
        patch.setattr(backends, "MODELS", devices.ModelCache())
        torch.manual_seed(1)
        model = build_sam2(CONFIG, None, device="cpu", hydra_overrides_extra=list(OVERRIDES))
        path = tmp_path_factory.mktemp("sam2") / "my_sam2.pt"
        torch.save({"model": model.state_dict()}, path)
        yield model, path


@pytest.fixture(scope="module")
def reference(tiny: tuple[Any, Path], image: np.ndarray) -> Any:
    """sam2's own predictor on the saved model, with ``image`` set."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(tiny[0])
    # sam2 1.1.0 fixes the feature-map sizes to a 1024-pixel input; these are 128's.
    predictor._bb_feat_sizes = [(32, 32), (16, 16), (8, 8)]
    predictor.set_image(image)
    return predictor


def reference_mask(predictor: Any, prompt: Prompt, multimask: bool) -> tuple[np.ndarray, float]:
    """sam2's answer for one prompt: the best-scoring mask of ``predict`` and its score."""
    masks, scores, _ = predictor.predict(
        point_coords=np.array(prompt.points) if prompt.points else None,
        point_labels=np.array(prompt.point_labels) if prompt.points else None,
        box=np.array(prompt.box) if prompt.box is not None else None,
        multimask_output=multimask,
    )
    best = int(scores.argmax())
    return masks[best].astype(bool), float(scores[best])


def encoder_calls(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    forward = model.forward_image

    def counting(x: torch.Tensor) -> Any:
        calls.append(1)
        return forward(x)

    monkeypatch.setattr(model, "forward_image", counting)
    return calls


def config(checkpoint: Path, **changes: Any) -> SegmenterConfig:
    settings = {"precision": "float32", "device": "cpu", **changes}
    return SegmenterConfig(
        backend="sam2", sam2_variant="hiera_tiny", checkpoint=str(checkpoint), **settings
    )


@pytest.mark.parametrize("multimask", [True, False])
def test_masks_equal_sam2_image_predictor(
    tiny: tuple[Any, Path], reference: Any, image: np.ndarray, multimask: bool
) -> None:
    segmenter_config = config(tiny[1], multimask=multimask)
    segmenter = segmenter_config.build()
    assert isinstance(segmenter, Sam2ImageSegmenter)
    assert segmenter_config.identity() == BackendIdentity(
        "sam2", "hiera_tiny", sha256_file(tiny[1])
    )
    assert (segmenter.name, segmenter.variant, segmenter.weights_sha256) == (
        "sam2",
        "hiera_tiny",
        sha256_file(tiny[1]),
    )
    predictions = segmenter.segment(image, PROMPTS)
    assert len(predictions) == len(PROMPTS)
    for prompt, prediction in zip(PROMPTS, predictions, strict=True):
        assert prediction.mask.shape == (48, 64) and prediction.mask.dtype == bool
        mask, score = reference_mask(reference, prompt, multimask)
        np.testing.assert_array_equal(prediction.mask, mask, err_msg=str(prompt))
        assert prediction.score == pytest.approx(score, abs=1e-5)
    # Not a vacuous comparison: masks are mixed and differ between prompts.
    assert all(0 < p.mask.mean() < 1 for p in predictions)
    assert len({p.mask.tobytes() for p in predictions}) == len(PROMPTS)


def test_loader_fills_every_weight_from_the_checkpoint(tiny: tuple[Any, Path]) -> None:
    model, path = tiny
    checkpoint = CheckpointFile(path, sha256_file(path))
    segmenter = load_segmenter("sam2", "hiera_tiny", checkpoint, "cpu")
    loaded = segmenter.model
    assert loaded is not model and loaded.image_size == 128 and not loaded.training
    assert load_segmenter("sam2", "hiera_tiny", checkpoint, "cpu").model is loaded
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_one_encoder_run_per_image_and_the_disk_cache(
    tiny: tuple[Any, Path], image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, path = tiny
    sha = sha256_file(path)
    calls = encoder_calls(model, monkeypatch)
    plain = Sam2ImageSegmenter(model, "hiera_tiny", sha, precision="float32")
    expected = plain.segment(image, PROMPTS)
    assert len(calls) == 1  # ten prompts of five shapes, one embedding

    cache = tmp_path / "embeddings"
    first = Sam2ImageSegmenter(
        model, "hiera_tiny", sha, embedding_cache_dir=cache, precision="float32"
    )
    second = Sam2ImageSegmenter(
        model, "hiera_tiny", sha, embedding_cache_dir=cache, precision="float32"
    )
    first.segment(image, PROMPTS[:3])
    assert len(calls) == 2 and len(list(cache.iterdir())) == 1
    again = second.segment(image, PROMPTS)
    assert len(calls) == 2  # read from the disk cache
    for got, want in zip(again, expected, strict=True):
        np.testing.assert_array_equal(got.mask, want.mask)
        assert got.score == pytest.approx(want.score, abs=1e-6)
    other = Sam2ImageSegmenter(
        model, "hiera_tiny", "0" * 64, embedding_cache_dir=cache, precision="float32"
    )
    other.segment(image, PROMPTS[:1])  # other weights: a miss
    assert len(calls) == 3


@pytest.mark.slow  # about 10 s on 2 busy cores (bfloat16 autocast on the CPU)
def test_bfloat16_encoder_hands_float32_features_to_the_decoder(
    tiny: tuple[Any, Path], image: np.ndarray
) -> None:
    model, path = tiny
    sha = sha256_file(path)
    exact = Sam2ImageSegmenter(model, "hiera_tiny", sha, precision="float32")
    fast = Sam2ImageSegmenter(model, "hiera_tiny", sha, precision="bfloat16")
    assert (exact.encoder_dtype, fast.encoder_dtype) == (None, torch.bfloat16)
    expected, got = exact.segment(image, PROMPTS[:6]), fast.segment(image, PROMPTS[:6])
    features = fast._predictor._features
    assert features["image_embed"].dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in features["high_res_feats"])
    for a, b in zip(expected, got, strict=True):
        assert (a.mask == b.mask).mean() > 0.98
    with pytest.raises(ConfigError, match="precision"):
        Sam2ImageSegmenter(model, "hiera_tiny", sha, precision="float16")  # type: ignore[arg-type]


def test_generate_returns_documented_records_from_the_cached_embedding(
    tiny: tuple[Any, Path], image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sam2 import automatic_mask_generator

    model, path = tiny
    calls = encoder_calls(model, monkeypatch)
    # A 3×3 grid, every mask kept (random weights pass no quality threshold).
    small = functools.partial(
        automatic_mask_generator.SAM2AutomaticMaskGenerator,
        points_per_side=3,
        pred_iou_thresh=0,
        stability_score_thresh=0,
    )
    monkeypatch.setattr(automatic_mask_generator, "SAM2AutomaticMaskGenerator", small)
    segmenter = Sam2ImageSegmenter(
        model, "hiera_tiny", sha256_file(path), embedding_cache_dir=tmp_path, precision="float32"
    )
    segmenter.segment(image, PROMPTS[:1])
    check_mask_records(segmenter.generate(image), image)
    assert len(calls) == 1


def test_a_checkpoint_of_another_architecture_is_refused(
    tiny: tuple[Any, Path], tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    torch.save({"model": {"layer.weight": torch.zeros(2)}}, other)
    with pytest.raises(WeightsError, match="does not fit SAM 2 hiera_tiny"):
        load_segmenter("sam2", "hiera_tiny", CheckpointFile(other, sha256_file(other)), "cpu")
    with pytest.raises(ConfigError, match="unknown SAM 2 variant 'vit_l': use one of hiera_tiny"):
        load_segmenter("sam2", "vit_l", CheckpointFile(other, sha256_file(other)), "cpu")


# ----------------------------------------------------------------------------- identities


def test_sam2_identity_official_file_and_own_file(tmp_path: Path) -> None:
    official = tmp_path / "sam2.1_hiera_small.pt"
    official.write_bytes(b"an official-looking file")
    segmenter = SegmenterConfig(
        backend="sam2", sam2_variant="hiera_small", weights_dir=str(tmp_path)
    )
    assert segmenter.identity() == BackendIdentity("sam2", "hiera_small", sha256_file(official))
    # The full hash recorded at download is checked: another file under that name fails.
    weights.write_sidecar(official, "f" * 64)
    with pytest.raises(WeightsError, match="recorded f{64}"):
        segmenter.identity()

    own = tmp_path / "fine-tuned.pt"
    torch.save({"weight": torch.zeros(2)}, own)  # a checkpoint of one's own: loadable weights
    mine = segmenter.changed(checkpoint=str(own))
    assert mine.identity().weights_sha256 == sha256_file(own)
    with pytest.raises(WeightsError, match="does not exist: fix segmenter.checkpoint"):
        mine.changed(checkpoint=str(tmp_path / "absent.pt")).identity()
    with pytest.raises(WeightsError, match="segstyle weights download sam2.1_hiera_large"):
        SegmenterConfig(backend="sam2", weights_dir=str(tmp_path / "empty")).identity()
    with pytest.raises(ConfigError, match="sam2_variant"):
        SegmenterConfig(backend="sam2", sam2_variant="vit_l")


def test_own_sam_and_vgg_checkpoints_are_named_by_their_full_hash(tmp_path: Path) -> None:
    sam = tmp_path / "my_sam.pth"
    torch.save({"weight": torch.zeros(2)}, sam)
    assert SegmenterConfig(checkpoint=str(sam)).identity() == BackendIdentity(
        "sam", "vit_l", sha256_file(sam)
    )
    vgg = tmp_path / "my_vgg.pth"
    torch.save({"weight": torch.ones(2)}, vgg)
    stylizer = StylizerConfig(vgg_checkpoint=str(vgg), weights_dir=str(tmp_path / "empty"))
    assert stylizer.identity() == BackendIdentity("gatys", "vgg19", sha256_file(vgg))
    for missing in (
        SegmenterConfig(checkpoint=str(tmp_path / "absent.pth")),
        StylizerConfig(vgg_checkpoint=str(tmp_path / "absent.pth")),
    ):
        field = "segmenter.checkpoint|stylizer.vgg_checkpoint"  # the settings, not CLI flags
        with pytest.raises(WeightsError, match=f"does not exist: fix ({field}), or leave it"):
            missing.identity()
    # The official name is still checked against its published hash prefix.
    (tmp_path / "vgg19-dcbb9e9d.pth").write_bytes(b"not torchvision's file")
    with pytest.raises(WeightsError, match="should start with dcbb9e9d"):
        StylizerConfig(weights_dir=str(tmp_path)).identity()


def test_gatys_loads_an_own_vgg_checkpoint(tmp_path: Path) -> None:
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    path = tmp_path / "my_vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    stylizer = StylizerConfig(vgg_checkpoint=str(path), device="cpu").build()
    assert stylizer.weights_sha256 == sha256_file(path)


def test_parquet_rows_record_the_full_hashes_of_own_checkpoints(tmp_path: Path) -> None:
    from segstyle_core.config import DatasetSelection
    from segstyle_core.rows import run_columns

    sam2, vgg, style = tmp_path / "sam2.pt", tmp_path / "vgg.pth", tmp_path / "style.png"
    torch.save({"weight": torch.zeros(2)}, sam2)
    torch.save({"weight": torch.ones(2)}, vgg)
    style.write_bytes(b"a style image")
    segmenter = SegmenterConfig(backend="sam2", checkpoint=str(sam2))
    stylizer = StylizerConfig(vgg_checkpoint=str(vgg), style=str(style))
    columns = run_columns(
        run_name="r",
        flow_run_id="f",
        dataset=DatasetSelection(),
        config={},
        segmenter=segmenter.identity(),
        stylizer=stylizer.identity(),
        mode="object",
        started=dt.datetime.now(dt.UTC),
    )
    assert (columns["segmenter"], columns["segmenter_variant"]) == ("sam2", "hiera_large")
    assert columns["segmenter_weights_sha256"] == sha256_file(sam2)
    assert columns["stylizer_weights_sha256"] == sha256_file(vgg)
    assert len(columns["segmenter_weights_sha256"]) == 64


# ----------------------------------------------------------------------------- CLI


def test_help_and_weights_status_show_sam2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segstyle.flows import cli

    with pytest.raises(SystemExit):
        cli.main(["stylize", "--help"])
    text = capsys.readouterr().out
    for option in ("{sam,sam2,grabcut}", "--sam2-variant", "hiera_base_plus", "--vgg"):
        assert option in text
    with pytest.raises(SystemExit):
        cli.main(["weights", "--help"])
    names = list(weights.CHECKPOINTS)
    text = capsys.readouterr().out
    assert all(name in text for name in names)

    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"a SAM 2 file")
    assert cli.main(["weights", "status", "--weights-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sam2_lines = [line for line in lines if line.startswith("sam2.1_hiera_")]
    assert len(sam2_lines) == 4
    assert str(tmp_path / "sam2.1_hiera_tiny.pt") in sam2_lines[0]
    assert all(line.endswith("missing") for line in sam2_lines[1:])
    assert cli.main(["weights", "verify", "sam2.1_hiera_tiny", "--weights-dir", str(tmp_path)]) == 0
    assert "unchecked: no published hash" in capsys.readouterr().out
