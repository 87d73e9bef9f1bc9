"""Fuzzing the parsers of user input with hypothesis.

The property, for every parser that reads what a user typed or wrote: it returns a valid
object, or raises a :class:`~segstyle_core.errors.SegstyleError` whose message is one line.
Never another exception: a ``KeyError``, ``OverflowError`` or ``RecursionError`` would reach
the user as a traceback.

Inputs are drawn both as arbitrary text and as near-valid documents (JSON trees, CSV rows of
numbers, comma-separated numbers) so that the search reaches the deeper checks, not only the
first syntax error.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segstyle_core.errors import SegstyleError
from segstyle_core.prompts.files import load_prompts_file
from segstyle_core.prompts.validation import parse_box, parse_point
from segstyle_core.segment.base import Prompt

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Numbers as a user (or an attacker) might write them.
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1e999", "-0", "NaN", "inf", "0x10", "1_000", "", " ", "١"]),
)
#: JSON values, prompt-shaped more often than not.
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(["box", "points", "labels", "x"]), inner, max_size=4),
    ),
    max_leaves=20,
)
prompt_objects = st.fixed_dictionaries(
    {},
    optional={
        "box": st.lists(st.one_of(st.integers(), st.floats()), min_size=3, max_size=5),
        "points": st.lists(st.lists(st.integers(-5, 5000), min_size=1, max_size=3), max_size=3),
        "labels": st.lists(st.one_of(st.integers(-1, 2), st.booleans()), max_size=3),
    },
)
json_documents = st.dictionaries(
    st.text(min_size=1, max_size=6), st.lists(st.one_of(prompt_objects, json_values), max_size=3)
)


def _one_line_or_valid(call: Any) -> Any:
    """Run ``call``: its value, or ``None`` after a one-line :class:`SegstyleError`."""
    try:
        return call()
    except SegstyleError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None


def _load(text: str, suffix: str) -> dict[str, list[Prompt]] | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"prompts{suffix}"
        path.write_text(text, encoding="utf-8")
        return _one_line_or_valid(lambda: load_prompts_file(path))


def _check_prompts(prompts: dict[str, list[Prompt]] | None) -> None:
    """A file that loads holds finite boxes and points and 0/1 labels, one per point."""
    for image_prompts in (prompts or {}).values():
        assert image_prompts
        for prompt in image_prompts:
            assert prompt.box is not None or prompt.points
            assert all(math.isfinite(v) for v in (*(prompt.box or ()), *sum(prompt.points, ())))
            assert len(prompt.point_labels) == len(prompt.points)
            assert set(prompt.point_labels) <= {0, 1}


@FUZZ
@given(json_documents)
def test_json_prompt_documents(document: dict[str, Any]) -> None:
    _check_prompts(_load(json.dumps(document), ".json"))


@FUZZ
@given(st.text(alphabet=st.sampled_from('{}[]",:0123456789.eE-+ abNI'), max_size=80))
def test_json_prompt_text(text: str) -> None:
    _check_prompts(_load(text, ".json"))


@FUZZ
@given(
    st.sampled_from(["image_id,x0,y0,x1,y1", "image_id,prompt,x0,y0,x1,y1,px,py,label"]),
    st.lists(st.lists(numbers.map(str), min_size=1, max_size=10), max_size=4),
)
def test_csv_prompt_rows(header: str, rows: list[list[str]]) -> None:
    body = "\n".join(",".join(["img", *row]) for row in rows)
    _check_prompts(_load(f"{header}\n{body}\n", ".csv"))


@FUZZ
@given(st.text(max_size=60))
def test_csv_prompt_text(text: str) -> None:
    _check_prompts(_load(text, ".csv"))


@FUZZ
@given(st.one_of(st.text(max_size=40), st.lists(numbers.map(str), max_size=5).map(",".join)))
def test_box_and_point_strings(text: str) -> None:
    box = _one_line_or_valid(lambda: parse_box(text))
    if box is not None:
        assert len(box) == 4 and all(math.isfinite(v) for v in box)
    point = _one_line_or_valid(lambda: parse_point(text))
    if point is not None:
        assert all(math.isfinite(v) for v in point[:2]) and point[2] in (0, 1)


#: ``segstyle run`` options whose values a user types (the model checks them).
RUN_FLAGS = (
    "--feather",
    "--limit",
    "--city",
    "--classes",
    "--box-expand",
    "--gt",
    "--prompts",
    "--split",
    "--content-weight",
    "--iterations",
    "--roi-margin",
    "--seed",
)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(RUN_FLAGS),
            st.one_of(numbers.map(str), st.text(max_size=12).filter(lambda t: t[:1] != "-")),
        ),
        max_size=4,
    )
)
def test_run_options_from_the_command_line(options: list[tuple[str, str]]) -> None:
    """``segstyle run`` with arbitrary values: the configuration models, or one line naming a
    flag (a usage error of argparse exits 2 as ever)."""
    from segstyle.flows.cli import parse
    from segstyle.flows.options import COMPOSITE, DATASET, PROMPTS, SEGMENTER

    argv = ["run", *(word for option in options for word in option)]

    def build() -> object:
        command = parse(argv)
        return [group.build(command) for group in (DATASET, PROMPTS, SEGMENTER, COMPOSITE)]

    try:
        _one_line_or_valid(build)
    except SystemExit as exc:
        assert exc.code == 2
