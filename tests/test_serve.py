"""Run outputs over HTTP: the URL mapping, the loopback-only server, and the served report."""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import pandas as pd
import pytest

from segstyle.flows.serve import add_serve_command, check_loopback, make_app
from segstyle_core.errors import ConfigError
from segstyle_core.figures import panel
from segstyle_core.images import write_png
from segstyle_core.outputs import OUTPUTS_URL_ENV, output_link, outputs_url, served_path
from segstyle_core.report import write_report
from segstyle_core.results import COLUMNS, normalise_row

BASE = "http://127.0.0.1:4201"


# --- the URL mapping -------------------------------------------------------------------------


def test_output_link_maps_served_files_to_urls(tmp_path: Path) -> None:
    out = tmp_path / "out"
    panel_png = out / "runs" / "crimson-owl" / "zurich_000000_000019" / "panel.png"
    assert output_link(panel_png, out, BASE) == (
        f"{BASE}/runs/crimson-owl/zurich_000000_000019/panel.png"
    )
    assert output_link(panel_png, out, BASE + "/") == output_link(panel_png, out, BASE)
    # A prefix in the base URL is kept (a proxy path); odd characters are percent-encoded.
    odd = out / "runs" / "run #1" / "a b?.png"
    assert (
        output_link(odd, out, f"{BASE}/outputs") == f"{BASE}/outputs/runs/run%20%231/a%20b%3F.png"
    )
    parquet = out / "metrics" / "flow=segment_and_stylize" / "f00.parquet"
    assert (
        output_link(parquet, out, BASE) == f"{BASE}/metrics/flow%3Dsegment_and_stylize/f00.parquet"
    )


def test_output_link_without_a_url_is_the_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OUTPUTS_URL_ENV, raising=False)
    out = tmp_path / "out"
    report = out / "runs" / "r" / "report.html"
    assert output_link(report, out) == str(report.resolve())
    assert "file:" not in output_link(report, out)
    # Relative paths are taken from the current directory, as the flows write them.
    monkeypatch.chdir(tmp_path)
    assert output_link("out/runs/r/report.html", "out") == str(report.resolve())
    # Files the server does not serve stay paths, even with a URL: outside the root, in the
    # cache, the root itself, or a `..` that leaves it.
    for path in (
        tmp_path / "elsewhere.png",
        out / "cache" / "x.png",
        out / "runs",
        out / "runs" / ".." / ".." / "secret.png",
    ):
        assert output_link(path, out, BASE) == str(path.resolve()), path
    assert served_path(out / "runs" / "r" / "x.png", out) == "runs/r/x.png"


def test_the_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(OUTPUTS_URL_ENV, " http://127.0.0.1:4300/ ")
    assert outputs_url() == "http://127.0.0.1:4300"
    assert output_link(out / "runs" / "r" / "p.png", out) == "http://127.0.0.1:4300/runs/r/p.png"
    assert outputs_url({OUTPUTS_URL_ENV: ""}) is None
    assert outputs_url({}) is None
    for bad in ("127.0.0.1:4201", "file:///tmp/out", "http://", "http://h/?q=1"):
        with pytest.raises(ConfigError, match=OUTPUTS_URL_ENV):
            outputs_url({OUTPUTS_URL_ENV: bad})


# --- the server --------------------------------------------------------------------------------


def test_only_loopback_hosts_are_accepted() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert check_loopback(host) == host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org", ""):
        with pytest.raises(ConfigError, match="loopback"):
            check_loopback(host)


def test_serve_command_parses_its_options() -> None:
    parser = argparse.ArgumentParser(prog="segstyle")
    add_serve_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--out", "elsewhere", "--port", "5000"])
    assert (args.out, args.port, args.host) == ("elsewhere", 5000, "127.0.0.1")
    assert callable(args.handler)
    defaults = parser.parse_args(["serve"])
    assert (defaults.out, defaults.port) == ("artifacts", 4201)


def _row(**values: object) -> dict[str, object]:
    base = {"run_id": "r", "status": "ok", "classes": "car", "segmenter": "grabcut"}
    return normalise_row({**base, **values})


@pytest.fixture()
def out_root(tmp_path: Path) -> Path:
    """An ``out`` folder with a run (panels + report), a metrics file, a cache, and a file
    and a symlink that point outside it."""
    out = tmp_path / "out"
    run_dir = out / "runs" / "test run"
    rng = np.random.default_rng(0)
    rows = []
    for index, image_id in enumerate(["zurich_000000_000019", "zurich_000001_000019"]):
        path = run_dir / image_id / "panel.png"
        tile = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        write_png(path, panel([("original", tile)], image_id))
        rows.append(
            _row(
                image_id=image_id,
                prompt_index=0,
                instance_class="car",
                iou=0.2 + index / 2,
                iou_instance=0.5 + index / 4,
                panel_path=str(path),
            )
        )
    write_report(run_dir, pd.DataFrame(rows, columns=list(COLUMNS)), {}, "served", metric="iou")
    (out / "metrics").mkdir(parents=True)
    (out / "metrics" / "m.parquet").write_bytes(b"PAR1")
    (out / "cache").mkdir()
    (out / "cache" / "cached.png").write_bytes(b"not served")
    (tmp_path / "secret.txt").write_text("outside the served root")
    os.symlink(tmp_path / "secret.txt", run_dir / "escape.png")
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def server(out_root: Path) -> Iterator[str]:
    """``segstyle.flows.serve.serve`` in a subprocess on a free port; yields its base URL."""
    port = _free_port()
    code = (
        "import sys; from pathlib import Path; from segstyle.flows.serve import serve; "
        "serve(Path(sys.argv[1]), port=int(sys.argv[2]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(out_root), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"serve did not start: {output}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def _get(base: str, raw_path: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``raw_path`` exactly as written (no client-side ``..`` normalisation)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("GET", raw_path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_serve_serves_pngs_and_nothing_outside(server: str, out_root: Path) -> None:
    png = out_root / "runs" / "test run" / "zurich_000000_000019" / "panel.png"
    link = output_link(png, out_root, server)
    status, headers, body = _get(server, urlsplit(link).path)
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert headers["cache-control"] == "no-cache"
    assert body == png.read_bytes()
    status, _, body = _get(server, "/metrics/m.parquet")
    assert (status, body) == (200, b"PAR1")
    status, _, index = _get(server, "/")
    assert status == 200 and b'href="runs/test%20run/report.html"' in index
    for attempt in (
        "/runs/../../secret.txt",
        "/runs/%2e%2e/%2e%2e/secret.txt",
        "/runs/..%2f..%2fsecret.txt",
        "/runs/test%20run/../../../secret.txt",
        "/runs//etc/passwd",
        "/runs/test%20run/escape.png",  # a symlink out of the folder
        "/cache/cached.png",  # not a served folder
        "/runs/../cache/cached.png",
        "/metrics/../cache/cached.png",
    ):
        status, _, body = _get(server, attempt)
        assert status != 200, attempt
        assert b"outside the served root" not in body and b"not served" not in body, attempt


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img" or (tag == "a" and "href" in values):
            self.links.append(values.get("src") or values.get("href") or "")


def test_served_report_links_resolve(server: str, out_root: Path) -> None:
    """report.html at its output_link URL: every image and link on it loads (200, a PNG)."""
    report = out_root / "runs" / "test run" / "report.html"
    url = output_link(report, out_root, server)
    status, headers, body = _get(server, urlsplit(url).path)
    assert status == 200 and headers["content-type"].startswith("text/html")
    parser = _Links()
    parser.feed(body.decode("utf-8"))
    assert len(parser.links) == 4  # two panels, each an <img> inside an <a>
    for link in parser.links:
        target = urljoin(url, link)
        assert target.startswith(server + "/runs/test%20run/")
        status, headers, image = _get(server, urlsplit(target).path)
        assert (status, headers["content-type"]) == (200, "image/png"), target
        assert image.startswith(b"\x89PNG")


def test_make_app_creates_the_served_folders(tmp_path: Path) -> None:
    make_app(tmp_path / "fresh")
    assert (tmp_path / "fresh" / "runs").is_dir() and (tmp_path / "fresh" / "metrics").is_dir()
