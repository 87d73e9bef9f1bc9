"""Gatys style transfer on a VGG19 with random weights, saved and loaded through the real loader.

Images are 64 px high and runs take a few objective evaluations, so the file runs in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.grad import conv2d_input
from torchvision.models.vgg import cfgs, make_layers

from segstyle_core.composite import resize_to
from segstyle_core.errors import ConfigError, InputError, WeightsError
from segstyle_core.images import read_rgb
from segstyle_core.stylize import gatys, objective, vgg
from segstyle_core.stylize.base import Progress
from segstyle_core.stylize.gatys import (
    MIN_SIDE,
    GatysConfig,
    GatysStylizer,
    content_working_size,
    gatys_objective,
)
from segstyle_core.stylize.gatys_config import VGG19Layer
from segstyle_core.stylize.objective import (
    autocast_dtype,
    content_loss,
    gram_matrix,
    loss_terms,
    style_loss,
    total_loss,
    tv_loss,
)
from segstyle_core.stylize.vgg import VGGFeatures, load_vgg19_features

HEIGHT = 64


@pytest.fixture(scope="module")
def vgg_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-format VGG19 ``features`` state dict with random (seeded) weights."""
    torch.manual_seed(0)
    features = make_layers(cfgs["E"])
    path = tmp_path_factory.mktemp("weights") / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


def _config(**overrides: object) -> GatysConfig:
    """A small run; shallow layers keep VGG cheap for the tests of the mechanics, which run
    without coarse-to-fine and plateau stopping unless a test turns them on."""
    shallow = {"content_layers": ("relu2_1",), "style_layers": ("relu1_1", "relu2_1")}
    single_stage = {"coarse_fraction": 0.0, "plateau_tol": 0.0}
    return GatysConfig(
        **{"height": HEIGHT, "iterations": 4, **shallow, **single_stage, **overrides}
    )


def _stylizer(vgg_path: Path, config: GatysConfig, **kwargs: object) -> GatysStylizer:
    extractor = load_vgg19_features(vgg_path, config.layers, config.pooling, config.normalization)
    return GatysStylizer(config, device="cpu", extractor=extractor, **kwargs)


def _content(height: int = 48, width: int = 72, phase: float = 0.0) -> np.ndarray:
    """A smooth synthetic street-like picture: gradients and a block."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([np.sin(6 * x + phase), np.cos(5 * y - phase), np.sin(4 * (x + y))], axis=-1)
    image = (image + 1) * 127.5
    image[height // 3 : 2 * height // 3, width // 4 : width // 2] = (200, 30, 30)
    return image.astype(np.uint8)


def _style(size: int = 80, seed: int = 1) -> np.ndarray:
    """Stripes with noise: a texture with strong oriented statistics."""
    rng = np.random.default_rng(seed)
    stripes = ((np.arange(size)[None, :] // 4) % 2) * 255
    image = np.repeat(np.broadcast_to(stripes, (size, size))[:, :, None], 3, axis=2)
    noise = rng.integers(-40, 40, (size, size, 3))
    return np.clip(image + noise, 0, 255).astype(np.uint8)


# --- losses against direct numpy computations -------------------------------------------------


def _numpy_gram(f: np.ndarray) -> np.ndarray:
    c, h, w = f.shape
    gram = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            gram[i, j] = sum(f[i, y, x] * f[j, y, x] for y in range(h) for x in range(w))
    return gram / (c * h * w)


def test_gram_and_losses_match_a_direct_computation() -> None:
    rng = np.random.default_rng(0)
    shapes = {"relu1_1": (3, 5, 6), "relu2_1": (4, 3, 4)}
    feats = {k: rng.normal(size=s) for k, s in shapes.items()}
    style_feats = {k: rng.normal(size=s) for k, s in shapes.items()}
    content_feats = {"relu2_1": rng.normal(size=shapes["relu2_1"])}
    image = rng.uniform(size=(3, 7, 9))

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a[None])

    for f in feats.values():
        np.testing.assert_allclose(gram_matrix(t(f))[0].numpy(), _numpy_gram(f), rtol=1e-10)

    expected_content = np.mean((feats["relu2_1"] - content_feats["relu2_1"]) ** 2)
    weights = {"relu1_1": 0.25, "relu2_1": 2.0}
    expected_style = sum(
        w * np.sum((_numpy_gram(feats[k]) - _numpy_gram(style_feats[k])) ** 2)
        for k, w in weights.items()
    )
    c, h, w = image.shape
    expected_tv = 255 * sum(
        abs(image[k, y, x + 1] - image[k, y, x])
        for k in range(c)
        for y in range(h)
        for x in range(w - 1)
    ) + 255 * sum(
        abs(image[k, y + 1, x] - image[k, y, x])
        for k in range(c)
        for y in range(h - 1)
        for x in range(w)
    )
    tfeats = {k: t(v) for k, v in feats.items()}
    tcontent = {k: t(v) for k, v in content_feats.items()}
    tgrams = {k: gram_matrix(t(v)) for k, v in style_feats.items()}
    assert float(content_loss(tfeats, tcontent)) == pytest.approx(expected_content, rel=1e-10)
    assert float(style_loss(tfeats, tgrams, weights)) == pytest.approx(expected_style, rel=1e-10)
    assert float(tv_loss(t(image))) == pytest.approx(expected_tv, rel=1e-10)

    config = GatysConfig(
        content_layers=("relu2_1",),
        style_layers=tuple(weights),
        style_layer_weights=tuple(weights.values()),
        content_weight=3.0,
        style_weight=5.0,
        tv_weight=0.5,
    )
    style = style_loss(tfeats, tgrams, config.layer_weights())
    terms = {k: float(v) for k, v in total_loss(tfeats, t(image), tcontent, style, config).items()}
    assert terms["content"] == pytest.approx(3.0 * expected_content, rel=1e-10)
    assert terms["style"] == pytest.approx(5.0 * expected_style, rel=1e-10)
    assert terms["tv"] == pytest.approx(0.5 * expected_tv, rel=1e-10)
    assert terms["total"] == pytest.approx(terms["content"] + terms["style"] + terms["tv"])


def test_default_style_layer_weights_are_equal() -> None:
    config = GatysConfig()
    assert config.layer_weights() == {name: 0.2 for name in config.style_layers}


# --- the VGG feature extractor ----------------------------------------------------------------


def test_layer_names_map_to_torchvision_indices(vgg_path: Path) -> None:
    extractor = load_vgg19_features(vgg_path, ["relu1_1", "conv4_2"], normalization="imagenet")
    torch.manual_seed(0)
    reference = make_layers(cfgs["E"])  # same seed as the saved file: same weights
    image = torch.rand(1, 3, 40, 48)
    normalized = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        features = extractor(image)
        # torchvision's VGG19 features: index 1 is relu1_1, index 21 is conv4_2.
        expected_relu = reference[:2](normalized)
        expected_conv = reference[:22](normalized)
    assert set(features) == {"relu1_1", "conv4_2"}
    torch.testing.assert_close(features["relu1_1"], expected_relu)
    torch.testing.assert_close(features["conv4_2"], expected_conv)
    assert features["conv4_2"].min() < 0  # the conv output, not overwritten by an in-place ReLU
    assert len(extractor.features) == 22  # truncated after the deepest requested layer
    assert not any(p.requires_grad for p in extractor.parameters())


def test_avg_pooling_option_replaces_max_pooling(vgg_path: Path) -> None:
    extractor = load_vgg19_features(vgg_path, ["relu3_1"], pooling="avg")
    kinds = {type(m) for m in extractor.features}
    assert torch.nn.AvgPool2d in kinds and torch.nn.MaxPool2d not in kinds


def test_file_without_vgg_weights_is_a_weights_error(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="segstyle weights download vgg19"):
        load_vgg19_features(path, ["conv1_1"])


# --- stylization -----------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_optimisation_lowers_the_total_loss(vgg_path: Path, optimizer: str) -> None:
    config = _config(optimizer=optimizer, iterations=6, learning_rate=0.05)
    stylizer = _stylizer(vgg_path, config)
    content, style = _content(), _style()
    reports: list[Progress] = []
    out = stylizer.stylize(content, style, progress=reports.append)

    assert [r.step for r in reports] == list(range(1, len(reports) + 1))
    # the budget is never exceeded; L-BFGS may leave one evaluation unused
    assert config.iterations - 1 <= len(reports) <= config.iterations
    assert all(r.total == config.iterations for r in reports)
    assert set(reports[0].losses) == {"content", "style", "tv", "total"}
    before = gatys_objective(content, content, style, stylizer.extractor, config)
    after = gatys_objective(out, content, style, stylizer.extractor, config)
    assert before["total"] == pytest.approx(reports[0].losses["total"], rel=1e-4)
    assert min(r.losses["total"] for r in reports) < reports[0].losses["total"]
    assert after["total"] < before["total"]  # also after clamping and rounding to uint8
    assert after["style"] < before["style"]


def test_output_keeps_the_aspect_at_the_target_height(vgg_path: Path) -> None:
    content = _content(50, 75)
    out = _stylizer(vgg_path, _config(optimizer="adam", iterations=3)).stylize(content, _style())
    assert out.shape == (HEIGHT, 96, 3) and out.dtype == np.uint8  # 75 * 64 / 50 = 96
    assert np.abs(out.astype(int) - resize_to(content, (HEIGHT, 96)).astype(int)).mean() > 1


def test_style_targets_are_computed_once_per_style(vgg_path: Path) -> None:
    stylizer = _stylizer(vgg_path, _config(iterations=2), style_cache_size=1)
    widths: list[int] = []
    stylizer.extractor.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[3]))
    style_a, style_b = _style(80, seed=1), _style(80, seed=2)  # working size 64×64
    for phase in (0.0, 1.0, 2.0):
        stylizer.stylize(_content(48, 72, phase), style_a)  # working width 96
    assert widths.count(HEIGHT) == 1
    assert widths.count(96) == 9  # each content: its target pass and two evaluations
    stylizer.stylize(_content(), style_b)
    stylizer.stylize(_content(), style_a)  # evicted by style_b (cache size 1): recomputed
    assert widths.count(HEIGHT) == 3


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_style_files_in_other_modes_are_converted(
    vgg_path: Path, tmp_path: Path, mode: str
) -> None:
    rgb = _style(48)
    if mode == "I;16":
        picture = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
    else:
        picture = Image.fromarray(rgb).convert(mode)
    path = tmp_path / "style.png"
    picture.save(path)
    assert Image.open(path).mode == mode
    style = read_rgb(path)
    out = _stylizer(vgg_path, _config(iterations=2)).stylize(_content(), style)
    assert out.shape == (HEIGHT, 96, 3)


def test_tiny_style_image_is_an_input_error(vgg_path: Path) -> None:
    with pytest.raises(InputError, match="larger style image"):
        _stylizer(vgg_path, _config()).stylize(_content(), _style(20))


def test_plateau_stops_early(vgg_path: Path) -> None:
    config = _config(
        optimizer="adam", iterations=20, plateau_tol=1.0, plateau_patience=2, autocast=None
    )
    reports: list[Progress] = []
    _stylizer(vgg_path, config).stylize(_content(), _style(), progress=reports.append)
    assert len(reports) == 3  # the window is full after 3 evaluations; no 100 % gain in it


def _plateau_dtypes(vgg_path: Path, float32_after_plateau: bool) -> list[torch.dtype]:
    """The dtype of every evaluation's features in a bfloat16 run that plateaus at once."""
    config = _config(
        optimizer="adam",
        iterations=20,
        plateau_tol=1.0,
        plateau_patience=2,
        autocast="bfloat16",
        float32_after_plateau=float32_after_plateau,
    )
    stylizer = _stylizer(vgg_path, config)
    dtypes: list[torch.dtype] = []
    stylizer.extractor.register_forward_hook(
        lambda _m, _a, out: dtypes.append(out["relu2_1"].dtype)
    )
    reports: list[Progress] = []
    stylizer.stylize(_content(), _style(), progress=reports.append)
    return dtypes[-len(reports) :]  # the evaluations (the content targets' pass comes first)


def test_plateau_under_autocast_ends_the_stage(vgg_path: Path) -> None:
    # the window is full after 3 evaluations; no 100 % gain in it
    assert _plateau_dtypes(vgg_path, float32_after_plateau=False) == [torch.bfloat16] * 3


def test_plateau_under_autocast_can_switch_to_float32_first(vgg_path: Path) -> None:
    # 3 evaluations to the first plateau, 3 more in float32
    expected = [torch.bfloat16] * 3 + [torch.float32] * 3
    assert _plateau_dtypes(vgg_path, float32_after_plateau=True) == expected


def test_missing_vgg_weights_name_the_download_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGSTYLE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="segstyle weights download vgg19"):
        GatysStylizer(device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "where", "got"),
    [
        ("style_layers", ("relu1_1", "conv9_1"), "style_layers.1", "conv9_1"),
        ("content_layers", (), "content_layers", ()),
        ("optimizer", "sgd", "optimizer", "sgd"),
        ("style_layer_weights", (1.0,), "style_layer_weights", (1.0,)),
        ("autocast", "float8", "autocast", "float8"),
        ("content_scale", 0.0, "content_scale", 0.0),
        ("coarse_fraction", 1.0, "coarse_fraction", 1.0),
        ("height", MIN_SIDE - 1, "height", MIN_SIDE - 1),
        ("iterations", 0, "iterations", 0),
        ("tv_weight", -1.0, "tv_weight", -1.0),
    ],
)
def test_bad_config_is_one_config_error_line_naming_the_field(
    field: str, value: object, where: str, got: object
) -> None:
    with pytest.raises(ConfigError) as info:
        GatysConfig(**{field: value})
    assert str(info.value).startswith(f"GatysConfig.{where}: ")
    assert str(info.value).endswith(f"(got {got!r})") and "\n" not in str(info.value)


def test_layer_names_are_torchvisions_vgg19_modules() -> None:
    """convB_I: the I-th convolution of block B, reluB_I its ReLU, poolB the block's pooling."""
    names: list[str] = []
    block, index = 1, 0
    with torch.device("meta"):
        features = make_layers(cfgs["E"])
    for module in features:
        if isinstance(module, torch.nn.Conv2d):
            index += 1
            names.append(f"conv{block}_{index}")
        elif isinstance(module, torch.nn.ReLU):
            names.append(f"relu{block}_{index}")
        else:
            assert isinstance(module, torch.nn.MaxPool2d)
            names.append(f"pool{block}")
            block, index = block + 1, 0
    assert tuple(names) == get_args(VGG19Layer)


def test_extractor_without_the_config_layers_is_refused(vgg_path: Path) -> None:
    extractor: VGGFeatures = load_vgg19_features(vgg_path, ["conv1_1"])
    with pytest.raises(ConfigError, match="lacks layers"):
        GatysStylizer(_config(), device="cpu", extractor=extractor)


def test_config_from_json_lists_is_hashable() -> None:
    config = GatysConfig(content_layers=["conv4_2"], style_layers=["relu1_1", "relu2_1"])  # type: ignore[arg-type]
    assert config.style_layers == ("relu1_1", "relu2_1")
    assert hash(config) == hash(GatysConfig(style_layers=("relu1_1", "relu2_1")))


def test_random_weights_are_refused_outside_tests(vgg_path: Path) -> None:
    with pytest.raises(WeightsError, match="SHA-256"):
        GatysStylizer(_config(), device="cpu", checkpoint=vgg_path)


@pytest.mark.parametrize(
    ("optimizer", "iterations", "option"),
    [
        ("adam", 3, "channels_last"),
        ("adam", 3, "autocast"),
        ("lbfgs", 8, "channels_last"),
        pytest.param("lbfgs", 8, "compile", marks=pytest.mark.slow),
    ],
)
def test_performance_options_keep_the_result(
    vgg_path: Path, optimizer: str, iterations: int, option: str
) -> None:
    """Same pixels with and without the option. (bfloat16 changes L-BFGS's line-search path,
    so its effect on a whole run is measured on the objective by benchmarks/bench_pipeline.py.)
    """
    content, style = _content(), _style()
    speed_off = {"channels_last": False, "compile": False}
    plain = _config(optimizer=optimizer, iterations=iterations, autocast=None, **speed_off)
    fast = plain.changed(**{option: {"autocast": "bfloat16"}.get(option, True)})
    expected = _stylizer(vgg_path, plain).stylize(content, style)
    out = _stylizer(vgg_path, fast).stylize(content, style)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 1.0
    assert np.abs(out.astype(int) - resize_to(content, out.shape[:2]).astype(int)).mean() > 1


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gram_gradient_is_exact_in_both_layouts(layout: torch.memory_format) -> None:
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(gram_matrix, (features,))
    weights = torch.randn(2, 3, 3, dtype=torch.float64)
    (gram_matrix(features) * weights).sum().backward()
    flat = features.detach().reshape(2, 3, 20).requires_grad_(True)
    (torch.bmm(flat, flat.transpose(1, 2)) / 60 * weights).sum().backward()
    torch.testing.assert_close(features.grad.reshape(2, 3, 20), flat.grad)
    assert features.grad.is_contiguous(memory_format=layout)  # no layout change on the way back


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_style_term_matches_autograd_through_the_gram_matrix(layout: torch.memory_format) -> None:
    """The style loss's one-product term: its value and gradient equal autograd's through
    ``gram_matrix`` (float64), and gradcheck passes in both layouts."""
    generator = torch.Generator().manual_seed(4)
    features = torch.randn(1, 6, 5, 7, dtype=torch.float64, generator=generator)
    features = features.contiguous(memory_format=layout).requires_grad_(True)
    target = torch.randn(1, 6, 6, dtype=torch.float64, generator=generator)  # not symmetric
    weights = {"relu1_1": 0.3}
    term = style_loss({"relu1_1": features}, {"relu1_1": target}, weights)
    (gradient,) = torch.autograd.grad(term, features)
    plain = 0.3 * torch.sum((gram_matrix(features) - target) ** 2)
    (expected,) = torch.autograd.grad(plain, features)
    torch.testing.assert_close(term, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-15)
    assert gradient.is_contiguous(memory_format=layout)

    def term_of(f: torch.Tensor) -> torch.Tensor:
        return style_loss({"relu1_1": f}, {"relu1_1": target}, weights)

    assert torch.autograd.gradcheck(term_of, (features,))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_styled_relu_matches_autograd_through_the_relu_and_the_gram_matrix(
    layout: torch.memory_format,
) -> None:
    """A ReLU with its style term fused: the map, the term and the input's gradient (the term's
    and a downstream consumer's, summed inside the product) equal autograd's through
    ``torch.relu`` and ``gram_matrix`` (float64), and gradcheck passes in both layouts."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 5, 7, dtype=torch.float64, generator=generator)
    x = x.contiguous(memory_format=layout).requires_grad_(True)
    target = torch.randn(1, 6, 6, dtype=torch.float64, generator=generator)  # not symmetric
    probe = torch.randn(1, 6, 5, 7, dtype=torch.float64, generator=generator)  # the next layer

    def fused(x: torch.Tensor) -> torch.Tensor:
        features, term = objective._StyledReLU.apply(x, target, 0.3)
        return term + (features * probe).sum()

    def plain(x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(x)
        return 0.3 * torch.sum((gram_matrix(features) - target) ** 2) + (features * probe).sum()

    (gradient,) = torch.autograd.grad(fused(x), x)
    (expected,) = torch.autograd.grad(plain(x), x)
    torch.testing.assert_close(fused(x), plain(x), rtol=1e-12, atol=0)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-15)
    assert (x < 0).any() and gradient[x < 0].eq(0).all()
    assert gradient.is_contiguous(memory_format=layout)
    assert torch.autograd.gradcheck(fused, (x,))


@pytest.mark.parametrize("autocast", [None, "bfloat16", "float16"])
def test_style_terms_fused_into_their_relus_give_the_objective_of_the_features(
    vgg_path: Path, autocast: str | None
) -> None:
    """``loss_terms`` (style terms fused into their ReLUs; not under float16) gives the
    objective and pixel gradient of the features' own ``total_loss``: equal in float32 and
    float16, within bfloat16 rounding under bfloat16; a content layer that is also a style
    layer is read from the fused ReLU."""
    config = _config(autocast=autocast, channels_last=True, content_layers=("relu2_1", "conv4_2"))
    extractor = load_vgg19_features(vgg_path, config.layers).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(6)
    content, style = (torch.rand(1, 3, 48, 64, generator=generator) for _ in range(2))
    with torch.no_grad():
        grams = objective.grams_of(
            objective.vgg_features(extractor, style, config), config.style_layers
        )
        features = objective.vgg_features(extractor, content, config)
    targets = {name: features[name] for name in config.content_layers}
    image = (content * 0.8 + 0.1).requires_grad_(True)
    fused = loss_terms(extractor, image, targets, grams, config)
    (fused_gradient,) = torch.autograd.grad(fused["total"], image)
    features = objective.vgg_features(extractor, image, config)
    style = style_loss(features, grams, config.layer_weights())
    plain = total_loss(features, image, targets, style, config)
    (plain_gradient,) = torch.autograd.grad(plain["total"], image)
    exact = autocast != "bfloat16"
    for name in ("content", "style", "total"):
        torch.testing.assert_close(fused[name], plain[name], rtol=0 if exact else 1e-4, atol=0)
    cosine = torch.nn.functional.cosine_similarity(
        fused_gradient.flatten(), plain_gradient.flatten(), dim=0
    )
    if exact:
        torch.testing.assert_close(
            fused_gradient, plain_gradient, rtol=1e-5, atol=1e-6 * plain_gradient.abs().max()
        )
    else:
        assert cosine > 0.999


@pytest.mark.parametrize("native", [True, False])
def test_auto_autocast_follows_native_bfloat16(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr(objective, "native_bfloat16", lambda device: native)
    expected = torch.bfloat16 if native else None
    assert autocast_dtype(GatysConfig(), torch.device("cpu")) == expected  # default "auto"
    assert autocast_dtype(GatysConfig(autocast=None), torch.device("cpu")) is None
    assert autocast_dtype(GatysConfig(autocast="float16"), torch.device("cpu")) == torch.float16


def test_content_scale_paints_at_the_given_scale_with_the_style_at_height(vgg_path: Path) -> None:
    config = _config(content_scale=0.5, iterations=2)
    stylizer = _stylizer(vgg_path, config)
    shapes: list[tuple[int, int]] = []
    stylizer.extractor.register_forward_pre_hook(
        lambda _m, args: shapes.append(tuple(args[0].shape[2:]))
    )
    out = stylizer.stylize(_content(90, 150), _style(80))
    assert out.shape == (45, 75, 3)
    assert shapes[0] == (HEIGHT, HEIGHT)  # the 80×80 style, at the config's height
    assert set(shapes[1:]) == {(45, 75)}
    assert content_working_size((40, 300), config) == (MIN_SIDE, 240)  # 20 px enlarged to 32
    assert content_working_size((40, 300), _config()) == (HEIGHT, 480)


def test_coarse_to_fine_starts_the_full_size_run_from_the_coarse_result(vgg_path: Path) -> None:
    config = _config(optimizer="adam", iterations=7, coarse_fraction=0.55, learning_rate=0.05)
    stylizer = _stylizer(vgg_path, config)
    shapes: list[tuple[int, int]] = []
    stylizer.extractor.register_forward_pre_hook(
        lambda _m, args: shapes.append(tuple(args[0].shape[2:]))
    )
    content, style = _content(), _style()
    reports: list[Progress] = []
    out = stylizer.stylize(content, style, progress=reports.append)

    assert out.shape == (HEIGHT, 96, 3)
    assert [r.step for r in reports] == list(range(1, 8))
    assert {r.total for r in reports} == {7}
    evaluated = [s for s in shapes if s not in ((HEIGHT // 2, HEIGHT // 2), (HEIGHT, HEIGHT))]
    assert evaluated == [(32, 48)] * 5 + [(HEIGHT, 96)] * 4  # content targets + evaluations
    assert reports[0].losses["content"] == 0  # the coarse stage starts from the content
    assert reports[4].losses["content"] > 0  # the fine stage from the coarse result


def test_a_diverging_objective_stops_the_run_with_the_best_image(
    vgg_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(optimizer="adam", iterations=10, learning_rate=0.05)
    stylizer = _stylizer(vgg_path, config)
    evaluated: list[torch.Tensor] = []
    stylizer.extractor.register_forward_pre_hook(
        lambda _m, args: evaluated.append(args[0].detach().clone())
    )
    real_loss_terms = gatys.loss_terms
    calls: list[int] = []

    def nan_on_the_fourth_call(*args: object) -> dict[str, torch.Tensor]:
        terms = real_loss_terms(*args)
        calls.append(1)
        if len(calls) == 4:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(gatys, "loss_terms", nan_on_the_fourth_call)
    reports: list[Progress] = []
    out = stylizer.stylize(_content(), _style(), progress=reports.append)

    assert len(calls) == 4 and len(reports) == 3  # stopped at the NaN, which is not reported
    best = min(range(3), key=lambda i: reports[i].losses["total"])
    images = evaluated[-4:]  # after the style and content target passes
    np.testing.assert_array_equal(out, gatys._to_uint8(images[best]))


def test_bfloat16_gram_products_give_float32_grams_and_bfloat16_gradients() -> None:
    """Under bfloat16 autocast the Gram products run on the bfloat16 features: the Gram is
    float32 (within bfloat16 rounding of the float32 product) and the gradient is bfloat16."""
    torch.manual_seed(0)
    features = torch.rand(1, 8, 12, 10).to(torch.bfloat16)
    features = features.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    wide = features.detach().float().requires_grad_(True)
    gram, reference = gram_matrix(features), gram_matrix(wide)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, reference, rtol=1e-2, atol=0)
    weight = torch.rand(8, 8)
    (gram * weight).sum().backward()
    (reference * weight).sum().backward()
    assert features.grad is not None and features.grad.dtype == torch.bfloat16
    torch.testing.assert_close(features.grad.float(), wide.grad, rtol=2e-2, atol=1e-4)


def test_first_convolution_runs_in_float32_under_autocast(vgg_path: Path) -> None:
    """conv1_1 computes in float32 (bfloat16 pixels would hide L-BFGS's small steps); only its
    output is rounded to bfloat16, exactly as the float32 result rounds."""
    extractor = load_vgg19_features(vgg_path, ["conv1_1", "relu2_1"])
    image = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        reference = extractor(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = extractor(image)
    assert mixed["conv1_1"].dtype == torch.bfloat16
    rounded = reference["conv1_1"].to(torch.bfloat16)
    torch.testing.assert_close(mixed["conv1_1"], rounded, rtol=0, atol=0)
    assert mixed["relu2_1"].dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        half = extractor(image)  # float16 keeps conv1_1's output float32 (Gram sums overflow)
    assert half["conv1_1"].dtype == torch.float32
    torch.testing.assert_close(half["conv1_1"], reference["conv1_1"], rtol=0, atol=0)


def test_first_convolution_gradient_is_computed_in_bfloat16_under_bfloat16(
    vgg_path: Path,
) -> None:
    """Under bfloat16 the pixels' gradient through conv1_1 is the bfloat16 product of the
    bfloat16 incoming gradient and weights, widened to float32 (not the float32 product), and
    within bfloat16 rounding of the float32 computation's gradient."""
    extractor = load_vgg19_features(vgg_path, ["conv1_1"])
    image = torch.rand(1, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    weights = torch.rand(1, 64, 32, 40, generator=torch.Generator().manual_seed(6))
    grads = []
    for dtype in (torch.bfloat16, None):
        pixels = image.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            output = extractor(pixels)["conv1_1"]
        (output.float() * weights).sum().backward()
        grads.append(pixels.grad)
    conv = extractor.features[0]
    incoming = weights.to(torch.bfloat16)
    options = (conv.stride, conv.padding)
    in_bfloat16 = conv2d_input(image.shape, conv.weight.to(torch.bfloat16), incoming, *options)
    in_float32 = conv2d_input(image.shape, conv.weight, incoming.float(), *options)
    assert grads[0] is not None and grads[0].dtype == torch.float32
    torch.testing.assert_close(grads[0], in_bfloat16.float() / extractor.std, rtol=0, atol=0)
    assert not torch.equal(grads[0], in_float32 / extractor.std)
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=2e-2 * grads[1].abs().max())


@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_relu_after_max_pool_gives_the_layer_order_maps_and_gradients(
    vgg_path: Path, autocast: str | None
) -> None:
    """A ReLU whose output no loss reads runs after the following max-pool (a quarter of the
    pixels): the maps and the pixels' gradient equal those of torchvision's layer order bit
    for bit, also where a pooled maximum is at or below zero."""
    layers = ["relu1_1", "pool2", "relu3_4", "conv4_2", "relu5_1"]
    config = GatysConfig(autocast=autocast, channels_last=True)
    extractor = load_vgg19_features(vgg_path, layers)
    order = [(type(m).__name__, n) for m, n in extractor._plan]
    assert order[2:5] == [("Conv2d", ()), ("MaxPool2d", ()), ("ReLU", ())]  # relu1_2 moved
    assert order[16:19] == [("Conv2d", ()), ("ReLU", ("relu3_4",)), ("MaxPool2d", ())]  # kept
    averaged = load_vgg19_features(vgg_path, ["relu3_1"], pooling="avg")._plan
    assert [type(m).__name__ for m, _ in averaged[2:5]] == ["Conv2d", "ReLU", "AvgPool2d"]
    names = list(get_args(VGG19Layer))
    network = extractor.in_dtype(torch.bfloat16) if autocast else extractor

    first = load_vgg19_features(vgg_path, ["conv1_1"])

    def layer_order(image: torch.Tensor) -> dict[str, torch.Tensor]:
        x, out = objective.vgg_features(first, image, config)["conv1_1"], {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            for name, module in zip(names[1:], network.features[1:], strict=False):
                x = module(x)
                if name in layers:
                    out[name] = x
        return out

    image = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    maps, grads = [], []
    for forward in (lambda x: objective.vgg_features(extractor, x, config), layer_order):
        pixels = image.clone().requires_grad_(True)
        features = forward(pixels)
        sum(f.float().sin().sum() for f in features.values()).backward()
        maps.append(features)
        grads.append(pixels.grad)
    assert (maps[0]["pool2"] <= 0).any() and (maps[0]["pool2"] > 0).any()
    for name in layers:
        torch.testing.assert_close(maps[0][name], maps[1][name], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


#: Packed weights need a CPU whose oneDNN computes bfloat16 (AVX512-BF16 or AMX: both CPU kinds
#: of this project's machines and CI); elsewhere the bfloat16 copy keeps ``nn.Conv2d``.
needs_packing = pytest.mark.skipif(
    not vgg._PackedConv2d.available(torch.device("cpu")),
    reason="this CPU's oneDNN does not compute bfloat16",
)


@needs_packing
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_packed_convolution_gives_the_convolution_and_its_input_gradient(
    layout: torch.memory_format,
) -> None:
    """A bfloat16 3×3 convolution on weights packed once: the map and the gradient to the
    input equal ``nn.Conv2d``'s and autograd's (bfloat16 tolerance), on maps of any size."""
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1).to(torch.bfloat16).requires_grad_(False)
    packed = vgg._PackedConv2d(conv)
    for height, width in ((3, 5), (17, 29), (70, 96)):
        x = torch.randn(1, 8, height, width).to(torch.bfloat16).contiguous(memory_format=layout)
        incoming = torch.randn(1, 16, height, width).to(torch.bfloat16)
        grads = []
        for module in (packed, conv):
            pixels = x.clone().requires_grad_(True)
            output = module(pixels)
            output.backward(incoming)
            grads.append((output, pixels.grad))
        (output, grad), (expected, expected_grad) = grads
        assert output.shape == expected.shape and grad is not None
        torch.testing.assert_close(output, expected)
        torch.testing.assert_close(grad, expected_grad)
    with pytest.raises(ValueError, match="not a 3x3 convolution"):
        vgg._PackedConv2d(torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))


@needs_packing
def test_bfloat16_copy_runs_its_convolutions_on_packed_weights(
    vgg_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU's bfloat16 copy packs every convolution after ``conv1_1`` (float16 copies do
    not); its objective and pixel gradient equal those of ``nn.Conv2d`` layers."""
    style_layers = ("relu1_1", "relu3_1", "relu5_1")
    config = GatysConfig(autocast="bfloat16", channels_last=True, style_layers=style_layers)
    layers = config.layers
    packed = load_vgg19_features(vgg_path, layers).to(memory_format=torch.channels_last)
    kinds = [type(m).__name__ for m, _ in packed.in_dtype(torch.bfloat16)._plan]
    assert kinds[0] == "Conv2d" and kinds.count("_PackedConv2d") == 12  # conv1_2 .. conv5_1
    float16 = [type(m).__name__ for m, _ in packed.in_dtype(torch.float16)._plan]
    assert "_PackedConv2d" not in float16
    monkeypatch.setattr(vgg._PackedConv2d, "available", staticmethod(lambda device: False))
    plain = load_vgg19_features(vgg_path, layers).to(memory_format=torch.channels_last)
    assert "_PackedConv2d" not in [
        type(m).__name__ for m, _ in plain.in_dtype(torch.bfloat16)._plan
    ]
    generator = torch.Generator().manual_seed(8)
    content, style = (torch.rand(1, 3, 48, 64, generator=generator) for _ in range(2))
    results = []
    for extractor in (packed, plain):
        with torch.no_grad():
            grams = objective.grams_of(
                objective.vgg_features(extractor, style, config), config.style_layers
            )
            targets = {"conv4_2": objective.vgg_features(extractor, content, config)["conv4_2"]}
        image = (content * 0.8 + 0.1).requires_grad_(True)
        total = loss_terms(extractor, image, targets, grams, config)["total"]
        results.append((total, torch.autograd.grad(total, image)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-3, atol=0)
    torch.testing.assert_close(
        results[0][1], results[1][1], rtol=2e-2, atol=2e-2 * results[1][1].abs().max()
    )
