"""What the SQL's errors mean, in words that say what to do.

The SQL answers like pgflow: a bad definition or start violates a table constraint, named as in
pgflow (`slug_is_valid`, `steps_flow_slug_fkey`, ...), or raises pgflow's own message. The
Worker, the clients and the command line pass those errors through `explain`, which turns the
ones it knows (by constraint name, or by pgflow's message) into a `PgflowError` a person can act
on. Anything else is left as it is.
"""

from __future__ import annotations

import re
from typing import Final

import psycopg

from pgflow.errors import ConfigError, PgflowError

_SLUG_RULE: Final = (
    "a slug is 1 to 128 letters, digits and underscores, does not start with a digit, and is "
    'not the word "run"'
)
_MODES: Final = "'fail', 'skip' or 'skip-cascade'"

# constraint name -> what it means, with {value} for the offending value when it is known
_BY_CONSTRAINT: Final[dict[str, str]] = {
    "slug_is_valid": "invalid flow slug{value}: " + _SLUG_RULE,
    "slug_length_fits_queue_name": (
        "flow slug{value} is too long: a flow slug is also its pgmq queue name, limited to 47 "
        "characters"
    ),
    "steps_step_slug_check": "invalid step slug{value}: " + _SLUG_RULE,
    "steps_step_type_check": "a step's type must be 'single' or 'map'",
    "steps_flow_slug_fkey": (
        "flow{value} does not exist; create it with pgflow.create_flow before adding steps"
    ),
    "deps_flow_slug_dep_slug_fkey": (
        "a step depends on{value}, which is not a step of its flow; add the steps a step "
        "depends on before it"
    ),
    "deps_check": "a step cannot depend on itself",
    "steps_flow_slug_step_index_key": (
        "two steps of one flow were added at the same time; add a flow's steps one at a time"
    ),
    "map_has_at_most_one_dependency": "a map step maps over one array: give it one dependency at most",
    "when_unmet_is_valid": f"when_unmet must be {_MODES}",
    "when_exhausted_is_valid": f"when_exhausted must be {_MODES}",
    "required_input_pattern_is_object": "a condition (if_) must be a JSON object",
    "forbidden_input_pattern_is_object": "a condition (if_not) must be a JSON object",
    "opt_max_attempts_is_nonnegative": "max_attempts must be 0 or more",
    "opt_base_delay_is_nonnegative": "base_delay must be 0 seconds or more",
    "opt_timeout_is_positive": "timeout must be 1 second or more",
    "opt_start_delay_is_nonnegative": "start_delay must be 0 seconds or more",
    "runs_flow_slug_fkey": (
        "flow{value} does not exist in this database; start a worker that serves it (it defines "
        "the flow when it starts), or start the run with the Flow object instead of its slug"
    ),
}

_KEY_VALUE = re.compile(r"Key \((?P<columns>[^)]*)\)=\((?P<values>.*)\) is not present")
_FAILING_ROW = re.compile(r"Failing row contains \((?P<row>.*)\)")
# where a slug stands in a failing row of the table (flows: flow_slug; steps: step_slug)
_SLUG_COLUMN: Final = {"flows": 0, "steps": 1}
_ROOT_MAP = re.compile(r"^Flow (?P<flow>\S+) has root map steps but input is (?P<what>.*)$")


def explain(exc: psycopg.Error) -> PgflowError | None:
    """A `PgflowError` saying what went wrong and what to do, or None for an error this module
    does not know."""
    diag = exc.diag
    constraint = diag.constraint_name
    if constraint is not None and constraint in _BY_CONSTRAINT:
        value = _offending_value(exc)
        return ConfigError(_BY_CONSTRAINT[constraint].format(value=f" {value!r}" if value else ""))
    if isinstance(exc, psycopg.errors.NotNullViolation) and (diag.table_name, diag.column_name) == (
        "runs",
        "input",
    ):
        return ConfigError(
            "a run's input must not be SQL NULL; pass a JSON value (None in Python is JSON null)"
        )
    message = diag.message_primary or ""
    root_map = _ROOT_MAP.match(message)
    if root_map is not None:
        return ConfigError(
            f"flow {root_map['flow']!r} maps over its input, which must be a JSON array (it is "
            f"{root_map['what']}); start it with a list"
        )
    if message.startswith("Map step ") and "at most one dependency" in message:
        return ConfigError(f"{message}; a map step maps over one array")
    return None


def _offending_value(exc: psycopg.Error) -> str | None:
    detail = exc.diag.message_detail or ""
    key = _KEY_VALUE.search(detail)
    if key is not None:
        # a composite key: the last column is the one that is missing (flow_slug, dep_slug)
        return key["values"].split(", ")[-1]
    row = _FAILING_ROW.search(detail)
    column = _SLUG_COLUMN.get(exc.diag.table_name or "")
    if row is not None and column is not None:
        values = row["row"].split(", ")
        return values[column] if len(values) > column else None
    return None
