"""``segstyle serve``: the run outputs over HTTP on 127.0.0.1, so the Prefect UI can show them.

Starlette's :class:`~starlette.staticfiles.StaticFiles` (which refuses paths that leave its
folder, symlinks included) serves ``<out>/runs`` and ``<out>/metrics`` under ``/runs`` and
``/metrics``; uvicorn runs it. ``/`` lists the runs with links to their reports. The server
binds loopback addresses only: it has no authentication, so it is for the machine it runs on
(reach it from elsewhere through an SSH tunnel). Point the flows at it with
``SEGSTYLE_OUTPUTS_URL`` (see :mod:`segstyle_core.outputs`).
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import socket
import sys
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from segstyle_core.errors import ConfigError
from segstyle_core.outputs import DEFAULT_PORT, OUTPUTS_URL_ENV, ROOT_PATH, SERVED_FOLDERS

LOOPBACK_NAMES = ("localhost",)


class _OutputFiles(StaticFiles):
    """Static files that the browser revalidates on every view: a retried run rewrites its
    PNGs under the same names, and a cached old picture would show the failed attempt."""

    def file_response(self, *args: object, **kwargs: object) -> Response:
        response = super().file_response(*args, **kwargs)  # type: ignore[arg-type]
        response.headers["Cache-Control"] = "no-cache"
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


def _served_root(root: Path):  # type: ignore[no-untyped-def]
    """``{"root": <served folder>}``: lets a flow find out that this server serves its ``out``
    (:func:`segstyle_core.outputs.local_server_url`)."""

    async def served_root(request: Request) -> JSONResponse:
        return JSONResponse({"root": str(root)}, headers={"Cache-Control": "no-cache"})

    return served_root


def _index(root: Path):  # type: ignore[no-untyped-def]
    """The ``/`` page: each run folder (newest first) with a link to its report."""

    async def index(request: Request) -> HTMLResponse:
        runs_dir = root / "runs"
        runs = sorted(
            (p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else [],
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        items = []
        for run in runs:
            name = html.escape(run.name)
            href = html.escape(f"runs/{quote(run.name)}/report.html")
            items.append(
                f'<li><a href="{href}">{name}</a></li>'
                if (run / "report.html").is_file()
                else f"<li>{name} (no report yet)</li>"
            )
        body = "".join(items) or "<li>no runs yet</li>"
        return HTMLResponse(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            "<title>segstyle outputs</title></head><body>"
            f"<h1>segstyle runs in {html.escape(str(root))}</h1><ul>{body}</ul></body></html>",
            headers={"Cache-Control": "no-cache"},
        )

    return index


def make_app(root: Path) -> Starlette:
    """The ASGI app serving ``root``'s :data:`~segstyle_core.outputs.SERVED_FOLDERS`.

    Creates those folders when missing, so the server can start before the first run.
    """
    root = Path(root).resolve()
    routes: list[Route | Mount] = [
        Route("/", _index(root), methods=["GET", "HEAD"]),
        Route(ROOT_PATH, _served_root(root), methods=["GET"]),
    ]
    for name in SERVED_FOLDERS:
        (root / name).mkdir(parents=True, exist_ok=True)
        routes.append(Mount(f"/{name}", app=_OutputFiles(directory=root / name), name=name))
    return Starlette(routes=routes)


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


def serve(root: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve ``root/runs`` and ``root/metrics`` at ``http://host:port`` until interrupted.

    Args:
        root: the flows' ``out`` folder (``--out``): what ``SEGSTYLE_OUTPUTS_URL`` points at.
        host: a loopback address (see :func:`check_loopback`).
        port: TCP port; 0 picks a free one.

    Raises:
        ConfigError: a non-loopback host, or the port is taken.
    """
    import uvicorn

    check_loopback(host)
    root = Path(root).resolve()
    app = make_app(root)
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving {root / 'runs'} and {root / 'metrics'} at http://{shown}:{bound}/ "
        f"(Ctrl-C stops)\nfor the flows: export {OUTPUTS_URL_ENV}=http://{shown}:{bound}",
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


def _cmd_serve(args: argparse.Namespace) -> int:
    serve(Path(args.out), host=args.host, port=args.port)
    return 0


def add_serve_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    formatter_class: type[argparse.HelpFormatter] = argparse.ArgumentDefaultsHelpFormatter,
) -> argparse.ArgumentParser:
    """Add ``serve [--out DIR] [--port N] [--host ADDR]`` to ``commands``; return its parser.

    The parsed namespace's ``handler(args) -> int`` runs the server (exit status 0 on Ctrl-C);
    errors are :class:`~segstyle_core.errors.ConfigError`.
    """
    help_text = "serve run outputs over HTTP on 127.0.0.1 so the Prefect UI can show them"
    parser = commands.add_parser(
        "serve", help=help_text, description=help_text, formatter_class=formatter_class
    )
    parser.add_argument(
        "--out", default="artifacts", help="the flows' --out folder: its runs/ and metrics/"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address only")
    parser.set_defaults(handler=_cmd_serve)
    return parser
