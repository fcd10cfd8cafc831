"""The run headers handlers see as `ctx.headers`: fetched on first use, once per run.

Nothing is fetched for a handler that never reads them: claims do not bring headers along (most
runs have none, and the claim path stays as it is). The first task of a run to read them costs
one query; the other tasks of the run, in any executor thread, get the same read-only mapping.
The cache is bounded (least recently used first out) and safe to use from executor threads.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType


class RunHeadersCache:
    def __init__(self, fetch: Callable[[str], Mapping[str, str]], max_runs: int = 1024) -> None:
        self._fetch = fetch
        self._max_runs = max_runs
        self._headers: collections.OrderedDict[str, Mapping[str, str]] = collections.OrderedDict()
        self._lock = threading.Lock()
        # Held while fetching, so tasks of one run that ask together make one query, not one
        # each; the worker fetches on a single connection anyway, so it costs no parallelism.
        self._fetching = threading.Lock()

    def get(self, run_id: str) -> Mapping[str, str]:
        """The run's headers, read-only; `{}` for a run started without any."""
        found = self._cached(run_id)
        if found is not None:
            return found
        with self._fetching:
            found = self._cached(run_id)  # fetched by another task meanwhile
            if found is not None:
                return found
            headers = MappingProxyType(dict(self._fetch(run_id)))
            with self._lock:
                self._headers[run_id] = headers
                while len(self._headers) > self._max_runs:
                    self._headers.popitem(last=False)
        return headers

    def _cached(self, run_id: str) -> Mapping[str, str] | None:
        with self._lock:
            found = self._headers.get(run_id)
            if found is not None:
                self._headers.move_to_end(run_id)
            return found
