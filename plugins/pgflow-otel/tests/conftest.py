"""The database fixtures (`db_dsn`, `conn`, ...) come from the repository's root conftest.py, and
the in-process worker helpers from tests/integration/worker_helpers.py, shared rather than
copied: this plugin is tested in the pgflow repository, against the pgflow next to it."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
INTEGRATION = REPO / "tests" / "integration"
# the plugin's source, importable whether or not it is installed (`pip install -e` in CI)
SRC = Path(__file__).resolve().parents[1] / "src"
for path in (INTEGRATION, SRC):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
