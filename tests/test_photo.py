"""`segstyle stylize` on a phone photo: displayed orientation, output format, no server."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segstyle_core.demo.dataset import generate_demo_dataset
from segstyle_core.images import read_rgb

ORIENTATION = 0x0112
ROTATED_90_CW = 6  # the stored pixels must be turned 90° clockwise to be displayed


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A JPEG stored landscape (256×128) but displayed portrait (128×256), and its pixels as
    displayed."""
    root = generate_demo_dataset(
        tmp_path_factory.mktemp("demo"), size=(256, 128), frames_per_city=1, cities=("zurich",)
    )
    frame = next((root / "leftImg8bit").rglob("*.png"))
    stored = Image.open(frame).convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90_CW
    path = tmp_path_factory.mktemp("phone") / "phone.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif)
    displayed = np.asarray(stored.transpose(Image.Transpose.ROTATE_270))
    return path, displayed


def _stylize(photo: Path, output: Path, out: Path, *extra: str) -> int:
    from segstyle.flows.cli import main

    return main(
        [
            "stylize",
            str(photo),
            "--segmenter",
            "grabcut",
            "--stylizer",
            "feedforward",
            "--out",
            str(out),
            "-o",
            str(output),
            *extra,
        ]
    )


def test_a_box_in_displayed_coordinates_paints_the_displayed_photo(
    phone_photo: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    photo, displayed = phone_photo
    assert displayed.shape == (256, 128, 3)
    # y up to 250 exists only in the displayed (portrait) orientation
    status = _stylize(photo, tmp_path / "out.png", tmp_path / "work", "--box", "10,150,120,250")
    assert status == 0
    result = read_rgb(tmp_path / "out.png")
    assert result.shape == displayed.shape
    changed = np.abs(result.astype(int) - read_rgb(photo).astype(int)).sum(axis=2) > 30
    rows, cols = np.nonzero(changed)
    assert changed.any() and rows.min() >= 150 - 16 and cols.max() < 120 + 16  # inside the box


@pytest.mark.parametrize(("suffix", "magic"), [(".jpg", b"\xff\xd8"), (".webp", b"RIFF")])
def test_the_output_format_follows_the_suffix(
    phone_photo: tuple[Path, np.ndarray], tmp_path: Path, suffix: str, magic: bytes
) -> None:
    photo, displayed = phone_photo
    output = tmp_path / f"out{suffix}"
    assert _stylize(photo, output, tmp_path / "work", "--box", "10,150,120,250") == 0
    assert output.read_bytes().startswith(magic)
    assert read_rgb(output).shape == displayed.shape


def test_overwriting_the_photo_is_refused_before_any_work(
    phone_photo: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo, _ = phone_photo
    before = photo.read_bytes()
    status = _stylize(photo, photo, tmp_path / "work", "--box", "10,150,120,250")
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith(f"segstyle: error: {photo}") and "\n" not in error
    assert photo.read_bytes() == before and not (tmp_path / "work" / "cache").exists()


def test_a_device_this_machine_lacks_is_refused_before_any_work(
    phone_photo: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GrabCut and the feed-forward network compute on the CPU; a GPU asked for is checked all
    the same, not left unused without a word."""
    photo, _ = phone_photo
    output = tmp_path / "out.png"
    status = _stylize(
        photo, output, tmp_path / "work", "--box", "10,150,120,250", "--device", "cuda:99"
    )
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error
    assert error.startswith("segstyle: error: --device: device 'cuda:99'")
    assert not output.exists() and not (tmp_path / "work" / "cache").exists()


def test_stylize_needs_neither_prefect_nor_torch(
    phone_photo: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """Nor, once its stages are cached, onnx (0.55 s of import to rewrite the model's shape)."""
    import subprocess

    photo, _ = phone_photo
    code = (
        "import sys; from segstyle.flows.cli import main; "
        f"status = main(['stylize', {str(photo)!r}, '--box', '10,150,120,250', "
        "'--segmenter', 'grabcut', '--stylizer', 'feedforward', "
        f"'--out', {str(tmp_path / 'work')!r}, '-o', {str(tmp_path / 'o.png')!r}]); "
        "print(status, *(name in sys.modules for name in ('prefect', 'torch', 'onnx')))"
    )
    first, cached = (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        for _ in range(2)
    )
    assert first.stdout.split()[-4:] == ["0", "False", "False", "True"], first.stderr
    assert cached.stdout.split()[-4:] == ["0", "False", "False", "False"], cached.stderr
