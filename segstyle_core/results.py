"""The per-image results table: its Parquet schema and the atomic, one-file-per-run writer.

Layout: ``<metrics_dir>/flow=<flow name>/<flow_run_id>.parquet``. Every flow run writes exactly
one file (temp file, then rename), so concurrent runs never share a file, a retried run
replaces its own file instead of adding rows, and ``pandas.read_parquet(metrics_dir)`` reads
every run (the hive partition adds a ``flow`` column).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from segstyle_core.errors import InputError
from segstyle_core.fileio import atomic_write_with

#: 2: added ``image_iou``/``image_dice``. 3: added ``mask_rle`` and
#: ``cached_<stage>``. Files of older versions read
#: with the columns they lack empty (see :func:`read_metrics`).
SCHEMA_VERSION = 3

_STAGES = ("gt", "segment", "stylize", "composite", "figures")

#: One row per image and prompt (an image that failed before prompting has one row).
SCHEMA = pa.schema(
    [
        ("schema_version", pa.int16()),
        ("run_id", pa.string()),  # human-readable flow run name
        ("flow_run_id", pa.string()),
        ("image_id", pa.string()),
        ("city", pa.string()),
        ("split", pa.string()),
        ("classes", pa.string()),  # comma-joined, lower case: "car,person"
        ("prompt_index", pa.int32()),
        ("prompt_kind", pa.string()),  # box | points | box+points | auto
        ("prompt_box", pa.list_(pa.float64())),  # XYXY, original pixels
        ("prompt_points", pa.list_(pa.list_(pa.float64()))),  # [[x, y, label], ...]
        ("instance_id", pa.int64()),
        ("instance_class", pa.string()),
        ("segmenter", pa.string()),
        ("segmenter_variant", pa.string()),
        ("segmenter_weights_sha256", pa.string()),
        ("segment_notes", pa.string()),
        ("stylizer", pa.string()),
        ("stylizer_variant", pa.string()),
        ("stylizer_weights_sha256", pa.string()),
        ("style_name", pa.string()),
        ("style_sha256", pa.string()),
        ("mode", pa.string()),
        ("mask_score", pa.float64()),
        ("iou", pa.float64()),
        ("dice", pa.float64()),
        ("precision", pa.float64()),
        ("recall", pa.float64()),
        ("iou_instance", pa.float64()),
        ("dice_instance", pa.float64()),
        ("precision_instance", pa.float64()),
        ("recall_instance", pa.float64()),
        ("image_iou", pa.float64()),  # union of the image's masks vs the class GT
        ("image_dice", pa.float64()),
        ("pred_area", pa.int64()),
        ("gt_area", pa.int64()),
        ("instance_area", pa.int64()),
        # seconds spent on each stage in this run (a cache hit: the lookup) and whether the
        # stage's result came from the run folder's cache
        *[(f"seconds_{stage}", pa.float64()) for stage in _STAGES],
        *[(f"cached_{stage}", pa.bool_()) for stage in _STAGES],
        ("status", pa.string()),  # ok | failed
        ("error", pa.string()),
        ("image_path", pa.string()),
        ("mask_path", pa.string()),
        # the prompt's own mask as COCO RLE JSON ({"size": [H, W], "counts": str}; SAM's
        # coco_rle format): segstyle_core.rle.decode_mask or pycocotools.mask.decode reads it
        ("mask_rle", pa.string()),
        ("stylized_path", pa.string()),
        ("composite_path", pa.string()),
        ("panel_path", pa.string()),
        ("config_sha256", pa.string()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
    ]
)

COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing columns with nulls and reject unknown ones (a typo must not vanish)."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}; add them to results.SCHEMA")
    full = {name: row.get(name) for name in COLUMNS}
    full["schema_version"] = SCHEMA_VERSION
    return full


def run_file(metrics_dir: str | os.PathLike[str], flow_name: str, flow_run_id: str) -> Path:
    """The one Parquet file that belongs to a flow run."""
    return Path(metrics_dir) / f"flow={flow_name}" / f"{flow_run_id}.parquet"


def write_run(
    rows: Sequence[Mapping[str, Any]],
    metrics_dir: str | os.PathLike[str],
    flow_name: str,
    flow_run_id: str,
) -> Path:
    """Write (or atomically replace) the Parquet file of one flow run; return its path."""
    table = pa.Table.from_pylist([normalise_row(r) for r in rows], schema=SCHEMA)
    target = run_file(metrics_dir, flow_name, flow_run_id)
    return atomic_write_with(target, lambda tmp: pq.write_table(table, tmp))


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one run file or a whole metrics directory into a DataFrame.

    Files of every schema version are read against the current :data:`SCHEMA` (columns a file
    lacks come back empty), plus the hive partition column ``flow``. Plain
    ``pandas.read_parquet(dir)`` works too but takes its columns from the first file it finds.

    Raises:
        InputError: nothing there yet.
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.rglob("*.parquet"))):
        raise InputError(f"{path}: no Parquet results here yet; run `segstyle run` first")
    schema = SCHEMA.append(pa.field("flow", pa.string()))
    dataset = ds.dataset(path, schema=schema, format="parquet", partitioning="hive")
    return dataset.to_table().to_pandas()


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per segmenter/stylizer/class summary: rows, images, failures, mean scores, seconds.

    Scores are means over prompt rows (``image_iou`` over images); seconds are means over
    images, since every prompt row of an image repeats that image's stage times.
    """
    keys = ["segmenter", "stylizer", "classes"]
    rows = frame.assign(failed=frame["status"].eq("failed"))
    scores = rows.groupby(keys, dropna=False).agg(
        rows=("image_id", "size"),
        images=("image_id", "nunique"),
        failed=("failed", "sum"),
        mean_iou=("iou", "mean"),
        mean_dice=("dice", "mean"),
        mean_iou_instance=("iou_instance", "mean"),
    )
    per_image = (
        rows.drop_duplicates(["flow_run_id", "image_id"])
        .groupby(keys, dropna=False)
        .agg(
            mean_image_iou=("image_iou", "mean"),
            seconds_segment=("seconds_segment", "mean"),
            seconds_stylize=("seconds_stylize", "mean"),
        )
    )
    return scores.join(per_image).reset_index()
