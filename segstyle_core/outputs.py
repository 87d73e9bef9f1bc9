"""Where a run's outputs go (its folder, its published pictures) and the links to them that a
browser opens from the Prefect UI.

Chromium refuses ``file://`` links on an ``http://`` page, so ``segstyle serve --out DIR``
serves them over HTTP on 127.0.0.1. The flows find it through the Prefect Variable
:data:`OUTPUTS_URL_VARIABLE` (set by ``make deploy``) or, winning, the environment variable
:data:`OUTPUTS_URL_ENV`; without either, 127.0.0.1 at :data:`DEFAULT_PORT` is asked.

One server serves one or several ``out`` folders, each under its own URL prefix (empty for a
single folder), and of each only its :data:`SERVED_FOLDERS`::

    <out>/runs/<run>/<image_id>/panel.png  ->  $URL<prefix>/runs/<run>/<image_id>/panel.png
    <out>/metrics/flow=<flow>/<id>.parquet ->  $URL<prefix>/metrics/flow%3D<flow>/<id>.parquet

A flow links its files only when the server says (:data:`ROOTS_PATH`) it serves its ``out``;
otherwise its artifacts show absolute file paths and one line saying how to get links.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from segstyle_core.errors import ConfigError
from segstyle_core.fileio import copy_atomic

if TYPE_CHECKING:
    from segstyle_core.stagecache import StageRecord

#: Base URL of ``segstyle serve`` as the browser reaches it: the environment variable, and
#: the Prefect Variable.
OUTPUTS_URL_ENV = "SEGSTYLE_OUTPUTS_URL"
OUTPUTS_URL_VARIABLE = "segstyle-outputs-url"
DEFAULT_PORT = 4201  # the Prefect UI is on 4200
SERVED_FOLDERS = ("runs", "metrics")  # of each ``out`` root
#: Where ``segstyle serve`` lists its roots: ``{"roots": [{"prefix": "", "root": "/abs/out"}]}``
ROOTS_PATH = "/segstyle-roots"
#: How the setting is named in the hint line of an artifact without links.
SETTING = f"the Prefect Variable {OUTPUTS_URL_VARIABLE} (or {OUTPUTS_URL_ENV})"


def run_folder(out: str | os.PathLike[str], name: str, flow_run_id: str) -> Path:
    """``<out>/runs/<name>-<first 8 of the flow run id>``: a run's pictures and report."""
    return Path(out) / "runs" / f"{name}-{flow_run_id[:8]}"


#: Parquet path column -> (stage, output) that :func:`publish_pictures` copies.
PUBLISHED = {
    "mask_path": ("metrics", "mask"),
    "stylized_path": ("stylize", "stylized"),
    "composite_path": ("composite", "composite"),
    "panel_path": ("figures", "panel"),
}


def publish_pictures(
    image_id: str, run_dir: str | os.PathLike[str], records: Mapping[str, StageRecord]
) -> dict[str, str]:
    """Copy each stage's output PNG to ``<run_dir>/<image_id>/<output>.png`` (copies: the run
    folder survives the cache's cleanup); return column -> path of :data:`PUBLISHED`."""
    folder = Path(run_dir) / image_id
    placed = {}
    for column, (stage, output) in PUBLISHED.items():
        record = records.get(stage)
        if record is not None and output in record.outputs:
            placed[column] = str(copy_atomic(record.path(output), folder / f"{output}.png"))
    return placed


def check_outputs_url(value: str, source: str) -> str | None:
    """``value`` (of the setting ``source``) stripped of blanks and a trailing slash; ``None``
    when empty.

    Raises:
        ConfigError: the value is not an ``http(s)://host[:port][/prefix]`` URL.
    """
    value = value.strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{source}={value!r}: expected the address of `segstyle serve`, "
            f"e.g. http://127.0.0.1:{DEFAULT_PORT}"
        )
    return value.rstrip("/")


def outputs_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The checked value of ``SEGSTYLE_OUTPUTS_URL``; ``None`` when unset or empty."""
    value = (os.environ if environ is None else environ).get(OUTPUTS_URL_ENV, "")
    return check_outputs_url(value, OUTPUTS_URL_ENV)


@dataclass(frozen=True)
class ServedRoot:
    """One ``out`` folder a ``segstyle serve`` serves: its URL prefix and resolved path."""

    prefix: str
    root: Path


def served_roots(base_url: str, timeout: float = 2.0) -> list[ServedRoot] | None:
    """What the ``segstyle serve`` at ``base_url`` serves (its :data:`ROOTS_PATH`); ``None``
    when nothing answers there within ``timeout`` seconds or the answer is not that list."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(base_url + ROOTS_PATH, timeout=timeout) as response:
            listed = json.loads(response.read())["roots"]
        return [ServedRoot(str(entry["prefix"]), Path(entry["root"])) for entry in listed]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class LinkTarget:
    """Where a run's artifacts link: ``base_url`` (server address plus the ``out``'s prefix)
    when its ``out`` is served; else ``None`` and ``hint``, the line saying how to get links."""

    base_url: str | None
    hint: str | None = None


def link_target(
    out_root: str | os.PathLike[str], configured: str | None, timeout: float = 2.0
) -> LinkTarget:
    """Ask the outputs server at ``configured`` (``None``: 127.0.0.1 at :data:`DEFAULT_PORT`)
    whether it serves the run's ``out_root``, waiting ``timeout`` seconds at most."""
    url = configured or f"http://127.0.0.1:{DEFAULT_PORT}"
    out = Path(out_root).resolve()
    roots = served_roots(url, timeout)
    for served in roots or []:
        if served.root == out:
            return LinkTarget(url + served.prefix)
    command = f"segstyle serve --out {shlex.quote(str(out))}"
    if roots:
        listed = ", ".join(str(served.root) for served in roots)
        return LinkTarget(
            None,
            f"no links: the segstyle serve at {url} serves {listed}, not {out}; add "
            f"--out {shlex.quote(str(out))} to it (or run {command} and set {SETTING} to its "
            "address)",
        )
    return LinkTarget(
        None,
        f"no links: no segstyle serve answers at {url}; run {command} and set {SETTING} to "
        "its address",
    )


def is_url(link: str) -> bool:
    """True for the ``http(s)://`` links :func:`output_link` makes, False for file paths."""
    return link.startswith(("http://", "https://"))


def served_path(path: str | os.PathLike[str], out_root: str | os.PathLike[str]) -> str | None:
    """``path`` (relative: from the current directory) relative to ``out_root`` in POSIX form
    when the server serves it, else ``None``."""
    absolute, root = Path(path).resolve(), Path(out_root).resolve()
    if not absolute.is_relative_to(root):
        return None
    relative = absolute.relative_to(root)
    served = len(relative.parts) >= 2 and relative.parts[0] in SERVED_FOLDERS
    return relative.as_posix() if served else None


def output_link(
    path: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    base_url: str | None = None,
) -> str:
    """The link to an output file: ``<base_url>/<path relative to out_root>`` (percent-encoded)
    when the file is served and ``base_url`` or else ``SEGSTYLE_OUTPUTS_URL`` is set; otherwise
    the absolute file path.

    Raises:
        ConfigError: ``SEGSTYLE_OUTPUTS_URL`` is set but is not an http(s) URL.
    """
    base = base_url.rstrip("/") if base_url else outputs_url()
    relative = served_path(path, out_root)
    if base is None or relative is None:
        return str(Path(path).resolve())
    return f"{base}/{quote(relative, safe='/')}"
