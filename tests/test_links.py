"""Issue 23.1: artifact links that never break, on any port and any ``--out``.

A real ``segstyle serve`` subprocess on a free (never the default) port serves two ``out``
folders; the address reaches the flow through the Prefect Variable ``segstyle-outputs-url``,
as ``make deploy`` sets it. A run publishing into a served folder links every file, and every
link answers 200; a run into a folder the server does not serve shows plain paths and exactly
one line saying how to get links.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pandas as pd
import pytest

from segstyle_core.figures import panel
from segstyle_core.images import write_png
from segstyle_core.outputs import (
    DEFAULT_PORT,
    OUTPUTS_URL_ENV,
    OUTPUTS_URL_VARIABLE,
    LinkTarget,
    link_target,
    served_roots,
)
from segstyle_core.report import write_report
from segstyle_core.results import COLUMNS, normalise_row

#: Markdown link and image targets: ``[..](url)`` and ``![..](url)``.
LINK = re.compile(r"\]\(([^)\s]+)\)")
IMAGES = ("zurich_000000_000019", "zurich_000001_000019", "zurich_000002_000019")
FILES = ("composite", "stylized", "mask", "panel")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    assert port != DEFAULT_PORT
    return port


@contextlib.contextmanager
def _segstyle_serve(*outs: Path) -> Iterator[str]:
    """``segstyle serve --out A [--out B ...] --port <free>`` (the console script); yields its
    address once it answers."""
    port = _free_port()
    command = [str(Path(sys.executable).with_name("segstyle")), "serve", "--port", str(port)]
    for out in outs:
        command += ["--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while served_roots(base, timeout=1) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"segstyle serve did not start: {output}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stdout:
            process.stdout.close()


def _status(url: str) -> int:
    """The HTTP status of a GET of ``url`` (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _run_files(out: Path, run: str) -> tuple[list[dict[str, Any]], Path, Path]:
    """A finished run's files under ``out``: every image's four PNGs, one failed image, the
    report and the Parquet file. Returns (rows, report, parquet)."""
    rng = np.random.default_rng(0)
    run_dir = out / "runs" / run
    rows = []
    for index, image_id in enumerate(IMAGES):
        paths = {}
        for name in FILES:
            tile = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
            paths[f"{name}_path"] = str(
                write_png(run_dir / image_id / f"{name}.png", panel([(name, tile)], image_id))
            )
        rows.append(
            normalise_row(
                {
                    "run_id": run,
                    "flow_run_id": run,
                    "status": "ok",
                    "segmenter": "grabcut",
                    "classes": "car",
                    "image_id": image_id,
                    "prompt_index": 0,
                    "instance_class": "car",
                    "iou": 0.3 + index / 10,
                    "iou_instance": 0.4 + index / 10,
                    "image_iou": 0.5 + index / 10,
                    **paths,
                }
            )
        )
    rows.append(
        normalise_row(
            {"run_id": run, "status": "failed", "image_id": "zurich_000003_000019", "error": "x"}
        )
    )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    report = write_report(run_dir, frame, {}, run, metric="iou_instance")
    parquet = out / "metrics" / "flow=segment_and_stylize" / f"{run}.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(parquet)
    return rows, report, parquet


def _publish(out: Path) -> tuple[str, dict[str, Any]]:
    """A flow run that publishes a run written under ``out``: its id and its artifacts,
    kind -> artifact."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    from segstyle.flows.artifacts import publish_artifacts

    @flow(persist_result=False)
    def publishing() -> str:
        name = flow_run.get_name() or "run"
        rows, report, parquet = _run_files(out, name)
        publish_artifacts(rows, str(parquet), name, report, out_root=out)
        return str(flow_run.get_id())

    flow_run_id = publishing()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    return flow_run_id, {a.key.rsplit("-", 1)[1]: a for a in artifacts if a.key}


def _data(artifacts: dict[str, Any]) -> dict[str, str]:
    """Kind -> the artifact's markdown or JSON text."""
    return {kind: str(artifact.data) for kind, artifact in artifacts.items()}


@pytest.fixture()
def outputs_variable(prefect_api: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment variable unset; the Prefect Variable removed again afterwards."""
    from prefect.variables import Variable

    monkeypatch.delenv(OUTPUTS_URL_ENV, raising=False)
    yield
    Variable.unset(OUTPUTS_URL_VARIABLE)


def test_the_server_lists_what_it_serves(tmp_path: Path) -> None:
    """One ``--out``: the empty prefix (the old URLs); several: one prefix each, names that
    repeat made distinct; ``link_target`` adds the prefix of the run's ``out`` only."""
    from segstyle.flows.artifacts import link_hint

    single = tmp_path / "single"
    with _segstyle_serve(single) as base:
        assert served_roots(base) == [("", single.resolve())]
        assert link_target(single, base) == LinkTarget(base)
    first, second, twin = tmp_path / "a" / "out", tmp_path / "b" / "out", tmp_path / "b c"
    with _segstyle_serve(first, second, twin, first) as base:
        assert served_roots(base) == [
            ("/out", first.resolve()),
            ("/out-2", second.resolve()),
            ("/b-c", twin.resolve()),
        ]
        assert link_target(second, base) == LinkTarget(base + "/out-2")
        assert link_target(twin / "runs", base).base_url is None  # a folder inside is not out
        elsewhere = link_target(tmp_path / "elsewhere", base)
        assert elsewhere.base_url is None and elsewhere.asked == base
        hint = link_hint(elsewhere, tmp_path / "elsewhere") or ""
        assert f"serves {first.resolve()}, {second.resolve()}, {twin.resolve()}, not" in hint
        assert f"add --out {tmp_path / 'elsewhere'} to it" in hint
        assert OUTPUTS_URL_VARIABLE in hint and OUTPUTS_URL_ENV in hint
        assert link_hint(link_target(second, base), second) is None  # linked
    unanswered = link_target(first, base)  # the server has stopped
    assert unanswered.base_url is None and unanswered.served is None
    assert f"no segstyle serve answers at {base}" in (link_hint(unanswered, first) or "")


@pytest.mark.slow
def test_every_link_answers_200_on_a_non_default_port(
    outputs_variable: None, tmp_path: Path
) -> None:
    """``segstyle serve --out A --out B --port <free>``, its address in the Prefect Variable:
    a run into B links its report, Parquet file and every picture under B's prefix, shows
    thumbnails, and every link answers 200 with the file's bytes."""
    from prefect.variables import Variable

    served, other = tmp_path / "served one", tmp_path / "served two"
    with _segstyle_serve(other, served) as base:
        Variable.set(OUTPUTS_URL_VARIABLE, base, overwrite=True)
        artifacts = _data(_publish(served)[1])
        links = [url for data in artifacts.values() for url in LINK.findall(data)]
        assert all(url.startswith(base + "/served-one/") for url in links), links
        assert "no links" not in "".join(artifacts.values())
        assert artifacts["summary"].count("![") == len(IMAGES)  # thumbnails of every image
        assert len(LINK.findall(artifacts["outputs"])) == len(IMAGES) * len(FILES)
        assert re.search(r"/report\.html\)", artifacts["report"])
        assert re.search(
            r"/metrics/flow%3Dsegment_and_stylize/[^)]+\.parquet\)", artifacts["summary"]
        )
        statuses = {url: _status(url) for url in links}
        assert set(statuses.values()) == {200}, statuses


@pytest.mark.slow
def test_a_run_into_a_folder_not_served_shows_paths_and_one_line(
    outputs_variable: None, tmp_path: Path
) -> None:
    """The server (its address in the Prefect Variable) serves another folder: no link at
    all, plain paths, and one line naming ``segstyle serve --out <this out>`` and the setting."""
    from prefect.variables import Variable

    out = tmp_path / "not served"
    with _segstyle_serve(tmp_path / "served") as base:
        Variable.set(OUTPUTS_URL_VARIABLE, base, overwrite=True)
        artifacts = _data(_publish(out)[1])
    text = "\n".join(artifacts.values())
    assert "http://" not in text.replace(f"at {base}", "") and "file:" not in text
    hints = [line for line in text.splitlines() if "no links" in line]
    assert len(hints) == 1, hints
    (hint,) = hints
    assert "segstyle serve --out '" + str(out.resolve()) + "'" in hint.replace("\\", "")
    assert OUTPUTS_URL_VARIABLE in hint and "SEGSTYLE" in hint
    report = next(Path(p) for p in re.findall(r"`([^`]+report\.html)`", artifacts["report"]))
    assert report.is_file()
    metrics = json.loads(artifacts["metrics"])
    assert len(metrics) == len(IMAGES) + 1


@pytest.mark.slow
def test_the_summary_thumbnails_load_in_the_prefect_ui(
    prefect_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real ``prefect server start`` and ``segstyle serve --out A --out B``, both on free
    ports, the outputs address in the Prefect Variable (set with the CLI, as ``make deploy``
    does): in headless Chromium the summary
    artifact of a run into B shows every thumbnail, and no request to the outputs server
    fails."""
    from urllib.parse import urlsplit

    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.variables import Variable

    from tests.test_ui import _browser_page, _loaded_images, _open_artifact, _v2_base

    monkeypatch.delenv(OUTPUTS_URL_ENV, raising=False)
    served = tmp_path / "served"
    with _segstyle_serve(tmp_path / "other", served) as outputs:
        # as `make deploy` sets it
        prefect_server.run(["variable", "set", OUTPUTS_URL_VARIABLE, outputs, "--overwrite"])
        with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
            assert Variable.get(OUTPUTS_URL_VARIABLE) == outputs
            flow_run_id, artifacts = _publish(served)
        thumbnails = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", str(artifacts["summary"].data))
        assert len(thumbnails) == len(IMAGES)
        assert all(url.startswith(outputs + "/served/runs/") for url in thumbnails), thumbnails
        errors: list[str] = []
        blocked: list[str] = []
        with _browser_page(blocked) as page:
            page.on(
                "response",
                lambda r: (
                    errors.append(f"{r.status} {r.url}")
                    if r.url.startswith(outputs) and r.status != 200
                    else None
                ),
            )
            page.on("requestfailed", lambda r: errors.append(f"failed {r.url}"))
            _open_artifact(page, _v2_base(prefect_server), flow_run_id, artifacts["summary"].key)
            page.locator("img").nth(len(thumbnails) - 1).wait_for()
            shown = {image["src"]: image["width"] for image in _loaded_images(page)}
    assert {url: shown.get(url, 0) > 0 for url in thumbnails} == dict.fromkeys(thumbnails, True)
    assert [e for e in errors if urlsplit(outputs).netloc in e] == [], errors
