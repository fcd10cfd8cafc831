"""A thread pool that never queues work, for handlers that may outlive their timeout.

A Python thread cannot be stopped from outside. When a handler overruns its timeout, the executor
fails the attempt and frees its slot, but the thread stays busy until the handler returns. With a
fixed-size pool, every stuck handler would silently cost one slot, and later jobs would wait in
the pool's queue while their timeouts ran. This pool instead starts a thread whenever none is
idle, and lets threads beyond `max_idle` idle ones exit, so it shrinks back once stuck handlers
return.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class _WorkItem:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self,
        future: concurrent.futures.Future[Any] | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self) -> None:
        if self.future is None:  # fire and forget: the callable reports its own outcome
            self.fn(*self.args, **self.kwargs)
            return
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class ElasticThreadPool(concurrent.futures.Executor):
    """Runs every submitted call at once, in an idle thread or in a new one.

    Threads are daemon threads, so a handler that never returns cannot keep the interpreter
    from exiting.
    """

    def __init__(self, thread_name_prefix: str, max_idle: int) -> None:
        self._prefix = thread_name_prefix
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        # Threads blocked on `_work` that no submitted item has been promised to yet.
        self._idle = 0
        self._threads: set[threading.Thread] = set()
        self._numbers = itertools.count(1)
        self._closed = False

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._start(_WorkItem(future, fn, args, kwargs))
        return future

    def run_soon(self, fn: Callable[..., object], /, *args: Any) -> None:
        """Like `submit`, without a Future, for a callable that never raises and reports its
        result itself (a Future costs a lock and a condition per call)."""
        self._start(_WorkItem(None, fn, args, {}))

    def _start(self, item: _WorkItem) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the {self._prefix} thread pool has been shut down")
            if self._idle:
                self._idle -= 1
            else:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._prefix}-{next(self._numbers)}", daemon=True
                )
                self._threads.add(thread)
                thread.start()
            self._work.put(item)

    def _serve(self) -> None:
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                item.run()
                del item  # drop references to the call's arguments and result while idle
                with self._lock:
                    if self._closed or self._idle >= self._max_idle:
                        return
                    self._idle += 1
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def thread_count(self) -> int:
        """Threads alive, idle or busy (including ones stuck in overrun handlers)."""
        with self._lock:
            return len(self._threads)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let idle threads exit and busy ones exit after their call. `wait` joins them all,
        which blocks as long as any call runs; executors pass `wait=False` after their own
        bounded wait. Nothing is ever queued, so `cancel_futures` has nothing to cancel."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._work.put(None)
            self._idle = 0
            threads = list(self._threads)
        if wait:
            for thread in threads:
                thread.join()
