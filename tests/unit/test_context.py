"""`Context.headers`, `schedule` and `scheduled_at`, the parsing of the tick header they share
with the client, and the worker's per-run cache of headers."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timezone

import pytest

from pgflow import RunHeadersUnavailable
from pgflow.context import SCHEDULE_HEADER, SCHEDULED_AT_HEADER, Context, parse_scheduled_at
from pgflow.worker.run_headers import RunHeadersCache

RUN_ID = "00000000-0000-0000-0000-000000000001"


def make_context(load_run_headers: object = None) -> Context:
    return Context(
        run_id=RUN_ID,
        flow_slug="f",
        step_slug="s",
        task_index=0,
        attempt=1,
        shutdown=threading.Event(),
        load_run_headers=load_run_headers,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what fire_schedule_ticks writes
        ("2025-03-30T01:00:00.000000Z", datetime(2025, 3, 30, 1, tzinfo=timezone.utc)),
        ("2024-02-29T23:59:59.123456Z", datetime(2024, 2, 29, 23, 59, 59, 123456, timezone.utc)),
        # shorter forms of the same
        ("2025-03-30T01:00:07.5Z", datetime(2025, 3, 30, 1, 0, 7, 500000, timezone.utc)),
        ("2025-03-30T01:00:07Z", datetime(2025, 3, 30, 1, 0, 7, tzinfo=timezone.utc)),
        ("2025-03-30T01:02Z", datetime(2025, 3, 30, 1, 2, tzinfo=timezone.utc)),
        # not an instant, or not in UTC's form: no tick, never an error
        ("2025-13-01T00:00:00Z", None),
        ("2025-02-30T00:00:00Z", None),
        ("2025-03-30T24:00:00Z", None),
        ("2025-03-30T01:00:00+01:00", None),
        ("2025-03-30T01:00:00", None),
        ("2025-03-30 01:00:00Z", None),
        ("2025-03-30T01:00:00.1234567Z", None),
        ("\uff12\uff10\uff12\uff15-03-30T01:00:00Z", None),  # digits other than ASCII
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_scheduled_at(text: str | None, expected: datetime | None) -> None:
    assert parse_scheduled_at(text) == expected


def test_headers_are_loaded_on_first_use_then_kept_read_only() -> None:
    calls: list[str] = []

    def load(run_id: str) -> Mapping[str, str]:
        calls.append(run_id)
        return {SCHEDULE_HEADER: "nightly", SCHEDULED_AT_HEADER: "2025-03-30T01:00:00.000000Z"}

    ctx = make_context(load)
    assert calls == []
    assert ctx.schedule == "nightly"
    assert ctx.scheduled_at == datetime(2025, 3, 30, 1, tzinfo=timezone.utc)
    assert ctx.headers[SCHEDULE_HEADER] == "nightly"
    assert calls == [RUN_ID]
    with pytest.raises(TypeError):
        ctx.headers["x"] = "y"  # type: ignore[index]


def test_a_run_without_headers_has_no_schedule() -> None:
    ctx = make_context(lambda run_id: {})
    assert dict(ctx.headers) == {}
    assert ctx.schedule is None
    assert ctx.scheduled_at is None


def test_without_a_loader_reading_headers_says_what_to_do() -> None:
    ctx = make_context()
    for read in (lambda: ctx.headers, lambda: ctx.schedule, lambda: ctx.scheduled_at):
        with pytest.raises(RunHeadersUnavailable) as caught:
            read()
        message = str(caught.value)
        assert RUN_ID in message and "f.s" in message
        assert "pass `load_run_headers` when creating the executor" in message


def test_the_cache_fetches_each_run_once_even_when_tasks_ask_together() -> None:
    fetched: list[str] = []
    release = threading.Event()

    def fetch(run_id: str) -> Mapping[str, str]:
        fetched.append(run_id)
        release.wait(10)
        return {"run": run_id}

    cache = RunHeadersCache(fetch, max_runs=2)
    seen: list[Mapping[str, str]] = []
    readers = [threading.Thread(target=lambda: seen.append(cache.get("a"))) for _ in range(8)]
    for reader in readers:
        reader.start()
    release.set()
    for reader in readers:
        reader.join(10)
    assert fetched == ["a"]
    assert len(seen) == 8 and all(s is seen[0] for s in seen)
    with pytest.raises(TypeError):
        seen[0]["run"] = "b"  # type: ignore[index]
    # bounded: the least recently used run is forgotten, and fetched again when asked
    cache.get("b")
    cache.get("a")
    cache.get("c")  # forgets "b"
    assert fetched == ["a", "b", "c"]
    cache.get("a")
    cache.get("b")
    assert fetched == ["a", "b", "c", "b"]
