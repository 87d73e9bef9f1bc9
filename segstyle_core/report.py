"""The static HTML report of one dataset run, ``<run_dir>/report.html``: inline CSS and SVG,
panels linked relative to it (the run folder can be opened from disk, served or moved); every
value from the rows or the configuration is HTML-escaped."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from segstyle_core.errors import ConfigError
from segstyle_core.fileio import atomic_write
from segstyle_core.results import COLUMNS

#: Number of IoU histogram bins over [0, 1].
HISTOGRAM_BINS = 10

#: Score columns the report ranks and plots by: column -> (label, matching Dice column).
METRICS = {
    "image_iou": ("image IoU", "image_dice"),
    "iou_instance": ("instance IoU", "dice_instance"),
    "iou": ("IoU vs all GT of the class", "dice"),
}

CLASS_IOU_LABEL = "IoU vs all GT of the class (per prompt)"

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1280px;
       padding: 0 16px; color: #1b1b1b; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } th { background: #f4f4f4; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.stats, .hists { display: flex; gap: 12px; flex-wrap: wrap; }
.stat { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.stat b { display: block; font-size: 20px; }
.stat.headline { border-color: #4a7bd0; } .stat.headline b { font-size: 24px; }
.note { color: #555; max-width: 900px; } .missing { color: #888; font-style: italic; }
figure { margin: 12px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
figure img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 12px; overflow-x: auto; }
td.error { font-family: ui-monospace, monospace; white-space: pre-wrap; color: #a00; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def _missing(value: Any) -> bool:
    """True for None, NaN, NA and NaT (a list is never missing)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _e(value: Any) -> str:
    """HTML-escaped text of a cell; missing: an em dash."""
    return "—" if _missing(value) else html.escape(str(value))


def number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; missing or infinite: an em dash."""
    return "—" if _missing(value) or not math.isfinite(float(value)) else f"{value:.{digits}f}"


def _table(header: Sequence[str], css: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """An HTML table of already-escaped cells; ``css``: each column's class ("": none)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    tds = [f'<td class="{c}">' if c else "<td>" for c in css]
    body = "".join(
        "<tr>" + "".join(f"{td}{cell}</td>" for td, cell in zip(tds, row, strict=True)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def class_of(rows: pd.DataFrame) -> pd.Series:
    """The class each row scores: the prompt's instance class, else the requested classes."""
    return rows["instance_class"].fillna(rows["classes"]).fillna("(none)").astype(str)


def image_mean(rows: pd.DataFrame, column: str) -> float:
    """Mean of a per-image column (every prompt row of an image repeats it)."""
    return float(rows.groupby("image_id")[column].first().astype(float).mean())


_SUMMARY_NOTE = (
    "<b>image IoU</b>: the union of an image's masks against all ground truth of its classes, "
    "averaged over images. <b>instance IoU</b>: each prompt's mask against its own ground-truth "
    f"instance, averaged over prompts. <b>{CLASS_IOU_LABEL}</b>: each prompt's mask against "
    "every ground-truth pixel of its class, so it stays low whenever an image holds several "
    "instances; it is not a measure of mask quality."
)


def _summary(rows: pd.DataFrame) -> str:
    failed = rows["status"].eq("failed")
    stats = [  # (CSS class, label, value)
        (" headline", "image IoU", number(image_mean(rows, "image_iou"))),
        (" headline", "instance IoU", number(rows["iou_instance"].mean())),
        ("", "images", str(rows["image_id"].nunique())),
        ("", "rows", str(len(rows))),
        ("", "failed rows", str(int(failed.sum()))),
        ("", "failed images", str(rows.loc[failed, "image_id"].nunique())),
        ("", CLASS_IOU_LABEL, number(rows["iou"].mean())),
    ]
    cards = "".join(f'<div class="stat{c}">{html.escape(k)}<b>{v}</b></div>' for c, k, v in stats)
    grouped = rows.assign(_failed=failed, segmenter=rows["segmenter"].fillna("(none)")).groupby(
        ["_class", "segmenter"], sort=True
    )
    lines = [
        [_e(cls), _e(segmenter), str(len(group)), str(int(group["_failed"].sum()))]
        + [number(image_mean(group, "image_iou"))]
        + [number(group[c].mean()) for c in ("iou_instance", "dice_instance", "iou", "dice")]
        for (cls, segmenter), group in grouped
    ]
    header = ["class", "segmenter", "rows", "failed", "image IoU", "instance IoU"]
    header += ["instance Dice", "IoU vs all GT of the class", "Dice vs all GT of the class"]
    return (
        f'<div class="stats">{cards}</div>\n<p class="note">{_SUMMARY_NOTE}</p>\n'
        f"{_table(header, ['', ''] + ['num'] * 7, lines)}"
    )


def _timing(rows: pd.DataFrame) -> str:
    """Seconds per stage, counted once per image (an image's prompt rows repeat its times)."""
    per_image = rows.filter(regex="^seconds_").groupby(rows["image_id"]).first()
    lines = [
        [_e(column.removeprefix("seconds_")), str(int(seconds.notna().sum()))]
        + [number(seconds.sum(min_count=1), 1), number(seconds.mean(), 2)]
        for column, seconds in per_image.items()
    ]
    header = ["stage", "images timed", "total s", "mean s per image"]
    table = _table(header, ["", "num", "num", "num"], lines)
    started, finished = rows["started_at"].min(), rows["finished_at"].max()
    if _missing(started) or _missing(finished):
        return table
    wall = (pd.Timestamp(finished) - pd.Timestamp(started)).total_seconds()
    return f"<p>Wall time from first start to last finish: {wall:.1f} s.</p>\n{table}"


def iou_histogram_svg(values: Sequence[float], title: str, label: str = "IoU") -> str:
    """An inline 320×150 px SVG bar chart of scores in [0, 1] in :data:`HISTOGRAM_BINS` bins;
    NaN values are counted in the caption, each bar shows its count (tooltip
    ``"<label> 0.8–0.9: <n>"``)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    width, height, left, top, axis_y = 320, 150, 28, 16, 128  # tick labels below axis_y
    plot_w, plot_h, peak = width - left - 8, axis_y - top, max(int(counts.max()), 1)
    bar_w = plot_w / HISTOGRAM_BINS
    parts = []
    for index, (count, lo, hi) in enumerate(zip(counts, edges[:-1], edges[1:], strict=True)):
        bar_h = plot_h * count / peak
        x, y = left + index * bar_w, axis_y - bar_h
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{bar_h:.1f}" '
            f'fill="#4a7bd0"><title>{html.escape(label)} {lo:.1f}–{hi:.1f}: {count}</title></rect>'
        )
        if count:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle">{count}</text>'
            )
    for tick in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left + tick * plot_w:.1f}" y="{axis_y + 14}" '
            f'text-anchor="middle">{tick:.1f}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#333"/>'
    )
    dropped = len(array) - len(finite)
    caption = f"{title}: {len(finite)} scored" + (f", {dropped} without {label}" if dropped else "")
    return (
        f"<figure><figcaption>{html.escape(caption)}</figcaption>"
        f'<svg width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(caption)}">{"".join(parts)}</svg></figure>'
    )


def _histograms(rows: pd.DataFrame, metric: str) -> str:
    """One histogram per class over the ``ok`` rows (failed rows have no score to show)."""
    label = METRICS[metric][0]
    by_class = rows[rows["status"].eq("ok")].groupby("_class", sort=True)[metric]
    charts = "".join(iou_histogram_svg(v.tolist(), str(cls), label) for cls, v in by_class)
    return f'<div class="hists">{charts}</div>'


def rank_images(rows: pd.DataFrame, metric: str = "iou") -> pd.DataFrame:
    """One line per image with a score (``ok`` rows), worst mean ``metric`` first, then by id:
    ``image_id``, ``classes`` (comma-joined), ``prompts``, ``score`` (mean ``metric``), ``dice``
    (mean of the matching Dice column) and ``panel_path`` (the first row's)."""
    scored = rows[rows["status"].eq("ok") & rows[metric].notna()]
    grouped = scored.assign(_class=class_of(scored)).groupby("image_id", sort=True)
    ranked = grouped.agg(
        classes=("_class", lambda v: ", ".join(sorted(set(v)))),
        prompts=("image_id", "size"),
        score=(metric, "mean"),
        dice=(METRICS[metric][1], "mean"),
        panel_path=("panel_path", "first"),
    ).reset_index()
    return ranked.sort_values(["score", "image_id"], kind="stable").reset_index(drop=True)


def _examples(images: pd.DataFrame, run_dir: Path, label: str, empty: str) -> str:
    if images.empty:
        return f'<p class="missing">{html.escape(empty)}</p>'
    figures = []
    for row in images.to_dict(orient="records"):
        heading = (
            f"{_e(row['image_id'])} · {_e(row['classes'])} · {row['prompts']} prompt(s) · "
            f"mean {label} {number(row['score'])} · "
            f"mean {label.replace('IoU', 'Dice')} {number(row['dice'])}"
        )
        # a relative panel_path is taken from the current directory, as the flow wrote it
        panel = None if _missing(row["panel_path"]) else Path(str(row["panel_path"])).resolve()
        if panel is not None and panel.is_file():
            src = html.escape(quote(Path(os.path.relpath(panel, run_dir.resolve())).as_posix()))
            body = f'<a href="{src}"><img src="{src}" alt="panel of {_e(row["image_id"])}"></a>'
        else:
            body = '<p class="missing">no panel image for this image</p>'
        figures.append(f"<figure><figcaption>{heading}</figcaption>{body}</figure>")
    return "\n".join(figures)


def _failures(rows: pd.DataFrame) -> str:
    failed = rows[rows["status"].eq("failed")]
    if failed.empty:
        return "<p>No failures.</p>"
    lines = [
        [_e(r["image_id"]), number(r["prompt_index"], 0), _e(r["error"])]
        for r in failed.to_dict(orient="records")
    ]
    return _table(["image", "prompt", "error"], ["", "num", "error"], lines)


def write_report(
    run_dir: Path,
    rows: pd.DataFrame,
    config: Mapping[str, Any],
    title: str,
    examples: int = 6,
    metric: str = "iou",
) -> Path:
    """Write ``run_dir/report.html`` atomically and return its path: the run's ``rows``
    (:data:`segstyle_core.results.SCHEMA`), the ``examples`` worst and best images (each once)
    by ``metric`` (:data:`METRICS`, also the histograms' score). ConfigError: unknown ``metric``
    or negative ``examples``."""
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r}: choose one of {', '.join(METRICS)}")
    if examples < 0:
        raise ConfigError(f"examples={examples}: must be 0 or more")
    rows = rows.reindex(columns=list(dict.fromkeys([*rows.columns, *COLUMNS])))
    rows = rows.assign(_class=class_of(rows)).reset_index(drop=True)
    label = METRICS[metric][0]
    ranked = rank_images(rows, metric)
    worst = ranked.head(examples)
    best = ranked.drop(worst.index).iloc[::-1].head(examples)
    config_json = json.dumps(config, indent=2, sort_keys=True, default=str)
    sections = [
        ("Summary", _summary(rows)),
        ("Run time per stage", _timing(rows)),
        (f"{label} distribution per class", _histograms(rows, metric)),
        (f"Worst images by mean {label}", _examples(worst, run_dir, label, "No scored images.")),
        (
            f"Best images by mean {label}",
            _examples(best, run_dir, label, "No more scored images: all are shown above."),
        ),
        ("Failures", _failures(rows)),
        ("Configuration", f"<pre>{html.escape(config_json)}</pre>"),
    ]
    body = "\n".join(f"<h2>{html.escape(name)}</h2>\n{content}" for name, content in sections)
    text = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
    target = run_dir / "report.html"
    with atomic_write(target, "wb") as handle:
        handle.write(text.encode("utf-8"))
    return target
