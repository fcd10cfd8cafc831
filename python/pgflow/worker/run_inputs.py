"""The run inputs handlers see as `ctx.flow_input`: kept as raw JSON, decoded once per run.

Claims of root steps bring the run input along, so most runs never need a query; for other
steps the input is fetched on first use. The cache is bounded (least recently used first out)
and safe to use from executor threads.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pgflow import codec


class RunInputCache:
    def __init__(self, fetch_raw: Callable[[str], str], max_runs: int = 1024) -> None:
        self._fetch_raw = fetch_raw
        self._max_runs = max_runs
        self._raw: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._decoded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def offer(self, raw_inputs: Mapping[str, str]) -> None:
        """Remember raw inputs seen in a claim (run_id -> JSON text)."""
        with self._lock:
            for run_id, raw in raw_inputs.items():
                if run_id not in self._raw:
                    self._raw[run_id] = raw
                self._raw.move_to_end(run_id)
            self._trim()

    def get(self, run_id: str) -> Any:
        """The decoded input of a run; queried from the database when no claim brought it."""
        with self._lock:
            if run_id in self._decoded:
                self._raw.move_to_end(run_id)
                return self._decoded[run_id]
            raw = self._raw.get(run_id)
        if raw is None:
            raw = self._fetch_raw(run_id)
        value = codec.decode_many([raw])[0]
        with self._lock:
            self._raw[run_id] = raw
            self._decoded[run_id] = value
            self._trim()
        return value

    def _trim(self) -> None:
        while len(self._raw) > self._max_runs:
            run_id, _ = self._raw.popitem(last=False)
            self._decoded.pop(run_id, None)
