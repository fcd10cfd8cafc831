"""`pgflow flows list|show`: flow definitions as the database holds them (through `Client`)."""

from __future__ import annotations

import argparse
import json

from pgflow.cli.parser import EXIT_OK, Subparsers, add_command, add_group, database
from pgflow.client import Client


def register(commands: Subparsers) -> None:
    flows = add_group(commands, "flows", "List and inspect flow definitions.")
    add_command(flows, "list", cmd_flows_list, "Flows defined in the database.")
    p = add_command(flows, "show", cmd_flows_show, "A flow's steps and options.")
    p.add_argument("flow", metavar="FLOW")


def cmd_flows_list(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        flows = client.flows()
    if not flows:
        print("no flows (a worker defines its flows when it starts)")
        return EXIT_OK
    print(f"{'flow':<30} {'steps':>5} {'runs':>8}  created")
    for flow in flows:
        print(
            f"{flow.flow_slug:<30} {flow.step_count:>5} {flow.run_count:>8}  "
            f"{flow.created_at:%Y-%m-%d %H:%M:%S}"
        )
    return EXIT_OK


def cmd_flows_show(args: argparse.Namespace) -> int:
    with Client(database(args)) as client:
        flow = client.flow(args.flow)
    print(
        f"flow {flow.flow_slug}: max_attempts {flow.max_attempts}, base_delay {flow.base_delay}s, "
        f"timeout {flow.timeout}s"
    )
    for step in flow.steps:
        line = f"  {step.step_slug} [{step.step_type}]"
        if step.dependencies:
            line += f" after {', '.join(step.dependencies)}"
        line += (
            f"  attempts {step.max_attempts}, base_delay {step.base_delay}s, "
            f"timeout {step.timeout}s"
        )
        if step.start_delay:
            line += f", start_delay {step.start_delay}s"
        required, forbidden = step.required_input_pattern, step.forbidden_input_pattern
        if required is not None or forbidden is not None:
            line += f", if {json.dumps(required)} if_not {json.dumps(forbidden)} (else {step.when_unmet})"
        if step.when_exhausted != "fail":
            line += f", when exhausted: {step.when_exhausted}"
        print(line)
    return EXIT_OK
