"""`pgflow dashboard`: serve the web dashboard (the `dashboard` extra: Starlette and uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, database, positive_int
from pgflow.client import Client
from pgflow.db.dsn import redact
from pgflow.errors import ConfigError

TOKEN_ENV = "PGFLOW_DASHBOARD_TOKEN"
EXTRA_HINT = "pip install 'pgflow-py[dashboard]'"


def register(commands: Subparsers) -> None:
    p = add_command(
        commands,
        "dashboard",
        cmd_dashboard,
        "Serve the web dashboard: flows, runs, a run's DAG live, workers.",
    )
    p.add_argument("--port", type=positive_int, default=8008, help="TCP port (default 8008)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1); any other than loopback requires a token",
    )
    p.add_argument(
        "--token",
        default=None,
        help=f"a token every request must carry (default ${TOKEN_ENV}; off loopback, one is "
        "generated and printed when none is given)",
    )
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow cancelling and starting runs from the dashboard",
    )


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from pgflow.dashboard import DashboardConfig, create_app
        from pgflow.dashboard.security import is_loopback, new_token
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs the `dashboard` extra ({exc.name} is missing): {EXTRA_HINT}"
        ) from None
    dsn = database(args)
    with Client(dsn) as client:
        client.flows()  # says now, not at the first page, when the database is not migrated
    token = args.token or os.environ.get(TOKEN_ENV) or None
    generated = False
    if token is None and not is_loopback(args.host):
        token, generated = new_token(), True
    app = create_app(
        DashboardConfig(dsn=dsn, host=args.host, token=token, allow_actions=args.allow_actions)
    )
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if args.host in ("0.0.0.0", "::"):
        shown_host = "<this machine's address>"
    url = f"http://{shown_host}:{args.port}/"
    print(f"pgflow dashboard for {redact(dsn)}", file=sys.stderr)
    if token is None:
        print(f"open {url} (loopback only, no token)", file=sys.stderr)
    else:
        print(f"open {url}?token={token if generated else '<your token>'}", file=sys.stderr)
        print(
            "every request must carry the token (Authorization: Bearer <token>, or the cookie "
            "that opening the URL above sets)"
            + ("; it was generated now and is shown only this once" if generated else ""),
            file=sys.stderr,
        )
    print(
        "actions (cancel, start runs): "
        + ("on" if args.allow_actions else "off (--allow-actions turns them on)"),
        file=sys.stderr,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2
    )
    return EXIT_OK
