"""Links to run outputs that a browser opens from the Prefect UI.

Chromium refuses ``file://`` links on an ``http://`` page, so the Prefect UI cannot open a
run's pictures or report from disk. ``segstyle serve --out DIR`` (:mod:`segstyle.flows.serve`)
serves them over HTTP on 127.0.0.1, and one setting tells the flows where::

    export SEGSTYLE_OUTPUTS_URL=http://127.0.0.1:4201

**What is served.** The root is the flows' ``out`` folder (``--out``, default ``artifacts``);
only its :data:`SERVED_FOLDERS` are reachable, under the same names, so a file's URL is the
setting plus its path relative to ``out`` (``$URL`` = ``SEGSTYLE_OUTPUTS_URL``)::

    <out>/runs/<run>/<image_id>/panel.png  ->  $URL/runs/<run>/<image_id>/panel.png
    <out>/runs/<run>/report.html           ->  $URL/runs/<run>/report.html
    <out>/metrics/flow=<flow>/<id>.parquet ->  $URL/metrics/flow%3D<flow>/<id>.parquet

The cache (``<out>/cache``) and logs are not served. The flow process and the server must see
the same folder: the flow's ``out`` and the server's ``--out`` name one directory.

Without the setting, a ``segstyle serve`` already running on 127.0.0.1 at
:data:`DEFAULT_PORT` (as ``make server`` starts it) is used when it serves the same folder
(:func:`local_server_url`). Otherwise :func:`output_link` gives the plain absolute file
path (never a ``file://`` URL) for the reader to open by hand. No Prefect here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote, urlsplit

from segstyle_core.errors import ConfigError

#: The environment variable: base URL of ``segstyle serve`` as the browser reaches it.
OUTPUTS_URL_ENV = "SEGSTYLE_OUTPUTS_URL"

#: ``segstyle serve``'s default port (the Prefect UI is on 4200).
DEFAULT_PORT = 4201

#: Folders of the ``out`` root that the server serves (and :func:`output_link` maps to URLs).
SERVED_FOLDERS = ("runs", "metrics")


def outputs_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``SEGSTYLE_OUTPUTS_URL`` without a trailing slash; ``None`` when unset/empty.

    Raises:
        ConfigError: the value is not an ``http(s)://host[:port][/prefix]`` URL.
    """
    value = (os.environ if environ is None else environ).get(OUTPUTS_URL_ENV, "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{OUTPUTS_URL_ENV}={value!r}: expected the address of `segstyle serve`, "
            f"e.g. http://127.0.0.1:{DEFAULT_PORT}"
        )
    return value.rstrip("/")


#: Path at which ``segstyle serve`` tells which folder it serves (JSON ``{"root": ...}``).
ROOT_PATH = "/segstyle-root"


def local_server_url(
    out_root: str | os.PathLike[str], port: int = DEFAULT_PORT, timeout: float = 0.3
) -> str | None:
    """``http://127.0.0.1:<port>`` when a ``segstyle serve`` there serves ``out_root``, else
    ``None`` (nothing listening, another folder, or no answer within ``timeout`` seconds)."""
    import json
    import urllib.request

    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(base + ROOT_PATH, timeout=timeout) as response:
            served = json.loads(response.read())["root"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return base if Path(served).resolve() == Path(out_root).resolve() else None


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
        out_root: the folder ``segstyle serve --out`` serves: the flows' ``out``.
        base_url: overrides the environment variable (``None``: read it).

    Raises:
        ConfigError: ``SEGSTYLE_OUTPUTS_URL`` is set but is not an http(s) URL.
    """
    base = base_url.rstrip("/") if base_url else outputs_url()
    relative = served_path(path, out_root)
    if base is None or relative is None:
        return str(Path(path).resolve())
    return f"{base}/{quote(relative, safe='/')}"
