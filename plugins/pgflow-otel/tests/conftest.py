"""The project's test fixtures (tests/conftest.py: a fresh database per test, `db_dsn`, `conn`)
and its in-process worker helpers (tests/integration/worker_helpers.py), shared rather than
copied: this plugin is tested in the pgflow repository, against the pgflow next to it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
INTEGRATION = REPO / "tests" / "integration"
# the plugin's source, importable whether or not it is installed (`pip install -e` in CI)
SRC = Path(__file__).resolve().parents[1] / "src"
for path in (INTEGRATION, SRC):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

_spec = importlib.util.spec_from_file_location(
    "pgflow_tests_conftest", REPO / "tests" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
globals().update(
    {name: value for name, value in vars(_fixtures).items() if not name.startswith("__")}
)
