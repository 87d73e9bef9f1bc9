"""Where a run's outputs go, and the HTTP links to them that the Prefect UI shows (it refuses
``file://`` links): ``segstyle serve`` serves the :data:`SERVED_FOLDERS` of each ``out`` under its
URL prefix; the flows link only when the server at :data:`OUTPUTS_URL_ENV`, else the Prefect
Variable :data:`OUTPUTS_URL_VARIABLE`, else 127.0.0.1 at :data:`DEFAULT_PORT`, serves ``out``."""

from __future__ import annotations

import json
import os
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

OUTPUTS_URL_ENV = "SEGSTYLE_OUTPUTS_URL"
OUTPUTS_URL_VARIABLE = "segstyle-outputs-url"
DEFAULT_PORT = 4201  # the Prefect UI is on 4200
SERVED_FOLDERS = ("runs", "metrics")  # of each ``out`` root
#: Where ``segstyle serve`` lists its roots: ``{"roots": [{"prefix": "", "root": "/abs/out"}]}``
ROOTS_PATH = "/segstyle-roots"


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
    """Copy each stage's output PNG to ``<run_dir>/<image_id>/<output>.png``; return column ->
    path of :data:`PUBLISHED`."""
    folder = Path(run_dir) / image_id
    placed = {}
    for column, (stage, output) in PUBLISHED.items():
        record = records.get(stage)
        if record is not None and output in record.outputs:
            placed[column] = str(copy_atomic(record.path(output), folder / f"{output}.png"))
    return placed


def check_outputs_url(value: str, source: str) -> str | None:
    """``value`` (of the setting ``source``) stripped of blanks and a trailing slash, or
    ``None`` (ConfigError: not an ``http(s)://host[:port][/prefix]`` URL)."""
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


def outputs_url() -> str | None:
    """The checked value of ``SEGSTYLE_OUTPUTS_URL``; ``None`` when unset or empty."""
    return check_outputs_url(os.environ.get(OUTPUTS_URL_ENV, ""), OUTPUTS_URL_ENV)


def served_roots(base_url: str, timeout: float = 2.0) -> list[tuple[str, Path]] | None:
    """The ``(prefix, root)`` pairs the ``segstyle serve`` at ``base_url`` lists at
    :data:`ROOTS_PATH`; ``None`` when nothing answers that list within ``timeout`` seconds."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(base_url + ROOTS_PATH, timeout=timeout) as response:
            listed = json.loads(response.read())["roots"]
        return [(str(entry["prefix"]), Path(entry["root"])) for entry in listed]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class LinkTarget:
    """``base_url`` (server address plus prefix) of a served ``out``; else ``None``, with the
    server asked (``asked``) and the folders it serves (``served``; ``None``: no answer)."""

    base_url: str | None
    asked: str | None = None
    served: tuple[Path, ...] | None = None


def link_target(out_root: str | os.PathLike[str], configured: str | None) -> LinkTarget:
    """Ask the outputs server at ``configured`` (``None``: 127.0.0.1 at :data:`DEFAULT_PORT`)
    whether it serves ``out_root``."""
    url = configured or f"http://127.0.0.1:{DEFAULT_PORT}"
    out = Path(out_root).resolve()
    roots = served_roots(url)
    for prefix, root in roots or []:
        if root == out:
            return LinkTarget(url + prefix)
    return LinkTarget(None, url, tuple(root for _, root in roots) if roots else None)


def is_url(link: str) -> bool:
    """Whether ``link`` is an ``http(s)://`` link of :func:`output_link`, not a file path."""
    return link.startswith(("http://", "https://"))


def output_link(
    path: str | os.PathLike[str], out_root: str | os.PathLike[str], base_url: str | None = None
) -> str:
    """``<base_url or SEGSTYLE_OUTPUTS_URL>/<path relative to out_root>`` (percent-encoded) when
    the file is inside a :data:`SERVED_FOLDERS` folder of ``out_root`` and a URL is set
    (ConfigError: not a URL), else the absolute path."""
    base = base_url.rstrip("/") if base_url else outputs_url()
    absolute, root = Path(path).resolve(), Path(out_root).resolve()
    relative = absolute.relative_to(root).parts if absolute.is_relative_to(root) else ()
    if base is None or len(relative) < 2 or relative[0] not in SERVED_FOLDERS:
        return str(absolute)
    return f"{base}/{quote('/'.join(relative), safe='/')}"
