"""The Prefect UI, in Debian's headless Chromium, against a real ``prefect server start``.

1. The deployment's "Custom run" form (issue #12): every parameter group of
   ``segment_and_stylize`` and every field of its models is on the form, with the field's
   docstring as its description and the deployed value (else the model's default) filled in.
2. A failed run's artifacts (issue #13.6): the CLI runs ``segment_and_stylize`` against the
   test server over a demo dataset with one truncated image, with ``SEGSTYLE_OUTPUTS_URL``
   pointing at a ``segstyle serve`` subprocess. In the UI: the run's Artifacts tab, the summary
   artifact (its thumbnails load), the report artifact and its link to report.html (every image
   there loads); no response from ``segstyle serve`` is an error, no artifact holds ``file://``.

3. Retry from the UI: a deployment run with one truncated image fails; the image is put
   right, and the run page's menu → Retry → the dialog's Retry puts the run in AwaitingRetry.
   The worker reruns it: it completes, its one Parquet file holds every image once, all
   ``ok``, and only the image that failed is computed again (the others' stages are Cached).

All drive the Prefect 3.8.8 server's default UI (the React "V2" UI under ``/v2``). Requests to
hosts other than 127.0.0.1 (the UI's telemetry) are aborted. Screenshots go to the test's tmp
folder and are copied to ``/tmp/ui-*.png`` for a person to look at.

Without ``/usr/bin/chromium`` (``make chromium``) or playwright the tests skip, except where the
environment variable ``CI`` is set: there they fail, since CI installs both.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prefect_service import (
    PrefectService,
    free_port,
    stop_process_group,
)
from tests.test_service import _final, _small_offline_params, _trigger, _wait
from tests.test_service import worker as worker  # the fixture: `prefect worker start`

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
#: Playwright's wait for each UI element, in ms (a cold server renders its first page slowly).
UI_TIMEOUT_MS = 30_000

POOL = "segstyle-process"
DEPLOYMENT = "segment_and_stylize/demo-offline-nightly"
#: The flow's parameter groups, in the order of its signature.
GROUPS = ("dataset", "prompts", "segmenter", "stylizer", "composite", "outputs")

#: Copies of the screenshots, for a person to look at.
FORM_SHOT = Path("/tmp/ui-form.png")
ARTIFACTS_SHOT = Path("/tmp/ui-artifacts.png")
ARTIFACTS_TAB_SHOT = Path("/tmp/ui-artifacts-tab.png")
TABLE_SHOT = Path("/tmp/ui-artifacts-table.png")
REPORT_SHOT = Path("/tmp/ui-report.png")
RETRY_SHOT = Path("/tmp/ui-retry.png")


# -- the browser ----------------------------------------------------------------------------


def _sync_api() -> Any:
    """playwright's sync API; skip (fail under CI) when it or Chromium is missing."""
    problem = None
    try:
        from playwright import sync_api
    except ImportError:
        problem = "playwright is not installed: pip install -e '.[dev]'"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: run `make chromium`"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} (CI is set: the browser tests must run, not skip)")
        pytest.skip(problem)
    return sync_api


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    """Skip (or fail, under CI) before the module's Prefect server starts, not after."""
    _sync_api()


@contextlib.contextmanager
def _browser_page(blocked: list[str]) -> Iterator[Any]:
    """A 1440×900 page of a fresh headless Chromium, closed (and its process gone) afterwards.

    Requests to any host but 127.0.0.1 are aborted and listed in ``blocked``.
    """
    sync_api = _sync_api()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)

            def abort(route: Any) -> None:
                blocked.append(route.request.url)
                route.abort()

            context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]|data:|blob:)"), abort)
            context.set_default_timeout(UI_TIMEOUT_MS)
            yield context.new_page()
        finally:
            browser.close()


def _v2_base(server: PrefectService) -> str:
    """The address of the UI a user's browser gets by default (Prefect 3.8.8: V2 at /v2)."""
    with urllib.request.urlopen(f"{server.ui_url}/ui-settings", timeout=10) as response:
        settings = json.load(response)
    assert settings.get("default_ui") == "v2" and settings.get("v2_base_url"), (
        f"these checks drive the V2 UI, but the server's default is: {settings}"
    )
    assert settings.get("api_url") == server.api_url, (
        f"the UI would talk to {settings.get('api_url')}, not to {server.api_url}: "
        "set PREFECT_UI_API_URL on the server"
    )
    return server.ui_url + settings["v2_base_url"].rstrip("/")


def _screenshot(page: Any, path: Path, copy_to: Path | None = None) -> None:
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    if copy_to is not None:
        with contextlib.suppress(OSError):  # a copy for a person; the test needs none
            shutil.copyfile(path, copy_to)


def _loaded_images(page: Any) -> list[dict[str, Any]]:
    """Every ``<img>`` of the page once each has loaded or failed: src, naturalWidth."""
    return page.evaluate(
        """async () => {
            await Promise.allSettled([...document.images].map((i) => i.decode()));
            return [...document.images].map((i) => ({
                src: i.currentSrc || i.src, width: i.naturalWidth, complete: i.complete}));
        }"""
    )


def _file_urls(page: Any) -> list[str]:
    """Every ``href`` or ``src`` of the page that is a ``file:`` URL."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[href], [src]')]
            .map((e) => e.getAttribute('href') || e.getAttribute('src') || '')
            .filter((u) => u.trim().toLowerCase().startsWith('file:'))"""
    )


# -- 1. the parameter form -------------------------------------------------------------------

#: The form's fields as the V2 UI renders them: each field is a ``div.group`` holding a
#: ``<label data-slot="label">``, its description (the ``<p>`` beside the label) and a
#: ``<fieldset>`` with the control; an object's fields are nested inside its own. Unlabelled
#: ``div.group`` s (a type tab's panel) belong to the labelled field around them. A JSON
#: editor (a mapping such as the per-class styles; CodeMirror's ``.cm-content``) reports
#: ``{json: its text}``.
_FORM_FIELDS_JS = """() => {
  const GROUP = 'div.group';
  const LABEL = 'label[data-slot="label"]';
  const labelOf = (group) =>
    [...group.querySelectorAll(LABEL)].find((l) => l.closest(GROUP) === group);
  const fieldOf = (el) => {
    let group = el && el.closest(GROUP);
    while (group && !labelOf(group)) group = group.parentElement?.closest(GROUP);
    return group;
  };
  const fields = [];
  for (const label of document.querySelectorAll(LABEL)) {
    const field = label.closest(GROUP);
    if (!field) continue;
    const description = label.parentElement.querySelector(':scope > p');
    const path = [];
    for (let up = fieldOf(field.parentElement); up; up = fieldOf(up.parentElement)) {
      path.unshift(labelOf(up).textContent.trim());
    }
    const controls = [...field.querySelectorAll(
      'input:not([type="checkbox"]), textarea, [role="switch"], ' +
      'button[aria-haspopup="listbox"], [role="tab"][aria-selected="true"], .cm-content'
    )].filter((el) => fieldOf(el) === field);
    fields.push({
      path: [...path, label.textContent.trim()],
      description: description ? description.textContent.trim() : null,
      visible: label.checkVisibility() && (!description || description.checkVisibility()),
      values: controls.map((el) =>
        el.getAttribute('role') === 'switch' ? el.getAttribute('aria-checked') === 'true'
        : el.getAttribute('role') === 'tab' ? {tab: el.textContent.trim()}
        : el.tagName === 'BUTTON' ? el.textContent.trim()
        : el.classList.contains('cm-content') ? {json: el.textContent.trim()}
        : el.value),
    });
  }
  return fields;
}"""


def _words(text: str | None) -> str:
    return " ".join((text or "").split())


def _label_title(label: str) -> str:
    return label.removesuffix("(Optional)").strip()


def _expected_fields(schema: dict[str, Any], parameters: dict[str, Any]) -> list[dict[str, Any]]:
    """The form's fields by the deployment's parameter schema: title path, description, and
    the value the form must show (the deployed parameter, else the schema's default)."""
    definitions = {**schema.get("definitions", {}), **schema.get("$defs", {})}

    def resolve(node: dict[str, Any]) -> dict[str, Any] | None:
        ref = node.get("$ref") or next(
            (s["$ref"] for s in node.get("allOf", []) if "$ref" in s), None
        )
        return definitions.get(ref.rsplit("/", 1)[-1]) if ref else None

    fields: list[dict[str, Any]] = []

    def walk(properties: dict[str, Any], values: Any, path: tuple[str, ...]) -> None:
        for name, node in properties.items():
            model = resolve(node)
            title = node.get("title") or (model or {}).get("title") or name
            description = node.get("description") or (model or {}).get("description")
            value = values.get(name, node.get("default")) if isinstance(values, dict) else None
            entry = {"name": name, "path": (*path, title), "description": description}
            if model is not None and "properties" in model:
                fields.append({**entry, "object": True})
                defaults = node.get("default") if isinstance(node.get("default"), dict) else {}
                given = value if isinstance(value, dict) else {}
                walk(model["properties"], {**defaults, **given}, (*path, title))
            else:
                fields.append({**entry, "object": False, "value": value})

    walk(schema.get("properties", {}), parameters, ())
    return fields


def _shows(value: Any, shown: list[Any]) -> bool:
    """Whether a field's controls (``shown``, from :data:`_FORM_FIELDS_JS`) show ``value``."""
    tabs = [v["tab"] for v in shown if isinstance(v, dict) and "tab" in v]
    if isinstance(value, dict):  # a JSON editor; an empty one submits nothing: the default
        editors = [v["json"] for v in shown if isinstance(v, dict) and "json" in v]
        return any(json.loads(text or "{}") == value for text in editors)
    texts = [v for v in shown if isinstance(v, str)]
    if value is None:
        return tabs == ["None"]
    if isinstance(value, bool):
        return value in [v for v in shown if isinstance(v, bool)]
    if isinstance(value, list):
        return texts == [str(v) for v in value]
    if isinstance(value, int | float):
        numbers = []
        for text in texts:
            with contextlib.suppress(ValueError):
                numbers.append(float(text))
        return any(math.isclose(n, float(value), rel_tol=1e-9) for n in numbers)
    return str(value) in texts


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectService) -> dict[str, Any]:
    """``make deploy`` against the test server: the work pool, then ``prefect deploy --all``."""
    prefect_server.run(["work-pool", "create", POOL, "--type", "process"])
    prefect_server.run(["--no-prompt", "deploy", "--all"], env=prefect_server.env())
    with prefect_server.client() as client:
        flows = {flow.id: flow.name for flow in client.read_flows()}
        return {f"{flows[d.flow_id]}/{d.name}": d for d in client.read_deployments()}


def test_custom_run_form_shows_every_field_with_description_and_default(
    prefect_server: PrefectService, deployed: dict[str, Any], tmp_path: Path
) -> None:
    from segstyle_core.config import PromptConfig

    started = time.monotonic()
    deployment = deployed[DEPLOYMENT]
    schema = deployment.parameter_openapi_schema or {}
    assert list(schema.get("properties", {})) == list(GROUPS), schema.get("properties")
    expected = _expected_fields(schema, deployment.parameters)
    base = _v2_base(prefect_server)

    blocked: list[str] = []
    with _browser_page(blocked) as page:
        page.goto(f"{base}/deployments/deployment/{deployment.id}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        page.wait_for_url(re.compile(r"/run\b"))
        # the last field of the last group: the whole form has rendered
        outputs = schema["properties"]["outputs"]["title"]
        page.get_by_text(re.compile(rf"^{re.escape(outputs)}\b")).first.wait_for()
        page.locator("fieldset textarea, fieldset input").last.wait_for()
        # a JSON editor loads lazily: a skeleton stands in its place until it has
        page.wait_for_function("() => !document.querySelector('fieldset [data-slot=skeleton]')")
        shown = page.evaluate(_FORM_FIELDS_JS)
        example = PromptConfig.model_fields["min_area"].description
        example_visible = page.get_by_text(example or "?", exact=True).is_visible()
        _screenshot(page, tmp_path / "form.png", FORM_SHOT)
    elapsed = time.monotonic() - started

    by_path = {tuple(_label_title(p) for p in field["path"]): field for field in shown}
    problems = []
    for field in expected:
        path = field["path"]
        where = " > ".join(path)
        if not _words(field["description"]):
            problems.append(f"{where}: no description in the deployment's schema")
        on_form = by_path.get(path)
        if on_form is None:
            problems.append(f"{where}: not on the form")
            continue
        if not on_form["visible"]:
            problems.append(f"{where}: label or description not visible")
        if _words(on_form["description"]) != _words(field["description"]):
            problems.append(
                f"{where}: description {on_form['description']!r}, "
                f"expected {field['description']!r}"
            )
        if not field["object"] and not _shows(field["value"], on_form["values"]):
            problems.append(f"{where}: shows {on_form['values']!r}, expected {field['value']!r}")
    print(
        f"custom-run form: {len(expected)} fields checked ({len(shown)} labels on the form) in "
        f"{elapsed:.1f} s; screenshot {tmp_path / 'form.png'} (copy: {FORM_SHOT}); "
        f"{len(blocked)} external requests blocked"
    )
    assert not problems, "the Custom run form:\n" + "\n".join(problems)
    assert example_visible, f"{example!r} is not visible on the form"
    assert {field["path"][0] for field in expected if len(field["path"]) == 1} == {
        schema["properties"][g]["title"] for g in GROUPS
    }


# -- 2. a failed run's artifacts -------------------------------------------------------------


@pytest.fixture
def outputs_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """``segstyle serve --out <tmp>/out --port <free>`` in a subprocess: (out, its URL)."""
    out, port = tmp_path / "out", free_port()
    log_path = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "segstyle.flows.cli", "serve", "--out", str(out)]
            + ["--port", str(port)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log_text = log_path.read_text(errors="replace")
                raise RuntimeError(f"segstyle serve did not answer at {url}:\n{log_text}")
            time.sleep(0.3)
        yield out, url
    finally:
        stop_process_group(process, grace_s=10)


def _artifacts(server: PrefectService, flow_run_id: str) -> dict[str, Any]:
    """The flow run's keyed artifacts by kind (the key's last word: summary, report, ...)."""
    from uuid import UUID

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with server.client() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)])
            )
        )
    return {a.key.rsplit("-", 1)[-1]: a for a in found if a.key}


def _open_artifact(page: Any, base: str, flow_run_id: str, key: str) -> None:
    """From the flow run's Artifacts tab: the artifact's card, then its (only) version."""
    page.goto(f"{base}/runs/flow-run/{flow_run_id}")
    page.get_by_role("tab", name="Artifacts").click()
    page.locator(f'a[href$="/artifacts/key/{key}"]').first.click()
    page.locator('a[href*="/artifacts/artifact/"]').first.click()
    page.get_by_role("tab", name="Raw").wait_for()  # the artifact's own page


#: Root-level icons the Prefect 3.8.8 V2 UI asks its server for outside /v2 (a state's
#: favicon, ``/failed.svg``; ``/favicon-16x16.png``); the server has none there. Prefect's,
#: not this project's; listed in the test's output.
_PREFECT_ICON = re.compile(r"^/[\w.-]+\.(svg|png|ico)$")


def test_failed_run_artifacts_show_pictures_in_the_ui(
    prefect_server: PrefectService, outputs_server: tuple[Path, str], tmp_path: Path
) -> None:
    from urllib.parse import urlsplit

    from segstyle_core.demo.dataset import generate_demo_dataset

    started = time.monotonic()
    out, outputs_url = outputs_server
    dataset = generate_demo_dataset(
        tmp_path / "cityscapes", size=(256, 128), frames_per_city=3, cities=("zurich",)
    )
    images = sorted((dataset / "leftImg8bit" / "train" / "zurich").glob("*.png"))
    victim = images[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated PNG
    victim_id = victim.name.removesuffix("_leftImg8bit.png")

    command = [sys.executable, "-m", "segstyle.flows.cli", "run", "--dataset", str(dataset)]
    command += ["--city", "zurich", "--prompts", "gt-instances", "--segmenter", "grabcut"]
    command += ["--stylizer", "feedforward", "--out", str(out)]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=prefect_server.env(SEGSTYLE_OUTPUTS_URL=outputs_url),
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    ran = time.monotonic() - started
    assert done.returncode == 1, (
        f"expected exit 1 (some images failed), got {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr[-6000:]}"
    )
    flow_run_id = Path(done.stdout.strip().splitlines()[-1]).stem
    with prefect_server.client() as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None and state.is_failed(), state

    artifacts = _artifacts(prefect_server, flow_run_id)
    assert {"summary", "report", "outputs", "metrics"} <= set(artifacts), sorted(artifacts)
    with_file_urls = [
        kind
        for kind, a in artifacts.items()
        if "file://" in json.dumps([a.data, a.description], default=str)
    ]
    assert with_file_urls == [], f"artifacts with file:// links: {with_file_urls}"
    summary = str(artifacts["summary"].data)
    thumbnails = re.findall(r"!\[[^\]]*\]\((https?://[^)\s]+)\)", summary)
    report_urls = re.findall(r"\]\((https?://[^)\s]+/report\.html)\)", summary)
    assert thumbnails and all(u.startswith(outputs_url + "/") for u in thumbnails), summary
    assert report_urls and set(report_urls) == set(
        re.findall(r"\((https?://[^)\s]+)\)", str(artifacts["report"].data))
    ), (summary, artifacts["report"].data)
    assert victim_id.replace("_", "\\_") in summary  # the Failures section names the image

    base = _v2_base(prefect_server)
    outputs_origin = urlsplit(outputs_url).netloc
    responses: list[tuple[int, str]] = []
    failed_requests: list[str] = []
    blocked: list[str] = []
    with _browser_page(blocked) as page:
        page.on("response", lambda r: responses.append((r.status, r.url)))
        page.on("requestfailed", lambda r: failed_requests.append(f"{r.url} ({r.failure})"))

        # the run's page: Failed, with its four artifacts on the Artifacts tab
        page.goto(f"{base}/runs/flow-run/{flow_run_id}")
        page.get_by_role("tab", name="Artifacts").click()
        for artifact in artifacts.values():
            page.locator(f'a[href$="/artifacts/key/{artifact.key}"]').first.wait_for()
        run_failed = page.get_by_text("Failed", exact=True).first.is_visible()
        _screenshot(page, tmp_path / "artifacts-tab.png", ARTIFACTS_TAB_SHOT)

        # the summary: its thumbnails load
        _open_artifact(page, base, flow_run_id, artifacts["summary"].key)
        page.locator("img").nth(len(thumbnails) - 1).wait_for()
        summary_images = _loaded_images(page)
        summary_file_urls = _file_urls(page)
        summary_report_href = page.get_by_role("link", name="report.html").get_attribute("href")
        _screenshot(page, tmp_path / "summary.png", ARTIFACTS_SHOT)

        # the metrics table: how much of it fits at 1440 px (printed, not asserted)
        _open_artifact(page, base, flow_run_id, artifacts["metrics"].key)
        page.locator("table th").first.wait_for()
        table = page.evaluate(
            """() => { const t = document.querySelector('table');
                const box = t.parentElement.getBoundingClientRect();
                return {table: t.scrollWidth, shown: Math.round(box.width),
                        visible: [...t.querySelectorAll('th')]
                            .filter((h) => h.getBoundingClientRect().right <= box.right + 1)
                            .map((h) => h.textContent.trim())}; }"""
        )
        _screenshot(page, tmp_path / "metrics.png", TABLE_SHOT)

        # the report artifact's link, followed: report.html from segstyle serve
        _open_artifact(page, base, flow_run_id, artifacts["report"].key)
        page.get_by_role("link", name=re.compile(r"^report of ")).click()
        page.wait_for_url(report_urls[0])
        page.wait_for_load_state("load")
        report_images = _loaded_images(page)
        report_file_urls = _file_urls(page)
        _screenshot(page, tmp_path / "report.png", REPORT_SHOT)
    elapsed = time.monotonic() - started

    served_errors = [
        (status, url)
        for status, url in responses
        if status >= 400 and urlsplit(url).netloc == outputs_origin
    ]
    not_found = [
        (status, url)
        for status, url in responses
        if status == 404 and urlsplit(url).netloc != outputs_origin
    ]
    prefect_icons = [u for _, u in not_found if _PREFECT_ICON.match(urlsplit(u).path)]
    other_not_found = [(s, u) for s, u in not_found if u not in prefect_icons]
    print(
        f"failed run: CLI {ran:.1f} s, whole test {elapsed:.1f} s; metrics table "
        f"{table['table']} px wide in {table['shown']} px, columns in view: {table['visible']}; "
        f"Prefect UI icons not found: {sorted(set(prefect_icons))}; "
        f"{len(blocked)} external requests blocked; screenshots in {tmp_path}"
    )

    assert run_failed, "the flow run's page does not show Failed"
    shown_thumbnails = {i["src"]: i for i in summary_images}
    missing = [u for u in thumbnails if u not in shown_thumbnails]
    broken = [u for u in thumbnails if u in shown_thumbnails and shown_thumbnails[u]["width"] == 0]
    assert not missing and not broken, (
        f"summary thumbnails missing from the page: {missing}; not loaded: {broken}; "
        f"images on the page: {summary_images}"
    )
    assert summary_report_href == report_urls[0]
    assert report_images, "report.html shows no images"
    assert [i for i in report_images if i["width"] == 0 or not i["complete"]] == [], report_images
    assert summary_file_urls == [] and report_file_urls == []
    assert served_errors == [], f"segstyle serve answered errors: {served_errors}"
    assert [u for u in failed_requests if outputs_origin in u] == [], failed_requests
    assert other_not_found == [], f"404s: {other_not_found}"


def test_retry_from_the_ui_reruns_a_failed_run_computing_only_the_failed_image(
    prefect_server: PrefectService,
    deployed: dict[str, Any],
    worker: Path,
    tmp_path: Path,
) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from segstyle_core.demo.dataset import generate_demo_dataset

    dataset = generate_demo_dataset(
        tmp_path / "cityscapes", size=(256, 128), frames_per_city=3, cities=("zurich",)
    )
    images = sorted((dataset / "leftImg8bit" / "train" / "zurich").glob("*.png"))
    victim = images[1]
    victim_id = victim.name.removesuffix("_leftImg8bit.png")
    intact = victim.read_bytes()
    victim.write_bytes(intact[:200])  # a truncated PNG
    out = tmp_path / "out"
    params = _small_offline_params(deployed[DEPLOYMENT], dataset, out, limit=None)
    flow_run_id = _trigger(prefect_server, params)
    failed = _wait(prefect_server, flow_run_id, _final)
    worker_log = worker.read_text(errors="replace")
    assert failed.state is not None and failed.state.is_failed(), (failed.state, worker_log)
    victim.write_bytes(intact)  # the user puts the input right, then retries from the UI

    blocked: list[str] = []
    with _browser_page(blocked) as page:
        page.goto(f"{_v2_base(prefect_server)}/runs/flow-run/{flow_run_id}")
        page.get_by_text("Failed", exact=True).first.wait_for()
        page.get_by_role("button", name="Open menu").last.click()
        page.get_by_role("menuitem", name="Retry").click()
        dialog = page.get_by_role("alertdialog")  # the confirmation
        dialog.get_by_role("button", name="Retry").wait_for()
        assert "AwaitingRetry" in dialog.inner_text(), dialog.inner_text()
        _screenshot(page, tmp_path / "retry-dialog.png", RETRY_SHOT)
        dialog.get_by_role("button", name="Retry").click()
        dialog.wait_for(state="hidden")

    def retried(flow_run: Any) -> bool:
        return flow_run.run_count > 1 and _final(flow_run)

    done = _wait(prefect_server, flow_run_id, retried)
    worker_log = worker.read_text(errors="replace")
    assert done.run_count == 2 and done.state is not None, (done.state, worker_log[-6000:])
    assert done.state.is_completed(), (done.state, worker_log[-6000:])

    import pandas as pd

    parquet = sorted((out / "metrics").rglob("*.parquet"))
    assert [p.stem for p in parquet] == [flow_run_id], parquet  # one file: no double count
    frame = pd.read_parquet(parquet[0])
    assert set(frame["status"]) == {"ok"}, frame[["image_id", "status", "error"]]
    ids = set(frame["image_id"])
    assert victim_id in ids and len(ids) > 1, ids
    assert not frame.duplicated(subset=["image_id", "prompt_index"]).any()  # each row once
    segmented_again = frame.groupby("image_id")["cached_segment"].all().eq(False)
    assert set(segmented_again[segmented_again].index) == {victim_id}, segmented_again

    with prefect_server.client() as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[done.id]))
        )
    cached = {t.name for t in task_runs if t.state is not None and t.state.name == "Cached"}
    assert cached and not any(victim_id in name for name in cached), sorted(cached)
    for image_id in ids - {victim_id}:
        assert any(image_id in name for name in cached), (image_id, sorted(cached))
