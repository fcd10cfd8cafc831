"""The dashboard in a real browser: headless Chromium from Debian's packages, driven by
Playwright for Python pointed at that binary (no browser download). A real worker runs the
flows, the dashboard runs in a real uvicorn with actions on.

The test opens the runs page, starts a run from its form, watches the run's steps turn
completed in the DAG while the run moves (the live stream), then opens a failed task's
traceback, follows a run that a schedule started (the runs list's schedule column, the run's
page, the flow's schedules), and looks at the flows and workers pages. Screenshots go to the test's tmp_path (their
paths are printed; `pytest -s` shows them). Without chromium the test skips, except in CI
(`PGFLOW_CI=1`), where it fails: `.ci/run` installs chromium.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dashboard_helpers import (
    GATE,
    broken,
    fire_now,
    require_chromium,
    serve,
    wait_until,
    worker,
)

from pgflow.client import Client
from pgflow.dashboard import DashboardConfig

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

TIMEOUT_MS = 30_000
NONE = "\N{EN DASH}"  # what a page shows for no value


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = require_chromium()
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def shot(page: Any, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_start_a_run_watch_it_complete_and_read_a_traceback(
    db_dsn: str, conn: psycopg.Connection[Any], browser: Any, tmp_path: Path
) -> None:
    with (
        Client(db_dsn) as client,
        worker(db_dsn, gated=True),
        serve(DashboardConfig(dsn=db_dsn, allow_actions=True)) as url,
    ):
        failed_id = client.start(broken, {"why": "browser"})
        # a run started by a schedule's tick, and a paused schedule
        client.add_schedule(
            "dash_site",
            "nightly",
            "0 3 * * *",
            {"url": "https://example.org", "pages": 2},
            timezone="Europe/Paris",
        )
        client.add_schedule("dash_site", "hourly", "0 * * * *")
        client.pause_schedule("dash_site", "hourly")
        _, scheduled_id = fire_now(conn, "dash_site", "nightly")
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # the runs page lists the failed run; its form starts a run of dash_site
        page.goto(f"{url}/#/runs")
        page.wait_for_selector(f'#runs tr[data-run="{failed_id}"]')
        # the schedule column: the schedule and its tick for a scheduled run, empty otherwise
        assert page.inner_text(f'#runs tr[data-run="{scheduled_id}"] td.schedule').startswith(
            "nightly @ "
        )
        assert page.inner_text(f'#runs tr[data-run="{failed_id}"] td.schedule') == ""
        page.click("#start summary")
        page.select_option("select[name=start-flow]", "dash_site")
        page.fill("textarea[name=start-input]", '{"url": "https://example.org", "pages": 5}')
        shot(page, tmp_path, "1-runs-with-start-form")
        page.click("#start-run")
        page.wait_for_url("**/#/runs/*")
        run_id = page.url.rsplit("/", 1)[1]

        # the DAG turns colours live while the run moves: the map is done, publish is held
        page.wait_for_selector('#dag g.node[data-step="score"][data-status="completed"]')
        page.wait_for_selector('#dag g.node[data-step="publish"][data-status="started"]')
        assert page.get_attribute('#dag g.node[data-step="score"]', "data-type") == "map"
        assert "live" in page.inner_text("#live")
        shot(page, tmp_path, "2-run-moving")
        GATE.set()
        page.wait_for_selector('#dag g.node[data-step="publish"][data-status="completed"]')
        page.wait_for_selector('#dag g.node[data-step="only_x"][data-status="skipped"]')
        # (the page's policy forbids eval, so waits go through locators, not wait_for_function)
        expect(page.locator("#live")).to_have_text("finished", timeout=TIMEOUT_MS)
        # the task tables followed without a reload
        page.wait_for_selector('#step-publish tr.task[data-status="completed"]')
        assert page.inner_text("#run-head .badge") == "completed"
        assert page.locator('#step-score tr.task[data-status="completed"]').count() == 5
        # a large output: cut short, then shown whole
        page.click("#run-output button.show-all")
        expect(page.locator("#run-output pre")).to_contain_text('"pages": 5', timeout=TIMEOUT_MS)
        shot(page, tmp_path, "3-run-completed")
        assert client.status(run_id) == "completed"

        # a failed task: its error, and the traceback of its last attempt
        wait_until(lambda: client.status(failed_id) != "started", "the failing run to fail")
        page.goto(f"{url}/#/runs/{failed_id}")
        page.wait_for_selector('#dag g.node[data-step="explode"][data-status="failed"]')
        assert "ValueError: boom" in page.inner_text("#step-explode .task-error")
        page.click('#step-explode tr.attempt[data-attempt="2"] details.traceback summary')
        traceback = page.inner_text('#step-explode tr.attempt[data-attempt="2"] details pre')
        assert "Traceback" in traceback and "ValueError: boom" in traceback
        shot(page, tmp_path, "4-failed-task-traceback")

        # the scheduled run's page names its schedule; the schedule links to the flow's page
        page.goto(f"{url}/#/runs/{scheduled_id}")
        page.wait_for_selector("#run-schedule")
        assert page.inner_text("#run-schedule").startswith("nightly @ ")
        shot(page, tmp_path, "5-scheduled-run")
        page.click("#run-schedule a")
        page.wait_for_selector('#schedules tr[data-schedule="nightly"][data-state="active"]')
        nightly = '#schedules tr[data-schedule="nightly"]'
        assert page.inner_text(f"{nightly} td.last-run").startswith(scheduled_id[:8])
        assert page.inner_text(f"{nightly} td.next-tick") not in ("", NONE)
        # shown in the browser's time, and in the schedule's own time zone on hover
        there = page.get_attribute(f"{nightly} td.next-tick span", "title")
        assert there is not None and there.endswith("03:00:00 in Europe/Paris"), there
        assert page.inner_text('#schedules tr[data-schedule="hourly"] .badge') == "paused"
        assert page.inner_text('#schedules tr[data-schedule="hourly"] td.next-tick') == NONE
        page.wait_for_selector('#dag g.node[data-step="only_x"] circle.cond')
        shot(page, tmp_path, "6-flow-schedules-and-dag")
        page.click(f"{nightly} td.last-run a")
        page.wait_for_url(f"**/#/runs/{scheduled_id}")
        page.wait_for_selector("#run-schedule")

        # flows and workers
        page.goto(f"{url}/#/flows")
        page.wait_for_selector('#flows tr[data-flow="dash_site"]')
        schedules = page.inner_text('#flows tr[data-flow="dash_site"] td.schedules')
        assert schedules == "hourly (paused), nightly", schedules
        shot(page, tmp_path, "7-flows")
        page.goto(f"{url}/#/workers")
        page.wait_for_selector('#workers tr[data-state="live"]')
        shot(page, tmp_path, "8-workers")
        assert not errors, errors
