"""Issue #14.7: every result row's ``mask_rle`` is the mask its scores were computed from.

One small offline run (GrabCut, feed-forward, a prompt per GT instance of cars and persons,
the 256×128 demo data), then, per row: decode ``mask_rle``, score it again against the row's
own GT instance (matched by ``instance_id``) and against the class ground truth, and compare
with the stored scores; per image: ``mask_path`` (the published used mask) is the union of the
image's row masks.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.flow_params import offline_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

CLASSES = ("car", "person")


@pytest.fixture(scope="module")
def rows(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The Parquet rows of one offline run over a private copy of the demo data."""
    from segstyle.flows.dataset import segment_and_stylize

    base = tmp_path_factory.mktemp("rows-rle")
    dataset = Path(shutil.copytree(demo_root, base / "cityscapes"))
    state = segment_and_stylize(
        **offline_params(dataset, base / "out", classes=CLASSES), return_state=True
    )
    assert state.is_completed(), state.message
    return pd.read_parquet(state.result())


def _frame(image_path: str) -> Any:
    from segstyle_core.cityscapes import frame_from_image_path

    return frame_from_image_path(image_path)


def test_run_has_prompt_rows_for_both_classes(rows: pd.DataFrame) -> None:
    assert set(rows["status"]) == {"ok"}, rows[["image_id", "error"]]
    assert rows["mask_rle"].notna().all()
    assert rows["instance_id"].notna().all()
    assert set(rows["instance_class"]) == set(CLASSES)  # the demo frames hold both
    assert rows["image_id"].nunique() == 3


def test_each_row_rle_reproduces_its_stored_scores(rows: pd.DataFrame) -> None:
    from segstyle_core.cityscapes import load_gt, load_instances
    from segstyle_core.metrics import score_masks
    from segstyle_core.rle import decode_mask

    checked = 0
    for image_path, group in rows.groupby("image_path"):
        frame = _frame(str(image_path))
        instances = {i.instance_id: i for i in load_instances(frame, list(CLASSES))}
        class_mask = load_gt(frame, list(CLASSES)).mask
        for row in group.itertuples():
            mask = decode_mask(row.mask_rle)
            assert mask.shape == class_mask.shape, (row.image_id, row.prompt_index)
            assert int(mask.sum()) == row.pred_area, (row.image_id, row.prompt_index)
            instance = instances[int(row.instance_id)]
            assert instance.class_name == row.instance_class
            own = score_masks(mask, instance.mask)
            where = f"{row.image_id} prompt {row.prompt_index} (instance {row.instance_id})"
            assert own.iou == pytest.approx(row.iou_instance, abs=1e-9), where
            assert own.dice == pytest.approx(row.dice_instance, abs=1e-9), where
            assert own.gt_area == row.instance_area, where
            whole = score_masks(mask, class_mask)
            assert whole.iou == pytest.approx(row.iou, abs=1e-9), where
            assert whole.gt_area == row.gt_area, where
            checked += 1
    assert checked == len(rows)


def test_mask_path_is_the_union_of_the_row_masks(rows: pd.DataFrame) -> None:
    from segstyle_core.cityscapes import load_gt
    from segstyle_core.images import read_mask
    from segstyle_core.metrics import score_masks
    from segstyle_core.rle import decode_mask

    for image_id, group in rows.groupby("image_id"):
        paths = group["mask_path"].unique()
        assert len(paths) == 1, (image_id, paths)
        used = read_mask(paths[0])
        union = np.zeros_like(used)
        for text in group["mask_rle"]:
            union |= decode_mask(text)
        assert used.shape == union.shape, image_id
        differing = int(np.count_nonzero(used != union))
        assert differing == 0, f"{image_id}: mask_path differs from the RLE union in {differing} px"
        class_mask = load_gt(_frame(group["image_path"].iloc[0]), list(CLASSES)).mask
        image = score_masks(union, class_mask)
        assert group["image_iou"].eq(group["image_iou"].iloc[0]).all()
        assert image.iou == pytest.approx(group["image_iou"].iloc[0], abs=1e-9), image_id
