"""The dataset run's Prefect artifacts: table, summary with thumbnails, links, one set per run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segstyle.flows.artifacts import artifact_key
from segstyle_core.figures import panel
from segstyle_core.images import write_png
from segstyle_core.outputs import LinkTarget
from segstyle_core.results import COLUMNS, normalise_row
from segstyle_core.run_summary import (
    ERROR_CHARS,
    TABLE_COLUMNS,
    headline_metric,
    outputs_markdown,
    summary_markdown,
    table_records,
)

BASE = "http://127.0.0.1:4201"
RUN = "crimson-owl"
LONG_ERROR = "segment: <script>x</script> | " + "very long " * 40


def _row(**values: Any) -> dict[str, Any]:
    base = {"run_id": RUN, "flow_run_id": "f-1", "status": "ok", "segmenter": "grabcut"}
    return normalise_row({**base, **values})


def _rows(out: Path, write_panels: bool = True) -> list[dict[str, Any]]:
    """Six images of 1-2 car prompts each, plus one failed image; panels under out/runs/RUN."""
    rng = np.random.default_rng(0)
    specs = {  # image id -> (image IoU, instance IoUs)
        "zurich_000000_000019": (0.91, [0.95, 0.85]),
        "zurich_000001_000019": (0.40, [0.35]),
        "zurich_000002_000019": (0.75, [0.70, 0.80]),
        "zurich_000003_000019": (0.20, [0.10]),
        "zurich_000004_000019": (0.66, [0.60]),
        "zurich_000005_000019": (0.55, [0.50, 0.45]),
    }
    rows = []
    for image_id, (image_iou, instance_ious) in specs.items():
        folder = out / "runs" / RUN / image_id
        if write_panels:
            tile = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            write_png(folder / "panel.png", panel([("original", tile)], image_id))
        for index, instance_iou in enumerate(instance_ious):
            rows.append(
                _row(
                    image_id=image_id,
                    prompt_index=index,
                    instance_class="car",
                    iou=0.0851234567890123,  # each car's mask against all the cars
                    dice=0.157,
                    iou_instance=instance_iou + 1e-9,
                    dice_instance=0.9,
                    image_iou=image_iou,
                    composite_path=str(folder / "composite.png"),
                    panel_path=str(folder / "panel.png"),
                    mask_path=str(folder / "mask.png"),
                )
            )
    rows.append(_row(image_id="zurich_000006_000019", status="failed", error=LONG_ERROR))
    return rows


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))


def test_table_rounds_and_puts_image_status_error_first(tmp_path: Path) -> None:
    records = table_records(_frame(_rows(tmp_path, write_panels=False)))
    assert list(records[0])[:3] == ["image_id", "status", "error"]
    assert all(list(r) == list(TABLE_COLUMNS) for r in records)
    # The failed image comes first, its error cut to one short line.
    assert records[0]["status"] == "failed" and records[0]["image_id"] == "zurich_000006_000019"
    error = records[0]["error"]
    assert len(error) <= ERROR_CHARS and error.endswith(("very…", "long…"))  # cut at a word
    assert records[0]["prompt"] is None and records[0]["instance_iou"] is None
    ok = records[1:]
    assert [r["image_id"] for r in ok] == sorted(r["image_id"] for r in ok)
    assert ok[0] == {
        "image_id": "zurich_000000_000019",
        "status": "ok",
        "error": None,
        "prompt": 0,
        "class": "car",
        "instance_iou": 0.95,
        "instance_dice": 0.9,
        "image_iou": 0.91,
        "iou_vs_class_gt": 0.085,
    }
    for record in records:  # no 17-digit floats anywhere
        for value in record.values():
            if isinstance(value, float):
                assert len(repr(value).split(".")[1]) <= 3, record
    json.dumps(records, allow_nan=False)  # valid JSON: no NaN


def test_summary_shows_the_worst_images_as_thumbnails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = _rows(out)
    report = out / "runs" / RUN / "report.html"
    parquet = out / "metrics" / "flow=segment_and_stylize" / "f-1.parquet"
    text = summary_markdown(
        _frame(rows),
        str(parquet),
        f"segstyle run {RUN}",
        out_root=out,
        report=report,
        base_url=BASE,
    )
    # Headlines: image IoU over images, instance IoU over prompts; the class score is labelled.
    image_ious = [0.91, 0.40, 0.75, 0.20, 0.66, 0.55]
    instance_ious = [0.95, 0.85, 0.35, 0.70, 0.80, 0.10, 0.60, 0.50, 0.45]
    assert f"**image IoU {np.mean(image_ious):.3f}**" in text
    assert f"**instance IoU {np.mean(instance_ious):.3f}**" in text
    assert "- IoU vs all GT of the class (per prompt): 0.085" in text
    assert "mean IoU" not in text
    # The four worst images by instance IoU, worst first, as clickable served thumbnails.
    images = re.findall(r"\[!\[panel of ([^\]]+)\]\((http[^)]+)\)\]\((http[^)]+)\)", text)
    assert [i[0].replace("\\_", "_") for i in images] == [
        "zurich_000003_000019",
        "zurich_000001_000019",
        "zurich_000005_000019",
        "zurich_000004_000019",
    ]
    assert images[0][1] == f"{BASE}/runs/{RUN}/zurich_000003_000019/panel.png" == images[0][2]
    assert "## Worst 4 images by instance IoU" in text
    assert f"[report.html]({BASE}/runs/{RUN}/report.html)" in text
    assert f"({BASE}/metrics/flow%3Dsegment_and_stylize/f-1.parquet)" in text
    assert "file:" not in text
    # The failure: escaped, so no HTML reaches the UI and the table keeps its columns.
    failure = next(line for line in text.splitlines() if "zurich\\_000006" in line)
    assert "<script>" not in text and "&lt;script&gt;" in failure
    assert failure.count(" | ") == 1 and "\\|" in failure


def test_summary_without_a_url_shows_paths_not_pictures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = _rows(out)
    text = summary_markdown(
        _frame(rows),
        str(out / "metrics" / "m.parquet"),
        "run",
        out_root=out,
        report=out / "runs" / RUN / "report.html",
        link_hint="no links: run segstyle serve --out /x and set SEGSTYLE_OUTPUTS_URL",
    )
    assert "![" not in text and "http" not in text and "file:" not in text
    assert f"`{(out / 'runs' / RUN / 'zurich_000003_000019' / 'panel.png').resolve()}`" in text
    assert f"`{(out / 'runs' / RUN / 'report.html').resolve()}`" in text
    # says how to get pictures, in one line
    assert text.count("no links") == 1
    assert "- no links: run segstyle serve --out /x and set SEGSTYLE\\_OUTPUTS\\_URL" in text


def test_headline_metric_falls_back_for_automatic_prompts(tmp_path: Path) -> None:
    rows = [
        _row(image_id="a", prompt_index=0, iou=0.5, image_iou=0.6),
        _row(image_id="b", prompt_index=0, iou=0.4, image_iou=0.3),
    ]
    frame = _frame(rows)
    assert headline_metric(frame) == "image_iou"
    text = summary_markdown(frame, "m.parquet", "auto", out_root=tmp_path, base_url=BASE)
    assert "## Worst 2 images by image IoU" in text
    assert re.search(r"\| b \| — \| 0\.300 \| — \|", text)  # no panel file recorded


def test_outputs_table_links_or_names_the_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    frame = _frame(_rows(out, write_panels=False))
    linked = outputs_markdown(frame, out, BASE)
    assert linked.splitlines()[0] == "| image | composite | mask | panel |"  # no stylized files
    assert f"[panel]({BASE}/runs/{RUN}/zurich_000000_000019/panel.png)" in linked
    plain = outputs_markdown(frame, out, None)
    assert "http" not in plain and "file:" not in plain
    assert f"`{(out / 'runs' / RUN / 'zurich_000000_000019').resolve()}/`" in plain


def test_artifact_keys_are_valid_and_stable() -> None:
    key = artifact_key("Crimson_Owl 2", "0f9a1c2e-2b7d-4e3a-9c1f-6d5e4b3a2f10", "metrics")
    assert key == "segstyle-crimson-owl-2-0f9a1c2e-metrics"
    assert artifact_key("x", None, "summary") == "segstyle-x-summary"
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("ünïcode/..", "f", "report"))


@pytest.mark.slow
def test_a_retried_flow_run_keeps_one_set_of_artifacts(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 publishes and fails; the retry publishes again: the flow run shows four
    artifacts, with the retry's numbers, and served links."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )
    from prefect.runtime import flow_run

    from segstyle.flows import artifacts as artifacts_module
    from segstyle.flows.artifacts import publish_artifacts

    out = tmp_path / "out"
    # the outputs server serves `out` (tests/test_links.py asks a real one)
    monkeypatch.setattr(artifacts_module, "link_target", lambda root, configured: LinkTarget(BASE))
    attempts: list[int] = []

    @flow(retries=1, retry_delay_seconds=0, persist_result=False)
    def publishing() -> str:
        attempts.append(len(attempts) + 1)
        name = flow_run.get_name()
        rows = _rows(out / "unused")  # panels elsewhere; the rows below point at this run
        rows = [
            {**r, "iou": 0.1 * len(attempts), "panel_path": str(out / "runs" / name / "p.png")}
            for r in rows
        ]
        if len(attempts) == 1:  # an older segstyle's duplicate, to be cleaned up
            key = artifact_key(name, flow_run.get_id(), "summary")
            create_markdown_artifact("old", key=key)
            create_markdown_artifact("older", key=key)
        report = out / "runs" / name / "report.html"
        publish_artifacts(rows, str(out / "metrics" / "m.parquet"), name, report, out_root=out)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return str(flow_run.get_id())

    flow_run_id = publishing()
    assert attempts == [1, 2]
    with get_client(sync_client=True) as client:
        # The flow run page's Artifacts tab: every artifact of the run that is not a result.
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(not_any_=["result"]),
            )
        )
    keys = sorted(a.key or "" for a in artifacts)
    assert len(artifacts) == 4, keys
    assert [k.rsplit("-", 1)[1] for k in keys] == ["metrics", "outputs", "report", "summary"]
    assert all(flow_run_id[:8] in k for k in keys)
    data = {a.key.rsplit("-", 1)[1]: a.data for a in artifacts if a.key}
    assert "- IoU vs all GT of the class (per prompt): 0.200" in data["summary"]  # the retry's
    table = json.loads(data["metrics"])
    assert {r["iou_vs_class_gt"] for r in table} == {0.2}
    assert re.fullmatch(rf"\[report of [^\]]+\]\({BASE}/runs/[^)]+/report\.html\)", data["report"])
