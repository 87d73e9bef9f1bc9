"""COCO RLE mask text: round trips, SAM/COCO compatibility, damaged text is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from segstyle_core.errors import InputError
from segstyle_core.rle import decode_mask, encode_mask


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blob = np.zeros((37, 53), bool)
    blob[5:30, 10:41] = True
    blob[12:20, 20:25] = False
    return [
        blob,
        rng.random((64, 48)) > 0.5,  # many short runs (negative deltas in the encoding)
        np.zeros((10, 7), bool),
        np.ones((10, 7), bool),
        np.eye(1024, 2048, dtype=bool),
        np.zeros((0, 5), bool),
        np.ones((1, 1), bool),
    ]


@pytest.mark.parametrize("mask", _masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}")
def test_round_trip(mask: np.ndarray) -> None:
    text = encode_mask(mask)
    decoded = decode_mask(text)
    assert decoded.dtype == bool and decoded.shape == mask.shape
    assert np.array_equal(decoded, mask)
    rle = json.loads(text)
    assert rle["size"] == list(mask.shape) and isinstance(rle["counts"], str)
    assert np.array_equal(decode_mask(rle), mask)  # the parsed object works too


def test_format_is_what_coco_tools_read() -> None:
    mask = _masks()[0]
    rle = json.loads(encode_mask(mask))
    rle["counts"] = rle["counts"].encode()
    assert np.array_equal(mask_utils.decode(rle).astype(bool), mask)
    assert mask_utils.area(rle) == mask.sum()


def test_uncompressed_counts_and_non_bool_input() -> None:
    # 2x3, column-major runs: 1 outside, 2 inside, 3 outside.
    mask = decode_mask({"size": [2, 3], "counts": [1, 2, 3]})
    assert mask.tolist() == [[False, True, False], [True, False, False]]
    assert np.array_equal(decode_mask(encode_mask(mask.astype(np.uint8) * 255)), mask)


def test_large_mask_text_is_small() -> None:
    mask = np.zeros((1024, 2048), bool)
    mask[400:700, 300:900] = True
    assert len(encode_mask(mask)) < 2000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"size": [3, 4]}', '"size" and "counts"'),
        ('{"size": [3], "counts": "<"}', "height, width"),
        ('{"size": [3, 4], "counts": ""}', "cover 0 pixels"),
        ('{"size": [3, 4], "counts": "0001"}', "damaged"),
        ('{"size": [3, 4], "counts": "zzzz"}', "contain"),
        ('{"size": [3, 4], "counts": "o"}', "middle of a run"),
        ('{"size": [2, 3], "counts": [1, 2]}', "cover 3 pixels"),
        ('{"size": [2, 3], "counts": 6}', "string or a list"),
    ],
)
def test_damaged_text_is_refused(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_mask(text)


def test_three_d_mask_is_refused() -> None:
    with pytest.raises(InputError, match="H×W"):
        encode_mask(np.zeros((2, 3, 3), bool))
