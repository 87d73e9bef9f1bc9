"""Assemble Parquet rows (see :data:`segstyle_core.results.SCHEMA`) from task records."""

from __future__ import annotations

from typing import Any

#: Task records that contribute a ``seconds_<stage>`` column.
TIMED_STAGES = ("gt", "segment", "stylize", "composite", "figures")


def _output(record: dict[str, Any] | None, name: str) -> str | None:
    return record["outputs"].get(name) if record else None


def _prompt_columns(prompt: dict[str, Any] | None) -> dict[str, Any]:
    if prompt is None:
        return {}
    labels = prompt.get("point_labels") or []
    return {
        "prompt_kind": prompt["kind"] if prompt.get("box") or prompt.get("points") else "auto",
        "prompt_box": prompt.get("box"),
        "prompt_points": [
            [*p, lab] for p, lab in zip(prompt.get("points", []), labels, strict=False)
        ],
        "instance_id": prompt.get("instance_id"),
        "instance_class": prompt.get("class_name"),
    }


def frame_rows(
    common: dict[str, Any],
    frame: dict[str, Any],
    records: dict[str, dict[str, Any] | None],
    scores: list[dict[str, Any]] | None,
    error: str | None,
    published: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Rows of one image: one per scored prompt, or a single row when there is none.

    Args:
        common: run-wide columns (run ids, backends, style, mode, config hash, timestamps).
        records: stage name -> task record (``None`` for stages that did not run).
        scores: the ``scores`` of :func:`tasks.metrics.score_frame`'s record, or ``None``.
        error: the first failing stage's error, which makes the rows ``failed``.
        published: output name -> path in the run directory (overrides cache paths).
    """
    paths = {
        "mask_path": _output(records.get("metrics"), "mask"),
        "stylized_path": _output(records.get("stylize"), "stylized"),
        "composite_path": _output(records.get("composite"), "composite"),
        "panel_path": _output(records.get("figures"), "panel"),
        **(published or {}),
    }
    base = {
        **common,
        "image_id": frame["image_id"],
        "image_path": frame["image_path"],
        **paths,
        **{f"seconds_{s}": records[s].get("seconds") for s in TIMED_STAGES if records.get(s)},
        "status": "failed" if error else "ok",
        "error": error,
    }
    segment = records.get("segment") or {}
    if segment:
        base.update(
            segmenter=segment.get("name"),
            segmenter_variant=segment.get("variant"),
            segmenter_weights_sha256=segment.get("weights_sha256"),
        )
    if records.get("gt"):
        base["gt_area"] = records["gt"].get("gt_area")
    if not scores:
        return [base]
    rows = []
    for index, score in enumerate(scores):
        rows.append(
            {
                **base,
                "prompt_index": index,
                **_prompt_columns(score.get("prompt")),
                **{k: v for k, v in score.items() if k != "prompt"},
            }
        )
    return rows
