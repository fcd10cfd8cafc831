"""`pgflow dashboard` as a user runs it: off loopback it generates a token, prints it once and
refuses requests without it; on a database that is not migrated it says so and exits."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from acceptance_flows import pgflow_command, subprocess_env, wait_until
from servers import free_port

pytest.importorskip("uvicorn")  # the `dashboard` extra

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_off_loopback_a_generated_token_guards_every_request(db_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dashboard.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *pgflow_command(),
                "dashboard",
                "--dsn",
                db_dsn,
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )
    try:
        printed = wait_until(
            lambda: re.search(r"\?token=(\S+)", log.read_text()),
            timeout=60,
            what="the dashboard to print its URL",
            details=log.read_text,
        )
        token = printed.group(1)
        text = log.read_text()
        assert "generated now and is shown only this once" in text
        assert "actions (cancel, start runs): off" in text
        base = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                return httpx.get(f"{base}/api/flows", timeout=2).status_code == 401
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60, what="the dashboard to answer", details=log.read_text)
        with httpx.Client(base_url=base) as browser:
            opened = browser.get("/", params={"token": token}, follow_redirects=True)
            assert opened.status_code == 200 and "pgflow dashboard" in opened.text
            assert browser.get("/api/flows").json() == {"flows": []}
        headers = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{base}/api/workers", headers=headers).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert token not in log.read_text().replace(f"?token={token}", "")  # printed once only


def test_a_database_that_is_not_migrated_is_refused(empty_db_dsn: str, run_pgflow: Run) -> None:
    done = run_pgflow("dashboard", "--dsn", empty_db_dsn, "--port", str(free_port()), timeout=60)
    assert done.returncode == 1
    assert "pgflow db migrate" in done.stderr
