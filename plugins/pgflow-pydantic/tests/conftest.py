"""The database fixtures (`db_dsn`, `conn`, ...) come from the repository's root conftest.py, and
the worker helpers from tests/integration/worker_helpers.py, shared rather than copied: this
plugin is tested in the pgflow repository, against the pgflow next to it.

The plugin must be registered before the flows of pydantic_flows.py are defined (at import, in
this process and in the process executor's children): CI installs it (entry point `pydantic`);
in a checkout where it is not installed, it is named in PGFLOW_PLUGINS, which the children
inherit, as an installed entry point would be found by them."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

from pgflow.plugins import PLUGINS_ENV, reset_plugin_manager

REPO = Path(__file__).resolve().parents[3]
# the plugin's source, importable whether or not it is installed (`pip install -e` in CI)
SRC = Path(__file__).resolve().parents[1] / "src"
HERE = Path(__file__).resolve().parent
for path in (REPO / "tests" / "integration", SRC, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

MODULE = "pgflow_pydantic"
if not importlib.metadata.entry_points(group="pgflow", name="pydantic"):
    listed = [name for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]
    if MODULE not in listed:
        os.environ[PLUGINS_ENV] = ",".join([*listed, MODULE])
        reset_plugin_manager()
