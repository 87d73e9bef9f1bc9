"""A throwaway PostgreSQL server for tests, from the distribution's packages.

:func:`postgres_server` runs ``initdb`` into a fresh temporary folder and starts ``postgres``
on a free port of 127.0.0.1 (trust authentication for the ``postgres`` role, its socket in the
same folder, durability off), and removes it all afterwards. PostgreSQL refuses to run as root:
under root both run as the ``postgres`` user that Debian's package creates. ::

    with postgres_server() as pg:
        pg.create_database("prefect")
        url = pg.url("prefect")  # postgresql+asyncpg://postgres@127.0.0.1:<port>/prefect
        pg.query("prefect", "SELECT count(*) FROM flow_run")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.prefect_service import free_port, stop_process_group

#: Why a test that needs PostgreSQL fails where it is not installed.
MISSING = (
    "PostgreSQL's server programs (initdb, postgres, psql) are not installed; on Debian: "
    "apt-get install -y postgresql"
)
_PROGRAMS = ("initdb", "postgres", "psql")
_SUPERUSER = "postgres"


def postgres_bindir() -> Path:
    """The folder holding ``initdb``, ``postgres`` and ``psql``: the ``initdb`` on ``PATH``,
    else Debian's newest ``/usr/lib/postgresql/<version>/bin``.

    Raises:
        RuntimeError: none found (the message says what to install).
    """
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    for bindir in candidates:
        if all((bindir / program).is_file() for program in _PROGRAMS):
            return bindir
    raise RuntimeError(MISSING)


@dataclass
class PostgresServer:
    """A running ``postgres`` on 127.0.0.1.

    Attributes:
        port: its TCP port.
        bindir: the folder of its programs (``psql`` among them).
        log_path: its log.
        process: the server process; it leads its own process group.
    """

    port: int
    bindir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (what ``PREFECT_API_DATABASE_CONNECTION_URL``
        takes)."""
        return f"postgresql+asyncpg://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def query(self, database: str, sql: str) -> list[str]:
        """``psql`` runs ``sql`` in ``database``; its output rows, columns joined by ``|``.

        Raises:
            AssertionError: ``psql`` failed (with its output).
        """
        done = subprocess.run(
            [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", _SUPERUSER]
            + ["-d", database, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"psql {sql!r} exited {done.returncode}: {done.stderr}")
        return done.stdout.splitlines()

    def create_database(self, database: str) -> None:
        """``CREATE DATABASE database``."""
        self.query("postgres", f'CREATE DATABASE "{database}"')


def _as_postgres_user() -> dict[str, Any]:
    """``subprocess`` arguments that run a program as the ``postgres`` user when this process
    is root (PostgreSQL refuses root), else nothing."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam(_SUPERUSER)
    except KeyError:
        message = f"running as root and there is no user {_SUPERUSER!r}; {MISSING}"
        raise RuntimeError(message) from None
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres_server(startup_timeout_s: float = 60) -> Iterator[PostgresServer]:
    """Initialise and start a PostgreSQL cluster in a new temporary folder; yield it; stop it
    and remove the folder.

    Raises:
        RuntimeError: PostgreSQL is not installed, or the server did not accept a query within
            ``startup_timeout_s`` (the message ends with its log).
    """
    bindir = postgres_bindir()
    owner = _as_postgres_user()
    # not under pytest's tmp_path: the postgres user may not enter root's 0700 folders
    base = Path(tempfile.mkdtemp(prefix="segstyle-test-postgres-"))
    try:
        if owner:
            os.chown(base, owner["user"], owner["group"])
        data, log_path = base / "data", base / "postgres.log"
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", _SUPERUSER, "--auth=trust"]
            + ["-E", "UTF8", "--no-sync"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **owner,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb exited {init.returncode}:\n{init.stdout}\n{init.stderr}")
        port = free_port()
        command = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port)]
        command += ["-k", str(base), "-c", "fsync=off", "-c", "synchronous_commit=off"]
        command += ["-c", "full_page_writes=off", "-c", "max_connections=200"]
        log: IO[bytes]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **owner,
            )
        server = PostgresServer(port=port, bindir=bindir, log_path=log_path, process=process)
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                try:
                    server.query("postgres", "SELECT 1")
                    break
                except AssertionError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{' '.join(command)} is not answering queries "
                            f"(exit status {process.poll()}); its log:\n"
                            + log_path.read_text(errors="replace")
                        ) from None
                    time.sleep(0.5)
            yield server
        finally:
            stop_process_group(process)
    finally:
        shutil.rmtree(base, ignore_errors=True)
