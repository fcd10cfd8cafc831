"""`pgflow plugins`: every plugin this process would load, where it comes from, what it
registers and which hooks it implements; plugins that failed to load, with their error."""

from __future__ import annotations

import argparse
import sys

from pgflow.cli.parser import EXIT_ERROR, EXIT_OK, Subparsers, add_command
from pgflow.plugins import DISABLE_ENV, PLUGINS_ENV, describe_plugins


def register(commands: Subparsers) -> None:
    add_command(
        commands,
        "plugins",
        cmd_plugins,
        "List the plugins: where each comes from, what it registers, which hooks it implements. "
        f"Exit code 1 when one failed to load. Environment: {PLUGINS_ENV}, {DISABLE_ENV}.",
    )


def cmd_plugins(args: argparse.Namespace) -> int:
    found = describe_plugins()
    for info in found:
        state = " (disabled)" if info.disabled else " (FAILED TO LOAD)" if info.error else ""
        print(f"{info.name}{state}")
        print(f"  from: {info.origin}")
        if info.error:
            print(f"  error: {info.error}")
        if info.executors:
            print(f"  executors: {', '.join(info.executors)}")
        if info.serializers:
            print(f"  serializers: {', '.join(info.serializers)}")
        if info.type_adapters:
            print(f"  type adapters: {', '.join(info.type_adapters)}")
        if info.hooks:
            print(f"  hooks: {', '.join(info.hooks)}")
        elif not info.error and not info.disabled:
            # a plugin may stay idle as configured (pgflow-otel without a TracerProvider)
            print("  hooks: none (it does nothing as configured)")
    failed = [info.name for info in found if info.error]
    if failed:
        print(
            f"error: {len(failed)} plugin(s) failed to load: {', '.join(failed)}", file=sys.stderr
        )
        return EXIT_ERROR
    return EXIT_OK
