"""The database fixtures (`db_dsn`, `conn`, ...) come from the repository's root conftest.py,
which pytest applies to every test below it; this plugin is tested in the pgflow repository,
against the pgflow next to it. Here: the acceptance helpers and the plugin's own source made
importable (whether or not the plugin is installed: `pip install -e` in CI)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
for path in (REPO / "tests" / "acceptance", Path(__file__).resolve().parents[1] / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
