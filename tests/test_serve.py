"""Run outputs over HTTP: the URL mapping, the loopback-only server that serves only the regular
files inside its folders (no symlink out, no FIFO, no listing, no foreign Host), and the served
report."""

from __future__ import annotations

import contextlib
import http.client
import json
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

from segstyle_core.errors import ConfigError
from segstyle_core.figures import panel
from segstyle_core.images import write_png
from segstyle_core.outputs import (
    OUTPUTS_URL_ENV,
    ROOTS_PATH,
    link_target,
    output_link,
    outputs_url,
)
from segstyle_core.report import write_report
from segstyle_core.results import COLUMNS, normalise_row
from segstyle_core.serve import check_loopback, make_app

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
    assert output_link(out / "runs" / "r" / "x.png", out, BASE) == f"{BASE}/runs/r/x.png"


def test_the_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv(OUTPUTS_URL_ENV, " http://127.0.0.1:4300/ ")
    assert outputs_url() == "http://127.0.0.1:4300"
    assert output_link(out / "runs" / "r" / "p.png", out) == "http://127.0.0.1:4300/runs/r/p.png"
    monkeypatch.setenv(OUTPUTS_URL_ENV, "")
    assert outputs_url() is None
    monkeypatch.delenv(OUTPUTS_URL_ENV)
    assert outputs_url() is None
    for bad in ("127.0.0.1:4201", "file:///tmp/out", "http://", "http://h/?q=1"):
        monkeypatch.setenv(OUTPUTS_URL_ENV, bad)
        with pytest.raises(ConfigError, match=OUTPUTS_URL_ENV):
            outputs_url()


# --- the server --------------------------------------------------------------------------------


def test_only_loopback_hosts_are_accepted() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert check_loopback(host) == host
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org", ""):
        with pytest.raises(ConfigError, match="loopback"):
            check_loopback(host)


def test_serve_command_parses_its_options() -> None:
    from segstyle.flows.cli import Serve, parse

    command = parse(["serve", "--out", "elsewhere", "--port", "5000"])
    assert isinstance(command, Serve)
    assert (command.out, command.port, command.host) == (["elsewhere"], 5000, "127.0.0.1")
    defaults = parse(["serve"])
    assert isinstance(defaults, Serve) and (defaults.out, defaults.port) == (["artifacts"], 4201)
    several = parse(["serve", "--out", "a", "--out", "b c"])
    assert isinstance(several, Serve) and several.out == ["a", "b c"]


def _row(**values: object) -> dict[str, object]:
    base = {"run_id": "r", "status": "ok", "classes": "car", "segmenter": "grabcut"}
    return normalise_row({**base, **values})


SECRET = b"outside the served root"
PASSWD = "/etc/passwd"


@pytest.fixture()
def out_root(tmp_path: Path) -> Path:
    """An ``out`` folder with a run (panels + report), a metrics file and a cache, plus traps:
    symlinks out of ``runs`` (to a file beside ``out``, to /etc/passwd, a whole run folder),
    a symlink that stays inside, and a FIFO (no writer: opening it would block)."""
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
    (tmp_path / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", run_dir / "escape.png")
    os.symlink(PASSWD, run_dir / "passwd.png")
    os.symlink(run_dir / "zurich_000000_000019" / "panel.png", run_dir / "inside.png")
    elsewhere = tmp_path / "elsewhere run"
    elsewhere.mkdir()
    (elsewhere / "report.html").write_bytes(SECRET)
    os.symlink(elsewhere, out / "runs" / "linked run")
    os.mkfifo(run_dir / "pipe.png")
    os.symlink(run_dir / "pipe.png", run_dir / "pipe link.png")
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _serving(root: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """``segstyle_core.serve.serve([root], host)`` in a subprocess on a free port; yields its
    base URL."""
    port = _free_port()
    code = (
        "import sys; from pathlib import Path; from segstyle_core.serve import serve; "
        "serve([Path(sys.argv[1])], host=sys.argv[2], port=int(sys.argv[3]))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(root), host, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"serve did not start: {output}")
                time.sleep(0.2)
        yield f"http://{host}:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@contextlib.contextmanager
def _serving_app(roots: list[Path]) -> Iterator[str]:
    """``make_app(roots)`` under uvicorn in a thread of this process, on a free port."""
    import threading

    import uvicorn

    port = _free_port()
    config = uvicorn.Config(make_app(roots), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture()
def server(out_root: Path) -> Iterator[str]:
    """``out_root`` served on 127.0.0.1."""
    with _serving(out_root) as base:
        yield base


def _get(
    base: str, raw_path: str, host: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """``raw_path`` exactly as written (no client-side ``..`` normalisation), with ``host`` as
    the ``Host`` header when given; a hanging answer fails after 10 s."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(method, raw_path, headers={"Host": host} if host else {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


PANEL = "/runs/test%20run/zurich_000000_000019/panel.png"


def test_serve_serves_pngs_and_nothing_outside(server: str, out_root: Path) -> None:
    png = out_root / "runs" / "test run" / "zurich_000000_000019" / "panel.png"
    link = output_link(png, out_root, server)
    assert urlsplit(link).path == PANEL
    status, headers, body = _get(server, PANEL)
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert headers["cache-control"] == "no-cache"
    assert body == png.read_bytes()
    status, _, body = _get(server, "/metrics/m.parquet")
    assert (status, body) == (200, b"PAR1")
    # A symlink that stays inside its served folder is followed.
    assert _get(server, "/runs/test%20run/inside.png")[::2] == (200, png.read_bytes())
    passwd = Path(PASSWD).read_bytes()
    for attempt in (
        "/runs/../../secret.txt",
        "/runs/%2e%2e/%2e%2e/secret.txt",
        "/runs/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
        "/runs/..%2f..%2fsecret.txt",
        "/runs/..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/runs/test%20run/../../../secret.txt",
        "/runs//etc/passwd",
        "/runs/%2fetc%2fpasswd",
        "/runs/test%20run/escape.png",  # a symlink out of the folder
        "/runs/test%20run/passwd.png",  # a symlink to /etc/passwd
        "/runs/linked%20run/report.html",  # a run folder that is a symlink out
        "/runs/test%20run/%00.png",
        "/cache/cached.png",  # not a served folder
        "/runs/../cache/cached.png",
        "/metrics/../cache/cached.png",
        "/metrics/%2e%2e/cache/cached.png",
    ):
        status, _, body = _get(server, attempt)
        assert status in (400, 404), attempt
        assert SECRET not in body and b"not served" not in body, attempt
        assert passwd not in body, attempt


def test_a_fifo_is_not_served(server: str) -> None:
    """A FIFO (and a symlink to one) answers 404 at once: it is never opened, so a request
    cannot block on it (``_get`` fails after 10 s)."""
    for path in ("/runs/test%20run/pipe.png", "/runs/test%20run/pipe%20link.png"):
        for method in ("GET", "HEAD"):
            assert _get(server, path, method=method)[0] == 404, (path, method)


def test_nothing_is_listed(server: str) -> None:
    """``/`` is a fixed page that names no folder content; folders themselves answer 404."""
    status, headers, page = _get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/runs/&lt;run&gt;/report.html" in page
    for name in (b"test run", b"test%20run", b"linked", b"zurich", b"escape", b"m.parquet"):
        assert name not in page, name
    assert b"href=" not in page
    for folder in ("/runs", "/runs/", "/metrics/", "/runs/test%20run/", "/runs/linked%20run/"):
        status, _, body = _get(server, folder)
        assert status in (307, 404), folder
        assert b"zurich" not in body and b"report" not in body and b"m.parquet" not in body


def test_foreign_hosts_get_400(server: str) -> None:
    """DNS rebinding: a page of attacker.example resolving to 127.0.0.1 sends its own name."""
    port = urlsplit(server).port
    for host in (
        "attacker.example",
        f"attacker.example:{port}",
        "127.0.0.1.attacker.example",
        f"localhost.attacker.example:{port}",
        "127.0.0.2",  # a loopback address, but not the bound one
        "[::2]",
        "",
    ):
        for path in ("/", PANEL, ROOTS_PATH):
            status, _, body = _get(server, path, host=host or " ")
            assert status == 400, (host, path)
            assert not body.startswith(b"\x89PNG") and b"root" not in body, (host, path)
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", "LocalHost", "[::1]"):
        assert _get(server, PANEL, host=host)[0] == 200, host


def test_the_flows_find_the_server(server: str, out_root: Path, tmp_path: Path) -> None:
    """``link_target`` asks ``/segstyle-roots``: the resolved ``--out`` and its prefix (empty
    for one folder), nothing more."""
    status, _, body = _get(server, ROOTS_PATH)
    expected = {"roots": [{"prefix": "", "root": str(out_root.resolve())}]}
    assert (status, json.loads(body)) == (200, expected)
    assert link_target(out_root, server).base_url == server
    assert link_target(tmp_path / "other", server).base_url is None


def test_a_folder_swapped_for_a_symlink_after_start_serves_nothing(
    server: str, out_root: Path
) -> None:
    """The served folders' real paths are fixed at start: ``runs`` replaced by a symlink to
    ``/`` (or to its own old content) while the server runs leads nowhere."""
    assert _get(server, PANEL)[0] == 200
    runs = out_root / "runs"
    runs.rename(out_root / "old runs")
    runs.symlink_to("/")
    passwd = Path(PASSWD).read_bytes()
    for path in ("/runs/etc/passwd", "/runs/" + "%2e%2e/" * 8 + "etc/passwd"):
        status, _, body = _get(server, path)
        assert status == 404 and passwd not in body, path
    runs.unlink()
    runs.symlink_to(out_root / "old runs")
    assert _get(server, PANEL)[0] == 404


def test_symlinked_served_folders_are_refused_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``<out>/runs -> /`` would serve the whole disk: refused with one line, before binding."""
    from segstyle.flows.cli import EXIT_ERROR, main

    out = tmp_path / "out"
    out.mkdir()
    (out / "runs").symlink_to("/")
    with pytest.raises(ConfigError, match="runs: a symlink"):
        make_app([out])
    status = main(["serve", "--out", str(out), "--port", "0"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert status == EXIT_ERROR and line.startswith("segstyle: error: ")
    assert "symlink" in line and "replace it with a folder" in line
    (out / "runs").unlink()
    (out / "runs").mkdir()
    (out / "metrics").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="metrics: a symlink"):
        make_app([out])
    (out / "metrics").unlink()
    (out / "metrics").write_bytes(b"")
    with pytest.raises(ConfigError, match="metrics: not a folder"):
        make_app([out])


def test_a_symlinked_out_is_resolved_once(out_root: Path, tmp_path: Path) -> None:
    """``--out`` given as a symlink is resolved at start; pointing the link elsewhere later
    changes nothing that is served."""
    link = tmp_path / "out link"
    link.symlink_to(out_root)
    other = tmp_path / "other out"
    (other / "runs" / "test run" / "zurich_000000_000019").mkdir(parents=True)
    (other / "runs" / "test run" / "zurich_000000_000019" / "panel.png").write_bytes(SECRET)
    with _serving(link) as base:
        status, _, body = _get(base, ROOTS_PATH)
        roots = [{"prefix": "", "root": str(out_root.resolve())}]
        assert (status, json.loads(body)) == (200, {"roots": roots})
        status, _, served = _get(base, PANEL)
        assert status == 200 and served.startswith(b"\x89PNG")
        link.unlink()
        link.symlink_to(other)
        assert _get(base, PANEL)[::2] == (200, served)


def test_the_bound_host_name_is_accepted(out_root: Path) -> None:
    """Besides 127.0.0.1, localhost and [::1], the ``Host`` the server was started with."""
    with _serving(out_root, "127.0.0.2") as base:
        port = urlsplit(base).port
        for host in (f"127.0.0.2:{port}", f"localhost:{port}", "127.0.0.1"):
            assert _get(base, PANEL, host=host)[0] == 200, host
        assert _get(base, PANEL, host="attacker.example")[0] == 400


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
    make_app([tmp_path / "fresh"])
    assert (tmp_path / "fresh" / "runs").is_dir() and (tmp_path / "fresh" / "metrics").is_dir()


def test_several_outs_are_served_each_under_its_prefix(out_root: Path, tmp_path: Path) -> None:
    """``make_app([A, B])``: each root's files under its own prefix, nothing at the bare paths,
    and the confinement of each folder holds under a prefix too."""
    other = tmp_path / "other"
    (other / "runs" / "r").mkdir(parents=True)
    (other / "runs" / "r" / "p.png").write_bytes(b"\x89PNG other")
    with _serving_app([out_root, other]) as base:
        status, _, body = _get(base, ROOTS_PATH)
        assert json.loads(body)["roots"] == [
            {"prefix": "/out", "root": str(out_root.resolve())},
            {"prefix": "/other", "root": str(other.resolve())},
        ]
        assert _get(base, "/out" + PANEL)[0] == 200
        assert _get(base, "/other/runs/r/p.png")[::2] == (200, b"\x89PNG other")
        for path in (
            PANEL,
            "/other" + PANEL,
            "/out/runs/test%20run/escape.png",
            "/out/runs/" + "%2e%2e/" * 8 + "etc/passwd",
            "/out/cache/cached.png",
            "/out/runs/",
            "/other/runs/r",
        ):
            assert _get(base, path)[0] == 404, path
