"""The `pgflow` command: `app` (the entry point and error handling), `parser` (plumbing shared
by the command modules), one module per command group, and `progress` (the live status line)."""

from __future__ import annotations

from pgflow.cli.app import main

__all__ = ["main"]
