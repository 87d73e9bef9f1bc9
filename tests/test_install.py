"""The install: namespaced packages only, every package listed, flows with few parameters."""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("generic", ["tasks", "flows"])
def test_generic_top_level_names_are_not_installed(generic: str, tmp_path: Path) -> None:
    result = _python(f"import {generic}", tmp_path)
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


def test_a_users_own_tasks_module_does_not_shadow_the_project(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("OWN = True\n")
    result = _python(
        "import tasks, segstyle.tasks.stage as s; print(tasks.OWN, s.PrefectRunner.__name__)",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "PrefectRunner"]


def test_every_package_folder_is_installed() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "segstyle_core").rglob("__init__.py")
    }
    assert folders <= listed, f"add {sorted(folders - listed)} to pyproject.toml's packages"
    assert {"segstyle.tasks", "segstyle.flows"} <= listed


def test_flows_take_a_handful_of_typed_parameters() -> None:
    from segstyle.flows.dataset import evaluate_segmentation, segment_and_stylize
    from segstyle.flows.single import stylize_image
    from segstyle.flows.video import stylize_video

    for flow in (segment_and_stylize, evaluate_segmentation, stylize_image, stylize_video):
        parameters = inspect.signature(flow.fn).parameters
        assert len(parameters) <= 8, (flow.name, list(parameters))
        schema = flow.parameters.model_dump()
        for name, spec in schema["properties"].items():
            assert spec.get("description") or spec.get("$ref") or spec.get("allOf"), (
                flow.name,
                name,
            )
