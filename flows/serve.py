"""``segstyle serve``: the run outputs over HTTP on 127.0.0.1, so the Prefect UI can show them.

**What is served.** The regular files under ``<out>/runs`` and ``<out>/metrics`` of each
``--out``, at ``<prefix>/runs`` and ``<prefix>/metrics``, and nothing else. One ``--out`` has
the empty prefix (``/runs``, ``/metrics``); several each get ``/<folder name>`` (made
URL-safe, ``-2``, ``-3`` … where names repeat; see :func:`root_prefixes`).

- *Roots are fixed at start.* ``--out`` is resolved once (a symlinked ``--out`` is followed then,
  and the real folder it named stays the root). Each served folder must be a real folder
  directly inside it: a ``runs`` or ``metrics`` that is a symlink is refused at start (one
  line), since following it would serve whatever it points to (``runs -> /`` would serve the
  whole disk). Missing folders are created, so the server can start before the first run.
- *Each request is resolved.* The requested path is resolved (symlinks followed, ``..``
  applied, percent-escapes decoded) and served only when it lands inside its folder's real path
  fixed at start and is a regular file. A symlink that points out of the folder, or a served
  folder replaced by a symlink after start, answers 404, as do folders, FIFOs and devices
  (checked with ``lstat`` on the resolved path, so a FIFO is never opened; only a file
  swapped in between that check and the open, by someone who can write there, escapes it).
- *No listing.* ``/`` is a fixed page saying what is served; no folder's content is listed.
  ``/segstyle-roots`` (:data:`~segstyle_core.outputs.ROOTS_PATH`) answers
  ``{"roots": [{"prefix": ..., "root": <out>}, ...]}``, each resolved ``--out`` with its
  prefix, so a flow links only files that are served (:func:`segstyle_core.outputs.link_target`).
- *Loopback only.* The server binds loopback addresses only and has no authentication, so it is
  for the machine it runs on (reach it from elsewhere through an SSH tunnel). A request whose
  ``Host`` header is not ``127.0.0.1``, ``localhost``, ``[::1]`` or the bound host (any port)
  answers 400, so a web page cannot reach it through DNS rebinding.

Files answer ``Cache-Control: no-cache``. Point the flows at the server with the Prefect
Variable ``segstyle-outputs-url`` or ``SEGSTYLE_OUTPUTS_URL`` (see :mod:`segstyle_core.outputs`).
"""

from __future__ import annotations

import html
import ipaddress
import os
import re
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from segstyle_core.errors import ConfigError
from segstyle_core.outputs import (
    DEFAULT_PORT,
    OUTPUTS_URL_ENV,
    OUTPUTS_URL_VARIABLE,
    ROOTS_PATH,
    SERVED_FOLDERS,
)

LOOPBACK_NAMES = ("localhost",)

#: ``Host`` header names (without the port) always accepted; :func:`trusted_hosts` adds the
#: bound host.
TRUSTED_HOSTS = ("127.0.0.1", "localhost", "[::1]")

NO_CACHE = {"Cache-Control": "no-cache"}


class _ConfinedFiles(StaticFiles):
    """The regular files under ``folder``, a real folder resolved at start (see the module
    docstring); each answers ``Cache-Control: no-cache``, since a retried run rewrites its PNGs
    under the same names and a cached old picture would show the failed attempt."""

    def __init__(self, folder: Path) -> None:
        super().__init__(directory=folder)
        self.folder = folder

    async def check_config(self) -> None:
        """Nothing: :func:`served_folder` checked the folder at start, and a folder removed
        later answers 404 rather than an error."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """``(resolved path, its lstat)`` when ``path`` (relative to the folder) resolves inside
        the folder and exists; ``("", None)`` otherwise (an absolute ``path`` included)."""
        target = Path(os.path.realpath(self.folder / path))
        if not target.is_relative_to(self.folder):
            return "", None
        try:
            return str(target), os.lstat(target)
        except (FileNotFoundError, NotADirectoryError):
            return "", None

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(NO_CACHE)
        return response


def check_loopback(host: str) -> str:
    """``host`` when it is a loopback address (127.0.0.0/8, ::1) or ``localhost``.

    Raises:
        ConfigError: any other host; the server has no authentication.
    """
    if host.lower() in LOOPBACK_NAMES:
        return host
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"host {host!r}: segstyle serve binds loopback addresses only (127.0.0.1, ::1); "
            "reach it from another machine through an SSH tunnel (ssh -L 4201:127.0.0.1:4201)"
        )
    return host


def url_host(host: str) -> str:
    """``host`` as it appears in a URL and a ``Host`` header: IPv6 addresses in brackets."""
    return f"[{host.strip('[]')}]" if ":" in host else host


def trusted_hosts(host: str) -> list[str]:
    """The ``Host`` header names (without port) the server answers: :data:`TRUSTED_HOSTS` and
    the bound ``host``, lower-case."""
    return sorted({*TRUSTED_HOSTS, url_host(host).lower()})


def served_folder(root: Path, name: str) -> Path:
    """``root/name`` as a real folder, created when missing; ``root`` is already resolved.

    Raises:
        ConfigError: it is a symlink (which would serve whatever it points to), is not a
            folder, or cannot be created.
    """
    folder = root / name
    if folder.is_symlink():
        raise ConfigError(
            f"{folder}: a symlink (to {os.readlink(folder)}); segstyle serve serves only real "
            "folders inside --out: replace it with a folder, or serve the --out it belongs to"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder}: not a folder; segstyle serve serves {name}/ there") from None
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create it ({exc.strerror})") from None
    return folder


def root_prefixes(roots: Sequence[Path]) -> dict[str, Path]:
    """URL prefix -> resolved root: ``""`` for a single root (the same folder named twice is
    one root); else ``/<name>`` with characters other than letters, digits, ``.``, ``_`` and
    ``-`` made ``-``, and ``-2``, ``-3`` … added where names repeat."""
    unique = list(dict.fromkeys(Path(root).resolve() for root in roots))
    if len(unique) == 1:
        return {"": unique[0]}
    prefixes: dict[str, Path] = {}
    for root in unique:
        name = re.sub(r"[^A-Za-z0-9._-]", "-", root.name).strip(".") or "out"
        prefix, number = f"/{name}", 1
        while prefix in prefixes:
            number += 1
            prefix = f"/{name}-{number}"
        prefixes[prefix] = root
    return prefixes


def _front_page(prefixes: dict[str, Path]) -> str:
    """The fixed ``/`` page: what is served, without listing any folder."""
    sections = "".join(
        f"<h2>{html.escape(str(root))}</h2>"
        f"<ul><li>{html.escape(prefix)}/runs/&lt;run&gt;/report.html: a run's report</li>"
        f"<li>{html.escape(prefix)}/runs/&lt;run&gt;/&lt;image_id&gt;/&lt;file&gt;: an image's "
        f"outputs</li><li>{html.escape(prefix)}/metrics/flow=&lt;flow&gt;/&lt;id&gt;.parquet: "
        "a run's rows</li></ul>"
        for prefix, root in prefixes.items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>segstyle outputs</title></head><body><h1>segstyle outputs</h1>"
        f"<p>The run outputs of these folders, for the links in the Prefect UI:</p>{sections}"
        "<p>Folders are not listed.</p></body></html>"
    )


def make_app(roots: Path | Sequence[Path], host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving the :data:`~segstyle_core.outputs.SERVED_FOLDERS` of each root,
    under its prefix (:func:`root_prefixes`), to requests addressed to ``host`` or a loopback
    name (see the module docstring).

    Each root is resolved here, once, and its served folders are checked (and created when
    missing) by :func:`served_folder`.

    Raises:
        ConfigError: a served folder is a symlink, not a folder, or cannot be created.
    """
    prefixes = root_prefixes([roots] if isinstance(roots, Path) else roots)
    mounts = [
        Mount(f"{prefix}/{name}", _ConfinedFiles(served_folder(root, name)))
        for prefix, root in prefixes.items()
        for name in SERVED_FOLDERS
    ]
    front_page = _front_page(prefixes)
    listed = {"roots": [{"prefix": p, "root": str(r)} for p, r in prefixes.items()]}

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(front_page, headers=NO_CACHE)

    async def served_roots(request: Request) -> JSONResponse:
        return JSONResponse(listed, headers=NO_CACHE)

    routes: list[Route | Mount] = [
        Route("/", index, methods=["GET", "HEAD"]),
        Route(ROOTS_PATH, served_roots, methods=["GET"]),
        *mounts,
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts(host))],
    )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(roots: Path | Sequence[Path], host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve each root's ``runs`` and ``metrics`` at ``http://host:port<prefix>`` until
    interrupted.

    Args:
        roots: the flows' ``out`` folders (``--out``, one or several).
        host: a loopback address (see :func:`check_loopback`).
        port: TCP port; 0 picks a free one.

    Raises:
        ConfigError: a non-loopback host, a served folder that is a symlink or not a folder,
            or the port is taken.
    """
    import uvicorn

    check_loopback(host)
    prefixes = root_prefixes([roots] if isinstance(roots, Path) else roots)
    app = make_app(list(prefixes.values()), host)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    address = f"http://{url_host(host)}:{bound}"
    served = "\n".join(
        f"serving {root / 'runs'} and {root / 'metrics'} at {address}{prefix}/"
        for prefix, root in prefixes.items()
    )
    print(
        f"{served}\n(Ctrl-C stops) for the flows: prefect variable set {OUTPUTS_URL_VARIABLE} "
        f"{address} --overwrite (or export {OUTPUTS_URL_ENV}={address})",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(app, host=host, port=bound, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    finally:
        sock.close()
