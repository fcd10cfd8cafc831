"""`pgflow worker module:flow` when the user's module fails while being imported: one `error:`
line naming the failure and its place in the user's file, no traceback unless --debug.

No database is needed: flows are loaded before the worker connects (the DSN points nowhere, so
a module that loaded by mistake would fail differently).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing"

CASES = {
    "syntax": (
        'from pgflow import Flow\nflow = Flow("broken"\n',
        "SyntaxError: '(' was never closed",
        2,
        'flow = Flow("broken"',
    ),
    "flow_keyword": (
        'from pgflow import Flow\nflow = Flow("broken", retries=3)\n',
        "TypeError: Flow.__init__() got an unexpected keyword argument 'retries'",
        2,
        'flow = Flow("broken", retries=3)',
    ),
    "step_keyword": (
        'from pgflow import Flow\nflow = Flow("broken")\n\n@flow.step(retrys=2)\n'
        "def first(value):\n    return value\n",
        "unknown option 'retrys'",
        4,
        "@flow.step(retrys=2)",
    ),
    "missing_env": (
        'import os\nfrom pgflow import Flow\nTOKEN = os.environ["PGFLOW_TEST_NO_SUCH_TOKEN"]\n'
        'flow = Flow("broken")\n',
        "KeyError: 'PGFLOW_TEST_NO_SUCH_TOKEN'",
        3,
        'TOKEN = os.environ["PGFLOW_TEST_NO_SUCH_TOKEN"]',
    ),
    "missing_package": (
        'from pgflow import Flow\nimport pgflow_test_not_installed\nflow = Flow("broken")\n',
        "ModuleNotFoundError: No module named 'pgflow_test_not_installed'",
        2,
        "import pgflow_test_not_installed",
    ),
}


def run_worker(run_pgflow: Run, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH", "")]))
    return run_pgflow(
        "worker", "users_flows:flow", "--dsn", NOWHERE, *extra, env={"PYTHONPATH": path}
    )


@pytest.mark.parametrize("kind", list(CASES))
def test_an_import_failure_is_one_line_with_its_location(
    kind: str, tmp_path: Path, run_pgflow: Run
) -> None:
    source, reason, line, text = CASES[kind]
    module = tmp_path / "users_flows.py"
    module.write_text(source)
    result = run_worker(run_pgflow, tmp_path)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    error = result.stderr.rstrip("\n")
    assert error.startswith("error: "), error
    assert "internal error" not in error and "Traceback" not in error
    assert reason in error
    assert f"(at {module}:{line}: {text}" in error


def test_debug_adds_the_traceback(tmp_path: Path, run_pgflow: Run) -> None:
    source, reason, _, _ = CASES["missing_env"]
    (tmp_path / "users_flows.py").write_text(source)
    result = run_worker(run_pgflow, tmp_path, "--debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert reason in result.stderr.splitlines()[-1]
