"""The static HTML run report: numbers, escaping, offline links, and a real headless browser."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segstyle_core.errors import ConfigError
from segstyle_core.figures import panel
from segstyle_core.images import write_png
from segstyle_core.report import rank_images, write_report
from segstyle_core.results import COLUMNS, normalise_row

CHROMIUM = "/usr/bin/chromium"
ERROR = "segment: <script>alert('x')</script> mask & box don't match"
CONFIG = {"classes": ["car", "person"], "segmenter": "grabcut", "note": "<b>not bold</b>"}


class _Page(HTMLParser):
    """Collects the table cells (as text rows) and the ``<img src>`` values of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def _row(**values: Any) -> dict[str, Any]:
    base = {
        "run_id": "test-run",
        "flow_run_id": "f-1",
        "city": "zurich",
        "split": "train",
        "classes": "car,person",
        "segmenter": "grabcut",
        "stylizer": "feedforward",
        "style_name": "mosaic",
        "mode": "object",
        "status": "ok",
        "prompt_kind": "box",
        "prompt_box": [1.0, 2.0, 30.0, 20.0],
        "prompt_points": [],
        "seconds_segment": 0.5,
        "seconds_stylize": 2.0,
        "started_at": pd.Timestamp("2026-01-01T10:00:00Z"),
        "finished_at": pd.Timestamp("2026-01-01T10:01:40Z"),
    }
    return normalise_row({**base, **values})


@pytest.fixture()
def run(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A run folder with real panel PNGs and a results table like a dataset flow writes."""
    run_dir = tmp_path / "runs" / "test-run"
    rng = np.random.default_rng(0)
    specs = [  # image id, class, IoU, Dice, panel written?
        ("zurich_000000_000019", "car", 0.81, 0.895, True),
        ("zurich_000000_000019", "person", 0.42, 0.59, True),
        ("zurich_000001_000019", "car", 0.66, 0.795, True),
        ("zurich_000002_000019", "car", float("nan"), float("nan"), True),  # empty GT and mask
        ("zurich_000003_000019", "person", 0.30, 0.46, False),  # its panel file is gone
    ]
    rows = []
    for index, (image_id, cls, iou, dice, has_panel) in enumerate(specs):
        path = run_dir / image_id / "panel.png"
        if has_panel and not path.exists():
            tile = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            write_png(path, panel([("original", tile)], f"{image_id} IoU {iou:.3f}"))
        rows.append(
            _row(
                image_id=image_id,
                prompt_index=index % 2,
                instance_class=cls,
                iou=iou,
                dice=dice,
                iou_instance=1.0 - iou,  # instance and class scores rank differently
                panel_path=str(path),
                seconds_figures=0.5,
            )
        )
    rows.append(
        _row(image_id="zurich_000004_000019", status="failed", error=ERROR, prompt_kind=None)
    )
    return run_dir, pd.DataFrame(rows, columns=list(COLUMNS))


def test_report_summary_numbers_match_the_rows(run: tuple[Path, pd.DataFrame]) -> None:
    run_dir, rows = run
    path = write_report(run_dir, rows, CONFIG, "Run <test>")
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    cells = " ".join(" | ".join(r) for r in page.rows)
    assert "<title>Run &lt;test&gt;</title>" in text
    for label, value in [("images", 5), ("rows", 6), ("failed rows", 1), ("failed images", 1)]:
        assert re.search(rf">{label}<b>{value}</b>", text), label
    ious = {"car": [0.81, 0.66], "person": [0.42, 0.30]}
    dices = {"car": [0.895, 0.795], "person": [0.59, 0.46]}
    rows_per_class = {"car": 3, "person": 2}  # car also has the NaN row
    for cls, values in ious.items():
        expected = [
            cls,
            "grabcut",
            str(rows_per_class[cls]),
            "0",
            "—",  # no row has an image IoU
            f"{np.mean([1.0 - v for v in values]):.3f}",  # instance IoU is 1 - IoU here
            "—",  # no row has an instance Dice
            f"{np.mean(values):.3f}",
            f"{np.mean(dices[cls]):.3f}",
        ]
        assert expected in page.rows, cls
    overall = np.mean([v for vs in ious.values() for v in vs])
    assert re.search(rf">IoU vs all GT of the class \(per prompt\)<b>{overall:.3f}</b>", text)
    # Stage times count once per image: four images timed the figures stage at 0.5 s each
    # (000000 has two rows), all five the segmenter.
    assert ["figures", "4", "2.0", "0.50"] in page.rows
    assert ["segment", "5", "2.5", "0.50"] in page.rows
    assert "100.0 s" in text  # 10:00:00 to 10:01:40
    # Histograms: one per class of the ok rows; the NaN row is counted apart.
    assert text.count("<svg") == 2
    assert "car: 2 scored, 1 without IoU vs all GT of the class" in text
    assert "zurich_000004_000019" in cells


def test_report_escapes_data_and_stays_offline(run: tuple[Path, pd.DataFrame]) -> None:
    run_dir, rows = run
    text = write_report(run_dir, rows, CONFIG, "run").read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "<b>not bold</b>" not in text and "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)=["']?(//|file:|/)""", text)  # relative links only


def test_images_are_ranked_by_their_mean_score(run: tuple[Path, pd.DataFrame]) -> None:
    _, rows = run
    # Mean IoU per scored image: 000003 0.30, 000000 (0.81 + 0.42) / 2, 000001 0.66;
    # 000002 has no IoU and the failed 000004 no score at all.
    ranked = rank_images(rows)
    assert ranked["image_id"].str[7:13].tolist() == ["000003", "000000", "000001"]
    assert ranked["score"].tolist() == pytest.approx([0.30, (0.81 + 0.42) / 2, 0.66])
    assert ranked["prompts"].tolist() == [1, 2, 1]
    assert ranked["classes"].tolist()[1] == "car, person"
    by_instance = rank_images(rows, metric="iou_instance")
    assert by_instance["image_id"].str[7:13].tolist() == ["000001", "000000", "000003"]
    with pytest.raises(ConfigError, match="metric"):
        write_report(Path("unused"), rows, {}, "x", metric="accuracy")


def test_report_images_exist_relative_to_the_report(run: tuple[Path, pd.DataFrame]) -> None:
    run_dir, rows = run
    path = write_report(run_dir, rows, CONFIG, "run", examples=2)
    text = path.read_text(encoding="utf-8")
    page = _parse(text)
    # Worst two: 000003 (its panel is gone), 000000; best of the rest: 000001. Each image once.
    assert page.images == ["zurich_000000_000019/panel.png", "zurich_000001_000019/panel.png"]
    assert all((run_dir / src).is_file() for src in page.images)
    assert "no panel image for this image" in text
    one = _parse(write_report(run_dir, rows, CONFIG, "run", examples=1).read_text("utf-8"))
    assert one.images == ["zurich_000001_000019/panel.png"]


def test_report_of_empty_and_all_failed_runs(tmp_path: Path) -> None:
    failed = pd.DataFrame([_row(image_id="a", status="failed", error="boom")])
    text = write_report(tmp_path, failed, {}, "failed run").read_text(encoding="utf-8")
    assert "No scored images." in text and "boom" in text
    empty = pd.DataFrame(columns=list(COLUMNS))
    text = write_report(tmp_path, empty, {}, "empty run").read_text(encoding="utf-8")
    assert re.search(r">images<b>0</b>", text) and "No failures." in text


def test_report_renders_in_headless_chromium(
    run: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    """Open report.html from disk in Debian's Chromium: no errors, every image decoded."""
    assert shutil.which(CHROMIUM), "chromium not installed: run `make chromium`"
    from playwright import sync_api

    run_dir, rows = run
    report = write_report(run_dir, rows, CONFIG, "segstyle run test-run")
    problems: list[str] = []
    external: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on(
                "request", lambda r: None if r.url.startswith("file://") else external.append(r.url)
            )
            page.goto(report.as_uri(), wait_until="load")
            page.evaluate("Promise.allSettled([...document.images].map(i => i.decode()))")
            sizes = page.evaluate("[...document.images].map(i => [i.naturalWidth, i.complete])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert external == []
    assert len(sizes) == 2  # three scored images, one of which has lost its panel
    assert all(width > 0 and complete for width, complete in sizes)
    assert (tmp_path / "report.png").stat().st_size > 0


def test_report_headlines_are_image_and_instance_iou(tmp_path: Path) -> None:
    """Image IoU and instance IoU lead the summary; the per-prompt class IoU says what it is."""
    rows = []
    for image_id, image_iou, instance_ious in [("a", 0.9, [0.8, 0.6]), ("b", 0.5, [0.4])]:
        for index, instance_iou in enumerate(instance_ious):
            rows.append(
                _row(
                    image_id=image_id,
                    prompt_index=index,
                    instance_class="car",
                    iou=0.085,
                    dice=0.16,
                    iou_instance=instance_iou,
                    image_iou=image_iou,
                )
            )
    text = write_report(tmp_path, pd.DataFrame(rows), {}, "run").read_text("utf-8")
    cards = re.findall(r'<div class="stat( headline)?">([^<]+)<b>([^<]+)</b>', text)
    # image IoU is a mean over images (0.9, 0.5), not over prompt rows (0.9, 0.9, 0.5).
    assert cards[:2] == [
        (" headline", "image IoU", "0.700"),
        (" headline", "instance IoU", "0.600"),
    ]
    assert ("", "IoU vs all GT of the class (per prompt)", "0.085") in cards
    assert "not a measure of mask quality" in text
    ranked = rank_images(pd.DataFrame(rows), metric="image_iou")
    assert ranked["image_id"].tolist() == ["b", "a"]
