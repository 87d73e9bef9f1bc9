"""A run's results as the Prefect artifacts' markdown and table rows, and as the text of
``segstyle results`` (:func:`run_text`). Links are ``segstyle serve`` URLs with a ``base_url``
(:func:`segstyle_core.outputs.output_link`), else file paths as code (no ``file://``)."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from segstyle_core import results
from segstyle_core.errors import SegstyleError, one_line
from segstyle_core.outputs import is_url, output_link
from segstyle_core.report import CLASS_IOU_LABEL, image_mean, number, rank_images
from segstyle_core.results import COLUMNS

#: Table artifact column -> results column.
TABLE_COLUMNS = {
    "image_id": "image_id",
    "status": "status",
    "error": "error",
    "prompt": "prompt_index",
    "class": "instance_class",
    "instance_iou": "iou_instance",
    "instance_dice": "dice_instance",
    "image_iou": "image_iou",
    "iou_vs_class_gt": "iou",
}

DIGITS = 3  # decimals of the table's scores
ERROR_CHARS = 80  # longest error in a table cell (the summary and the Parquet keep it whole)
THUMBNAILS = 4  # worst images the summary shows

#: Headline labels, each with what it compares.
LABELS = {
    "image_iou": ("image IoU", "union of an image's masks vs all GT of its classes"),
    "iou_instance": ("instance IoU", "each prompt's mask vs its own GT instance"),
    "iou": (CLASS_IOU_LABEL, "each prompt's mask vs every GT pixel of its class"),
}


def _md(value: Any) -> str:
    """Text for a markdown cell or line: no HTML, no table breaks, no link syntax."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#])", r"\\\1", text)


def _code(text: str) -> str:
    """An inline code span that survives backticks in ``text``."""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def headline_metric(frame: pd.DataFrame) -> str:
    """The score images are ranked by: instance IoU when any ``ok`` row has one, else image
    IoU, else the per-prompt class IoU."""
    ok = frame[frame["status"].eq("ok")]
    scored = (column for column in ("iou_instance", "image_iou", "iou") if ok[column].notna().any())
    return next(scored, "iou_instance")


def short_error(text: str) -> str:
    """An error for a table cell: file paths by their name only, at most :data:`ERROR_CHARS`."""
    parts = " ".join(text.split()).split(": ")
    named = ": ".join(Path(part).name if part.startswith("/") else part for part in parts)
    return one_line(named, ERROR_CHARS)


def table_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The table artifact's rows: :data:`TABLE_COLUMNS`, scores rounded to :data:`DIGITS`,
    missing values ``None``; failed rows first, then by image and prompt."""
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *COLUMNS])))
    order = frame.assign(_ok=frame["status"].eq("ok")).sort_values(
        ["_ok", "image_id", "prompt_index"], kind="stable", na_position="first"
    )

    def cell(column: str, value: Any) -> Any:
        if pd.api.types.is_scalar(value) and pd.isna(value) or value in (math.inf, -math.inf):
            return None
        if column == "prompt_index":
            return int(value)
        if isinstance(value, float):
            return round(value, DIGITS)
        return short_error(str(value)) if column == "error" else str(value)

    return [
        {name: cell(column, row[column]) for name, column in TABLE_COLUMNS.items()}
        for row in order.to_dict(orient="records")
    ]


def _target(path: str | Path, out_root: Path, base_url: str | None) -> str:
    """The served URL of ``path`` (with a ``base_url``); else its absolute file path."""
    return output_link(path, out_root, base_url) if base_url else str(Path(path).resolve())


def _link(label: str, path: str | Path, out_root: Path, base_url: str | None) -> str:
    """``[label](url)`` for a served ``path``; the file path as code otherwise (no file://)."""
    target = _target(path, out_root, base_url)
    return f"[{_md(label)}]({target})" if is_url(target) else _code(target)


def _thumbnail(image_id: str, row: pd.Series, out_root: Path, base_url: str | None) -> str:
    """A clickable markdown image of the image's panel (else composite), or its file path."""
    for column in ("panel_path", "composite_path"):
        if isinstance(path := row.get(column), str) and path:
            target = _target(path, out_root, base_url)
            if is_url(target):
                alt = f"{column.removesuffix('_path')} of {image_id}"
                return f"[![{_md(alt)}]({target})]({target})"
            return _code(target)
    return "—"


def summary_markdown(
    frame: pd.DataFrame,
    parquet_path: str,
    title: str,
    *,
    out_root: str | Path,
    report: str | Path | None = None,
    base_url: str | None = None,
    link_hint: str | None = None,
) -> str:
    """The run summary: headline scores (image IoU over images, instance IoU over prompts),
    counts, links, the :data:`THUMBNAILS` worst images by :func:`headline_metric` (clickable
    images when served, else file paths plus the ``link_hint`` line), failures."""
    frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *COLUMNS])))
    images = frame["image_id"].nunique()
    ok = frame[frame["status"].eq("ok")]
    failed = frame[frame["status"].eq("failed")].drop_duplicates("image_id")
    image_label, image_means = LABELS["image_iou"]
    instance_label, instance_means = LABELS["iou_instance"]
    class_label, class_means = LABELS["iou"]
    root = Path(out_root)

    lines = [
        f"# {_md(title)}",
        "",
        f"**{image_label} {number(image_mean(ok, 'image_iou'))}** "
        f"({image_means}, mean of {ok['image_id'].nunique()} images) · "
        f"**{instance_label} {number(ok['iou_instance'].astype(float).mean())}** "
        f"({instance_means}, mean of {int(ok['iou_instance'].notna().sum())} prompts)",
        "",
        f"- images: {images}, prompts: {int(frame['prompt_index'].notna().sum())}, "
        f"failed images: **{len(failed)}**",
        f"- {class_label}: {number(ok['iou'].astype(float).mean())} ({class_means}: low whenever "
        "an image holds several instances, since each prompt covers one of them)",
    ]
    if report is not None:
        lines.append(f"- report: {_link('report.html', report, root, base_url)}")
    lines.append(f"- results: {_link(Path(parquet_path).name, parquet_path, root, base_url)}")
    if link_hint:
        lines.append(f"- {_md(link_hint)}")

    metric = headline_metric(frame)
    worst = rank_images(frame, metric).head(THUMBNAILS)
    if not worst.empty:
        per_image = ok.drop_duplicates("image_id").set_index("image_id")
        lines += [
            "",
            f"## Worst {len(worst)} images by {LABELS[metric][0]}",
            "",
            f"| image | {instance_label} | {image_label} | panel |",
            "|---|---|---|---|",
        ]
        for entry in worst.itertuples():
            first = per_image.loc[entry.image_id]
            instance = ok.loc[ok["image_id"].eq(entry.image_id), "iou_instance"].astype(float)
            cells = [_md(entry.image_id), number(instance.mean()), number(first["image_iou"])]
            cells.append(_thumbnail(entry.image_id, first, root, base_url))
            lines.append("| " + " | ".join(cells) + " |")
    if len(failed):
        lines += ["", "## Failures", "", "| image | error |", "|---|---|"]
        lines += [f"| {_md(r.image_id)} | {_md(r.error)} |" for r in failed.itertuples()]
    return "\n".join(lines)


def outputs_markdown(frame: pd.DataFrame, out_root: str | Path, base_url: str | None) -> str:
    """One line per image: links to its composite, stylized image, mask and panel, or (without
    a served URL) the image's folder as a path and the names of its files."""
    columns = {  # name -> path column
        c.removesuffix("_path"): c
        for c in ("composite_path", "stylized_path", "mask_path", "panel_path")
        if c in frame and frame[c].notna().any()
    }
    header = ["image", *columns] if base_url else ["image", "folder", "files"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for image_id, group in frame.groupby("image_id", sort=True):
        first = group.iloc[0]
        paths = {n: first[c] for n, c in columns.items()}
        present = {n: p for n, p in paths.items() if isinstance(p, str) and p}
        if base_url:
            cells = [
                _link(n, present[n], Path(out_root), base_url) if n in present else "—"
                for n in columns
            ]
        else:
            folders = {str(Path(p).resolve().parent) for p in present.values()}
            cells = [
                " ".join(_code(f + "/") for f in sorted(folders)) or "—",
                ", ".join(f"{n}.png" for n in present) or "—",
            ]
        lines.append(f"| {_md(image_id)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(report: Path, out_root: Path, run_name: str, base_url: str | None) -> str:
    target = _target(report, out_root, base_url)
    if is_url(target):
        return f"[report of {_md(run_name)}]({target})"
    return f"report of {_md(run_name)}: {_code(target)} (open it from disk)"


def run_text(metrics_dir: str | Path, run: str | None = None) -> str:
    """One run of the Parquet folder ``metrics_dir`` (:func:`~segstyle_core.results.select_run`)
    as text: its name, whether it is partial, :func:`~segstyle_core.results.summarize`'s table,
    its failed images. SegstyleError: no readable results, or no run ``run`` (naming the folder)."""
    everything = results.read_metrics(metrics_dir)  # its errors name the folder
    try:
        key, rows = results.select_run(everything, run)
    except SegstyleError as exc:
        raise SegstyleError(f"{metrics_dir}: {exc}") from None
    lines = [f"run {rows['run_id'].iloc[0]} ({key})"]
    interrupted = "interrupted before it finished; rerun the same command to resume it"
    for partial in results.partial_runs(metrics_dir):
        if partial.flow_run_id == key:
            how = "still running" if partial.writing else interrupted
            lines.append(f"partial: {partial.images} images so far ({partial.parts}), {how}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        lines.append(results.summarize(rows).to_string(index=False))
    failed = rows.loc[rows["status"] == "failed", ["image_id", "error"]].drop_duplicates()
    if len(failed):
        lines.append(f"\nfailed images:\n{failed.to_string(index=False)}")
    if not rows["status"].eq("ok").any():
        lines.append(
            f"\nno image of this run succeeded ({len(failed)} failed); fix the errors above"
        )
    return "\n".join(lines)
