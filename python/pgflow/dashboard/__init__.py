"""The web dashboard (`pgflow dashboard`): flows, runs, a run's DAG and tasks live, workers, and
optionally two actions (start, cancel). See docs/dashboard.md.

Needs the `dashboard` extra (`pip install 'pgflow-py[dashboard]'`: Starlette and uvicorn);
nothing else in pgflow imports this package, so the core does without them.
"""

from __future__ import annotations

from pgflow.dashboard.app import DashboardConfig, create_app

__all__ = ["DashboardConfig", "create_app"]
