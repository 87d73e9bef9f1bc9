"""The offline feed-forward stylizer (real Magenta ONNX networks) and the built-in styles."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segstyle_core import styles
from segstyle_core.errors import ConfigError, InputError
from segstyle_core.images import read_rgb
from segstyle_core.stylize.base import Progress
from segstyle_core.stylize.feedforward import FeedForwardStylizer


@pytest.fixture(scope="module")
def content() -> np.ndarray:
    """A small street-like scene, 90×130 (sides deliberately not multiples of 4)."""
    image = np.zeros((90, 130, 3), np.uint8)
    image[:] = np.linspace(200, 120, 90, dtype=np.uint8)[:, None, None]  # sky gradient
    cv2.rectangle(image, (10, 30), (60, 85), (150, 70, 50), -1)  # a house
    cv2.rectangle(image, (25, 50), (40, 70), (40, 40, 60), -1)  # its window
    cv2.circle(image, (100, 70), 15, (30, 120, 40), -1)  # a tree
    return image


@pytest.fixture(scope="module")
def style() -> np.ndarray:
    return styles.make_geometric_abstraction(size=(96, 96), seed=1)


def _stylizer(**kwargs: object) -> FeedForwardStylizer:
    return FeedForwardStylizer(style_size=64, threads=1, **kwargs)  # type: ignore[arg-type]


def test_native_size_output_is_a_stylized_image(content: np.ndarray, style: np.ndarray) -> None:
    reports: list[Progress] = []
    out = _stylizer(content_size=None).stylize(content, style, progress=reports.append)
    assert out.shape == content.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - content.astype(int)).mean() > 10
    assert reports and reports[-1].step == reports[-1].total


def test_working_height_is_content_size(content: np.ndarray, style: np.ndarray) -> None:
    stylizer = _stylizer(content_size=64)
    out = stylizer.stylize(content, style)
    assert out.shape == (64, round(130 * 64 / 90), 3)
    assert out.shape[:2] == stylizer.working_size(90, 130)


def test_strength_zero_stays_closer_to_the_content(content: np.ndarray, style: np.ndarray) -> None:
    def distance(strength: float) -> float:
        out = _stylizer(content_size=None, strength=strength).stylize(content, style)
        return float(np.abs(out.astype(int) - content.astype(int)).mean())

    assert distance(0.0) < distance(0.5) < distance(1.0)


def test_style_bottleneck_is_computed_once_per_style(
    content: np.ndarray, style: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    stylizer = _stylizer(content_size=32)
    calls: list[tuple[int, ...]] = []
    real = stylizer.bottleneck

    def counting(image: np.ndarray) -> np.ndarray:
        calls.append(image.shape)
        return real(image)

    monkeypatch.setattr(stylizer, "bottleneck", counting)
    first = stylizer.stylize(content, style)
    again = stylizer.stylize(content, style.copy())
    assert len(calls) == 1 and np.array_equal(first, again)
    stylizer.stylize(content, style[::-1].copy())
    assert len(calls) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_style_files_in_other_modes_are_converted(
    content: np.ndarray, style: np.ndarray, tmp_path: Path, mode: str
) -> None:
    image = Image.fromarray(style)
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), np.uint16) * 257
        image = Image.fromarray(gray)
    else:
        image = image.convert(mode)
    path = tmp_path / f"style_{mode.replace(';', '')}.png"
    image.save(path)
    assert Image.open(path).mode == mode
    converted = read_rgb(path)
    out = _stylizer(content_size=48).stylize(content, converted)
    assert out.shape == (48, round(130 * 48 / 90), 3) and out.dtype == np.uint8
    assert out.std() > 5


def test_bad_inputs_and_options(content: np.ndarray, style: np.ndarray) -> None:
    stylizer = _stylizer(content_size=None)
    with pytest.raises(InputError, match="minimum of 16 px a side; use a larger image"):
        stylizer.stylize(content[:8, :8], style)
    with pytest.raises(InputError, match="uint8"):
        stylizer.stylize(content.astype(np.float32), style)
    with pytest.raises(ConfigError, match="strength"):
        FeedForwardStylizer(strength=1.5)
    with pytest.raises(ConfigError, match="content_size"):
        FeedForwardStylizer(content_size=4)


def test_identity_is_stable() -> None:
    first, second = FeedForwardStylizer(), FeedForwardStylizer(strength=0.3)
    assert first.name == "feedforward" and first.variant
    assert first.weights_sha256 == second.weights_sha256
    assert len(first.weights_sha256 or "") == 64


def test_geometric_abstraction_is_deterministic_and_colourful() -> None:
    image = styles.make_geometric_abstraction(size=(80, 48), seed=5)
    assert image.shape == (48, 80, 3) and image.dtype == np.uint8
    assert np.array_equal(image, styles.make_geometric_abstraction(size=(80, 48), seed=5))
    assert not np.array_equal(image, styles.make_geometric_abstraction(size=(80, 48), seed=6))
    large = styles.make_geometric_abstraction(size=(128, 128), seed=0)
    hue = cv2.cvtColor(large, cv2.COLOR_RGB2HSV)
    saturated = hue[:, :, 1] > 120
    assert saturated.mean() > 0.1  # bold colours, not a gray picture
    # Brush texture: neighbouring pixels differ even inside flat shapes.
    assert np.abs(np.diff(large.astype(int), axis=1)).mean() > 3


def test_default_style_is_shipped_and_regenerated_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = styles.style_path()
    assert shipped.is_file() and read_rgb(shipped).shape == (512, 512, 3)
    monkeypatch.setattr(styles, "REPO_STYLE_DIR", tmp_path / "no-repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = styles.style_path()
    assert cached.is_relative_to(tmp_path / "cache")
    assert np.array_equal(read_rgb(cached), styles.make_geometric_abstraction())


def test_styles_command_writes_the_style(tmp_path: Path) -> None:
    styles.main([str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == [f"{styles.DEFAULT_STYLE}.png"]


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((16, 400), (16, 400)),  # used to run at 512×12800 (2.4 GB): never upscaled now
        ((90, 130), (90, 130)),  # smaller than the caps: native size
        ((1024, 2048), (512, 1024)),  # Cityscapes, as with the old 512 px working height
        ((4032, 3024), (836, 627)),  # a portrait phone photo
        ((600, 60000), (72, 7240)),  # extreme aspect: the pixel cap, aspect kept
        ((40000, 600), (5912, 88)),  # tall too
    ],
)
def test_working_size_is_bounded_by_pixels(
    shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    height, width = FeedForwardStylizer().working_size(*shape)
    assert (height, width) == expected
    assert height * width <= 512 * 1024 and height <= shape[0] and width <= shape[1]
    assert abs(width / height - shape[1] / shape[0]) / (shape[1] / shape[0]) < 0.02


def test_working_size_options() -> None:
    assert FeedForwardStylizer().working_size(400, 1200) == (400, 1200)
    assert FeedForwardStylizer(content_size=2000).working_size(100, 300) == (100, 300)  # no upscale
    capped = FeedForwardStylizer(content_size=64)
    assert capped.working_size(900, 1300) == (64, round(1300 * 64 / 900))
    with pytest.raises(InputError, match="crop it"):
        FeedForwardStylizer().working_size(16, 40_000)
    with pytest.raises(InputError, match="crop it"):
        FeedForwardStylizer(content_size=512).working_size(40_000, 600)  # 8 px of width left


def test_strip_image_runs_at_its_own_size(
    style: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segstyle_core.stylize import feedforward

    shapes: list[tuple[int, ...]] = []
    real_run = feedforward._run

    def recording(session: object, *inputs: np.ndarray) -> np.ndarray:
        shapes.append(inputs[0].shape)
        return real_run(session, *inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(feedforward, "_run", recording)
    strip = np.tile(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (16, 1, 3))
    out = FeedForwardStylizer(style_size=64, threads=1).stylize(strip, style)
    assert out.shape == (16, 400, 3) and out.dtype == np.uint8
    transformer_input = shapes[-1]
    assert transformer_input == (1, 16, 400, 3)  # padded to a multiple of 4, not 512 high
