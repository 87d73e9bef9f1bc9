"""``segstyle serve``: the run outputs over HTTP on 127.0.0.1, so the Prefect UI can show them.

Served: the regular files under ``runs/`` and ``metrics/`` of each ``--out``, under its
prefix (:func:`root_prefixes`). Roots are resolved once at start; a ``runs`` or ``metrics``
that is a symlink is refused (``runs -> /`` would serve the disk). A request is resolved
(symlinks, ``..``, escapes) and served only inside its folder's real path, as a regular file by
``lstat`` (a FIFO is never opened); else 404. Nothing is listed; ``/`` is a fixed page and
:data:`~segstyle_core.outputs.ROOTS_PATH` says which roots are served, so flows link only served
files. Loopback only, no authentication; a ``Host`` other than a loopback name or the bound
host answers 400 (DNS rebinding). ``Cache-Control: no-cache``: retries rewrite their PNGs.
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

#: ``Host`` header names (without the port) always accepted, beside the bound host.
TRUSTED_HOSTS = ("127.0.0.1", "localhost", "[::1]")

NO_CACHE = {"Cache-Control": "no-cache"}


class _ConfinedFiles(StaticFiles):
    """The regular files under ``folder``, a real folder resolved at start, not cached."""

    def __init__(self, folder: Path) -> None:
        super().__init__(directory=folder)
        self.folder = folder

    async def check_config(self) -> None:
        """Nothing: checked at start; a folder removed later answers 404, not an error."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """``(resolved path, its lstat)`` when ``path`` resolves inside the folder and exists;
        ``("", None)`` otherwise."""
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
    if host.lower() == "localhost":
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


def served_folder(root: Path, name: str) -> Path:
    """``root/name`` (``root`` resolved) as a real folder, created when missing.

    Raises:
        ConfigError: it is a symlink, not a folder, or cannot be created.
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
    """URL prefix -> resolved root: ``""`` for a single root; else ``/<folder name>`` made
    URL-safe, with ``-2``, ``-3`` … where names repeat."""
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
    items = "".join(
        f"<li>{html.escape(str(root))}: {html.escape(prefix)}/runs/&lt;run&gt;/report.html, "
        "…/&lt;run&gt;/&lt;image_id&gt;/&lt;file&gt;, "
        f"{html.escape(prefix)}/metrics/flow=&lt;flow&gt;/&lt;id&gt;.parquet</li>"
        for prefix, root in prefixes.items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>segstyle outputs'
        f"</title></head><body><p>Run outputs for the Prefect UI's links (folders are not "
        f"listed):</p><ul>{items}</ul></body></html>"
    )


def make_app(roots: Path | Sequence[Path], host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving the :data:`~segstyle_core.outputs.SERVED_FOLDERS` of each root
    under its prefix, to requests addressed to ``host`` or a loopback name.

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
    hosts = [*TRUSTED_HOSTS, url_host(host).lower()]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, hosts)])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:  # its strerror names the address again
        why = f"({os.strerror(exc.errno or 0)}); pick another with --port"
        raise ConfigError(f"cannot listen on {host}:{port} {why}") from None


def serve(roots: Path | Sequence[Path], host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve each root (``--out``) at ``http://host:port<prefix>`` until interrupted; port 0
    picks a free one.

    Raises:
        ConfigError: a non-loopback host, a bad served folder, or the port is taken.
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
    setting = f"prefect variable set {OUTPUTS_URL_VARIABLE} {address} --overwrite"
    tell = f"(Ctrl-C stops) for the flows: {setting} (or export {OUTPUTS_URL_ENV}={address})"
    print(f"{served}\n{tell}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=bound, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    finally:
        sock.close()
