"""Issue #14: two output folders never share or break each other's results ("X/Y reproduction").

The dataset flow runs with ``out=X``, then ``out=Y``; X is deleted and the run into Y is
repeated. It completes with every row ok, nothing under Y names X (Parquet cells, cache
records, any other file), and the pictures published under ``Y/runs`` are plain files of their
own (not links into a cache). Then one cached output under Y is truncated and another is
replaced by a valid PNG with other pixels: the next run recomputes exactly those two stages and
publishes the same composites as the first run.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.flow_params import offline_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _run(root: Path, out: Path) -> pd.DataFrame:
    from segstyle.flows.dataset import segment_and_stylize

    state = segment_and_stylize(**offline_params(root, out), return_state=True)
    assert state.is_completed(), state.message
    frame = pd.read_parquet(state.result())
    assert set(frame["status"]) == {"ok"}, frame[["image_id", "error"]].drop_duplicates()
    assert frame["image_id"].nunique() == 3
    return frame


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _composites(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    from segstyle_core.images import read_rgb

    per_image = frame.drop_duplicates("image_id")
    return {r.image_id: read_rgb(r.composite_path) for r in per_image.itertuples()}


def _strings(value: Any) -> list[str]:
    """Every string inside a Parquet cell (lists and structs included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple | np.ndarray):
        return [s for v in value for s in _strings(v)]
    return []


def _references_to(old: Path, new: Path) -> list[str]:
    """Places under ``new`` that name ``old``: Parquet cells, and the bytes of every other file
    (cache records, report, logs)."""
    needles = {str(old), str(old.resolve())}
    found = []
    for path in sorted(p for p in new.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
            for column in frame.columns:
                for value in frame[column]:
                    if any(n in s for s in _strings(value) for n in needles):
                        found.append(f"{path} column {column}: {value!r}"[:300])
                        break
        elif any(n.encode() in path.read_bytes() for n in needles):
            found.append(str(path))
    return found


def _cache_file(cache: Path, stage: str, name: str, sha256: str) -> Path:
    """The one cached output ``<cache>/<stage>/**/<name>`` whose bytes have ``sha256``."""
    matches = [p for p in (cache / stage).rglob(name) if _sha256(p) == sha256]
    assert len(matches) == 1, (stage, name, matches)
    return matches[0]


def test_output_folders_are_independent_and_a_damaged_cache_is_recomputed(
    demo_root: Path, tmp_path: Path
) -> None:
    from segstyle_core.images import read_rgb, write_png

    dataset = Path(shutil.copytree(demo_root, tmp_path / "cityscapes"))
    out_x, out_y = tmp_path / "out_x", tmp_path / "out_y"

    first_x = _run(dataset, out_x)
    pixels = _composites(first_x)
    first_y = _run(dataset, out_y)
    shutil.rmtree(out_x)
    second_y = _run(dataset, out_y)

    assert _references_to(out_x, out_y) == []
    assert _references_to(out_y, out_y)  # the search does find paths where there are some
    for frame in (first_y, second_y):
        assert {k: v.tobytes() for k, v in _composites(frame).items()} == {
            k: v.tobytes() for k, v in pixels.items()
        }
    # the second run into Y found every model stage in Y's own cache
    for stage in ("gt", "segment", "stylize", "composite"):
        assert second_y[f"cached_{stage}"].all(), stage

    published = [p for p in (out_y / "runs").rglob("*") if p.is_file() or p.is_symlink()]
    assert len(published) >= 2 * 3 * 4  # two runs x three images x four pictures, plus reports
    for path in published:
        assert not path.is_symlink(), path
        info = path.lstat()
        assert info.st_nlink == 1, f"{path} has {info.st_nlink} links"

    # damage two cached outputs of Y: truncate one image's composite, repaint another's
    # stylized frame (a valid PNG of the right size, other pixels)
    images = second_y.drop_duplicates("image_id").set_index("image_id")
    truncated_id, repainted_id = images.index[0], images.index[1]
    cache = out_y / "cache"
    published_composite = Path(images.at[truncated_id, "composite_path"])
    published_stylized = Path(images.at[repainted_id, "stylized_path"])
    truncated = _cache_file(cache, "composite", "composite.png", _sha256(published_composite))
    repainted = _cache_file(cache, "stylize", "stylized.png", _sha256(published_stylized))
    originals = {truncated: _sha256(truncated), repainted: _sha256(repainted)}
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    write_png(repainted, 255 - read_rgb(repainted))
    assert _sha256(repainted) != originals[repainted]

    third_y = _run(dataset, out_y)
    by_image = third_y.drop_duplicates("image_id").set_index("image_id")
    assert not by_image.at[truncated_id, "cached_composite"]
    assert not by_image.at[repainted_id, "cached_stylize"]
    recomputed = {
        (image_id, stage)
        for image_id in by_image.index
        for stage in ("gt", "segment", "stylize", "composite")
        if not by_image.at[image_id, f"cached_{stage}"]
    }
    assert recomputed == {(truncated_id, "composite"), (repainted_id, "stylize")}
    assert {path: _sha256(path) for path in originals} == originals
    assert {k: v.tobytes() for k, v in _composites(third_y).items()} == {
        k: v.tobytes() for k, v in pixels.items()
    }
    assert _references_to(out_x, out_y) == []
