"""The run outputs over HTTP on loopback (``segstyle serve``), so the Prefect UI can show them:
under each root's prefix, the regular files (by ``lstat``: a FIFO is never opened) whose resolved
path stays inside its real ``runs/`` or ``metrics/`` folder, else 404; nothing is listed. A
``Host`` other than a loopback name or the bound host gets 400 (DNS rebinding). ``Cache-Control:
no-cache``: retries rewrite their PNGs."""

from __future__ import annotations

import contextlib
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

TRUSTED_HOSTS = ("127.0.0.1", "localhost", "[::1]")  # Host names accepted beside the bound host

NO_CACHE = {"Cache-Control": "no-cache"}


class _ConfinedFiles(StaticFiles):
    """The regular files under ``directory`` (a real folder, resolved at start), not cached."""

    async def check_config(self) -> None:
        """Checked at start; a folder removed later answers 404, not an error."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        """``(real path, lstat)`` of a file inside the folder, else ``("", None)``."""
        folder = Path(str(self.directory))
        target = Path(os.path.realpath(folder / path))
        if target.is_relative_to(folder):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                return str(target), os.lstat(target)
        return "", None

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(NO_CACHE)
        return response


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback address or ``localhost``, else :class:`ConfigError`."""
    with contextlib.suppress(ValueError):  # neither localhost nor an address
        if host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback:
            return host
    raise ConfigError(
        f"host {host!r}: segstyle serve binds loopback addresses only (127.0.0.1, ::1); "
        "reach it from another machine through an SSH tunnel (ssh -L 4201:127.0.0.1:4201)"
    )


def url_host(host: str) -> str:
    """``host`` as it appears in a URL and a ``Host`` header: IPv6 addresses in brackets."""
    return f"[{host.strip('[]')}]" if ":" in host else host


def served_folder(root: Path, name: str) -> Path:
    """``root/name`` as a real folder, created when missing, else :class:`ConfigError`."""
    folder = root / name
    if folder.is_symlink():
        raise ConfigError(
            f"{folder}: a symlink (to {os.readlink(folder)}); segstyle serve serves only real "
            "folders inside an out folder: replace it with a folder, or serve the out folder it "
            "belongs to"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder}: not a folder; segstyle serve serves {name}/ there") from None
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create it ({exc.strerror})") from None
    return folder


def root_prefixes(roots: Sequence[Path]) -> dict[str, Path]:
    """URL prefix -> resolved root: ``""`` for one root, else ``/<folder name>`` made URL-safe,
    with ``-2``, ``-3`` … where names repeat."""
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


def make_app(roots: Sequence[Path], host: str = "127.0.0.1") -> Starlette:
    """The app serving each root's ``SERVED_FOLDERS`` under its prefix, to ``host`` or loopback;
    ``/`` is a fixed page saying what is served, without listing any folder."""
    prefixes = root_prefixes(roots)
    items = "".join(
        f"<li>{html.escape(str(root))}: {html.escape(prefix)}/runs/&lt;run&gt;/report.html, "
        "…/&lt;run&gt;/&lt;image_id&gt;/&lt;file&gt;, "
        f"{html.escape(prefix)}/metrics/flow=&lt;flow&gt;/&lt;id&gt;.parquet</li>"
        for prefix, root in prefixes.items()
    )
    front_page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>segstyle outputs'
        f"</title></head><body><p>Run outputs for the Prefect UI's links (folders are not "
        f"listed):</p><ul>{items}</ul></body></html>"
    )
    listed = {"roots": [{"prefix": p, "root": str(r)} for p, r in prefixes.items()]}
    routes: list[Route | Mount] = [
        Route("/", lambda _: HTMLResponse(front_page, headers=NO_CACHE), methods=["GET", "HEAD"]),
        Route(ROOTS_PATH, lambda _: JSONResponse(listed, headers=NO_CACHE), methods=["GET"]),
        *(
            Mount(f"{prefix}/{name}", _ConfinedFiles(directory=served_folder(root, name)))
            for prefix, root in prefixes.items()
            for name in SERVED_FOLDERS
        ),
    ]
    hosts = [*TRUSTED_HOSTS, url_host(host).lower()]
    return Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, hosts)])


def serve(roots: Sequence[Path], host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve each out folder at ``http://host:port<prefix>`` until interrupted (port 0: a free
    one); :class:`ConfigError` for a non-loopback host, a bad folder or a taken port."""
    import uvicorn

    check_loopback(host)
    prefixes = root_prefixes(roots)
    app = make_app(list(prefixes.values()), host)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as exc:  # its strerror names the address again
        why = f"({os.strerror(exc.errno or 0)}); pick another port"
        raise ConfigError(f"cannot listen on {host}:{port} {why}") from None
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
    with sock, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        uvicorn.Server(config).run(sockets=[sock])
