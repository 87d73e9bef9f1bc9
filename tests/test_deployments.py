"""prefect.yaml and the flows' run settings, without a server.

The deployments load their flows as modules of the installed package (``segstyle.flows.*``),
work in the folder the deploy ran in whatever the environment, and the dataset deployments run
one at a time. Every flow has a time limit, writes no result to Prefect's result store (and
nothing pickled when Prefect writes one), retries a crash, and gets a readable run name; a
failed run's state message fits the UI's column. The end-to-end checks are in test_service.py
and test_flows.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prefect_service import REPO_ROOT

FLOWS = (
    "segstyle.flows.dataset:segment_and_stylize",
    "segstyle.flows.dataset:evaluate_segmentation",
    "segstyle.flows.single:stylize_image",
    "segstyle.flows.video:stylize_video",
)


def _prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())


def test_every_entrypoint_loads_its_flow_from_the_installed_package() -> None:
    from prefect.flows import load_flow_from_entrypoint

    deployments = _prefect_yaml()["deployments"]
    assert deployments
    for deployment in deployments:
        entrypoint = deployment["entrypoint"]
        module = entrypoint.split(":")[0]
        assert module.startswith("segstyle.flows.") and not module.endswith(".py"), entrypoint
        flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
        assert flow.fn.__module__ == module, (entrypoint, flow.fn.__module__)


def test_runs_work_in_the_deploys_folder_without_any_environment_variable() -> None:
    """The pull step's folder comes from a build step of the deploy (its ``pwd``), never from
    an environment variable that a plain ``prefect deploy --all`` would leave unset."""
    config = _prefect_yaml()
    (step,) = config["build"]
    shell = step["prefect.deployments.steps.run_shell_script"]
    assert shell["script"].strip() == "pwd"
    (pull,) = config["pull"]
    directory = pull["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory.replace(" ", "") == "{{" + shell["id"] + ".stdout}}"
    assert "$" not in yaml.safe_dump(config)


@pytest.mark.parametrize("name", ["paper-zurich-sam-gatys", "demo-offline-nightly"])
def test_scheduled_deployments_run_one_at_a_time(name: str) -> None:
    (deployment,) = [d for d in _prefect_yaml()["deployments"] if d["name"] == name]
    assert deployment["schedules"]
    assert deployment["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


@pytest.mark.parametrize("entrypoint", FLOWS)
def test_every_flow_has_a_timeout_a_crash_retry_and_no_pickled_result(entrypoint: str) -> None:
    from prefect.flows import load_flow_from_entrypoint

    from segstyle.flows.runs import retry_crashed

    flow = load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)
    assert flow.timeout_seconds and flow.timeout_seconds >= 3600
    assert flow.persist_result is False
    assert flow.result_serializer == "json"
    assert retry_crashed in flow.on_crashed_hooks
    assert callable(flow.flow_run_name)


def test_state_message_keeps_short_text_and_cuts_long_text_at_a_word() -> None:
    from segstyle.flows.runs import STATE_MESSAGE_CHARS
    from segstyle_core.errors import one_line

    def state_message(text: str) -> str:
        return one_line(text, STATE_MESSAGE_CHARS)

    assert state_message("1 of 3 images failed;\n first: x") == "1 of 3 images failed; first: x"
    words = " ".join(f"word{i}" for i in range(100))
    cut = state_message(words)
    assert len(cut) <= STATE_MESSAGE_CHARS and cut.endswith("…")
    kept = cut.removesuffix("…")
    assert words.startswith(kept) and words[len(kept)] == " "
    one_long_word = "x" * 500
    assert len(state_message(one_long_word)) == STATE_MESSAGE_CHARS


def test_run_names_are_readable_and_safe_as_folder_names() -> None:
    import datetime as dt

    from segstyle.flows.runs import run_name, setting
    from segstyle_core.config import SegmenterConfig, city_part

    today = dt.date.today().isoformat()
    assert run_name("zurich", "grabcut", "feedforward") == f"zurich-grabcut-feedforward-{today}"
    assert run_name("../x y", "sam") == f"x_y-sam-{today}"
    assert city_part(None) == "random"
    assert city_part("zurich,aachen") == city_part(("aachen", "zurich")) == "aachen+zurich"
    assert city_part([f"c{i}" for i in range(5)]) == "5-cities"
    model = {"segmenter": SegmenterConfig(backend="grabcut")}
    assert setting(model, "segmenter", "backend", "sam") == "grabcut"
    assert setting({"segmenter": {"backend": "grabcut"}}, "segmenter", "backend", "x") == "grabcut"
    assert setting({}, "segmenter", "backend", "sam") == "sam"
    assert setting({"dataset": {"city": None}}, "dataset", "city", "zurich") is None


def test_run_folder_is_the_name_and_the_start_of_the_id() -> None:
    from segstyle_core.outputs import run_folder

    folder = run_folder("out", "zurich-grabcut-feedforward-2026-12-02", "0123456789abcdef")
    assert folder == Path("out/runs/zurich-grabcut-feedforward-2026-12-02-01234567")


def test_fixed_choices_are_enums_in_the_parameter_schema() -> None:
    """Prefect's form shows a dropdown for a field whose schema is an ``enum``."""
    from prefect.utilities.callables import parameter_schema

    from segstyle.flows.dataset import segment_and_stylize

    schema = parameter_schema(segment_and_stylize).model_dump()
    definitions = schema["definitions"]
    assert definitions["DatasetSelection"]["properties"]["split"]["enum"] == [
        "train",
        "val",
        "test",
    ]
    assert "enum" in definitions["CompositeConfig"]["properties"]["mode"]
    # a choice or a file's path: two tabs, the first a dropdown, each with its own title
    choice, path = definitions["PromptConfig"]["properties"]["source"]["anyOf"]
    assert choice["enum"] == ["gt-instances", "largest", "auto"] and choice["title"]
    assert path == {"type": "string", "title": path["title"]} and path["title"] != choice["title"]
    method, off = definitions["CompositeConfig"]["properties"]["preserve_color"]["anyOf"]
    assert method["enum"] == ["luminance", "histogram"] and method["title"]
    assert off == {"type": "null"}


def test_a_prompts_file_is_still_a_source() -> None:
    from segstyle_core.config import PromptConfig

    assert PromptConfig(source="auto").source == "auto"
    assert PromptConfig(source="data/prompts.json").source == "data/prompts.json"


def test_deployment_runs_start_with_malloc_keeping_freed_memory() -> None:
    """A flow-run process starts with :data:`~segstyle_core.devices.GLIBC_TUNABLES` (and the
    core's logs in the run's): set at its start, they reach every thread's allocations."""
    from segstyle_core.devices import GLIBC_TUNABLES

    for deployment in _prefect_yaml()["deployments"]:
        env = deployment["work_pool"].get("job_variables", {}).get("env")
        if env is not None:
            assert env["GLIBC_TUNABLES"] == GLIBC_TUNABLES, deployment["name"]
            assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "segstyle_core"
