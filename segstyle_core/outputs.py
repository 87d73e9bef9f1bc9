"""Links to run outputs that a browser opens from the Prefect UI.

Chromium refuses ``file://`` links on an ``http://`` page, so the Prefect UI cannot open a
run's pictures or report from disk. ``segstyle serve --out DIR`` (:mod:`segstyle.flows.serve`)
serves them over HTTP on 127.0.0.1; one setting tells the flows where, either for every run of
a Prefect server (the Prefect Variable :data:`OUTPUTS_URL_VARIABLE`, which ``make deploy``
sets from ``OUTPUTS_PORT``) or for one process (the environment variable
:data:`OUTPUTS_URL_ENV`, which wins)::

    prefect variable set segstyle-outputs-url http://127.0.0.1:4201 --overwrite
    export SEGSTYLE_OUTPUTS_URL=http://127.0.0.1:4201

Without either, a ``segstyle serve`` on 127.0.0.1 at :data:`DEFAULT_PORT` is asked.

**What is served.** One server serves one or several ``out`` folders, each under its own URL
prefix (empty for a single folder); of each, only its :data:`SERVED_FOLDERS` are reachable, so
a file's URL is the address, the folder's prefix, and its path relative to ``out``::

    <out>/runs/<run>/<image_id>/panel.png  ->  $URL<prefix>/runs/<run>/<image_id>/panel.png
    <out>/runs/<run>/report.html           ->  $URL<prefix>/runs/<run>/report.html
    <out>/metrics/flow=<flow>/<id>.parquet ->  $URL<prefix>/metrics/flow%3D<flow>/<id>.parquet

The cache (``<out>/cache``) and logs are not served.

**Links only to what is served.** A flow asks the server which folders it serves
(:data:`ROOTS_PATH`, :func:`served_roots`) and links its files only when its ``out`` is one of
them (:func:`link_target`); otherwise its artifacts show plain absolute file paths (never a
``file://`` URL) and one line saying how to get links. No Prefect here.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from segstyle_core.errors import ConfigError

#: The environment variable: base URL of ``segstyle serve`` as the browser reaches it.
OUTPUTS_URL_ENV = "SEGSTYLE_OUTPUTS_URL"

#: The Prefect Variable holding the same URL for every run of a server (``make deploy``).
OUTPUTS_URL_VARIABLE = "segstyle-outputs-url"

#: ``segstyle serve``'s default port (the Prefect UI is on 4200).
DEFAULT_PORT = 4201

#: Folders of each ``out`` root that the server serves (and :func:`output_link` maps to URLs).
SERVED_FOLDERS = ("runs", "metrics")

#: Path at which ``segstyle serve`` lists what it serves:
#: ``{"roots": [{"prefix": "", "root": "/abs/out"}, ...]}``.
ROOTS_PATH = "/segstyle-roots"

#: How the setting is named in the hint line of an artifact without links.
SETTING = f"the Prefect Variable {OUTPUTS_URL_VARIABLE} (or {OUTPUTS_URL_ENV})"


def check_outputs_url(value: str, source: str) -> str | None:
    """``value`` without surrounding blanks and a trailing slash; ``None`` when empty.

    Args:
        value: the setting's value.
        source: the setting's name, for the error.

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
    """The value of ``SEGSTYLE_OUTPUTS_URL`` (see :func:`check_outputs_url`); ``None`` when
    unset or empty.

    Raises:
        ConfigError: the value is not an ``http(s)://host[:port][/prefix]`` URL.
    """
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
    """Where a run's artifacts link: ``base_url`` (the server's address plus the prefix of the
    run's ``out``) when its ``out`` is served; else ``None`` and ``hint``, the one line saying
    how to get links."""

    base_url: str | None
    hint: str | None = None


def link_target(
    out_root: str | os.PathLike[str], configured: str | None, timeout: float = 2.0
) -> LinkTarget:
    """Ask the outputs server whether it serves ``out_root``.

    Args:
        out_root: the run's ``out`` folder.
        configured: the setting's URL; ``None``: ``http://127.0.0.1:<DEFAULT_PORT>``.
        timeout: seconds to wait for the server's answer.
    """
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
    """``path`` relative to ``out_root`` in POSIX form when the server serves it, else ``None``.

    Relative paths are taken from the current directory, as the flows write them.
    """
    absolute = Path(path).resolve()
    try:
        relative = absolute.relative_to(Path(out_root).resolve())
    except ValueError:
        return None
    if len(relative.parts) < 2 or relative.parts[0] not in SERVED_FOLDERS:
        return None
    return relative.as_posix()


def output_link(
    path: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    base_url: str | None = None,
) -> str:
    """The link to an output file for an artifact or a page outside the run folder.

    ``<base_url>/<path relative to out_root>`` (each segment percent-encoded) when a base URL
    is given or ``SEGSTYLE_OUTPUTS_URL`` is set and the file lies in a served folder of
    ``out_root`` (see :data:`SERVED_FOLDERS`); otherwise the absolute file path.

    Args:
        path: a file under ``out_root`` (e.g. ``<out>/runs/<run>/<image_id>/panel.png``).
        out_root: a folder ``segstyle serve --out`` serves: the flows' ``out``.
        base_url: the server's address plus ``out_root``'s prefix (:func:`link_target`);
            ``None``: the environment variable.

    Raises:
        ConfigError: ``SEGSTYLE_OUTPUTS_URL`` is set but is not an http(s) URL.
    """
    base = base_url.rstrip("/") if base_url else outputs_url()
    relative = served_path(path, out_root)
    if base is None or relative is None:
        return str(Path(path).resolve())
    return f"{base}/{quote(relative, safe='/')}"
