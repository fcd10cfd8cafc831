"""A live status line for long operations: redrawn in place on a terminal, printed as plain lines
(at most every few seconds) when the output is a file or a pipe."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO


class StatusLine:
    def __init__(self, stream: TextIO | None = None, *, plain_interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.plain_interval = plain_interval
        self._width = 0
        self._last_plain = 0.0
        self._last_text = ""

    def update(self, text: str) -> None:
        if not text:
            self.clear()
            return
        if self.live:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.stream.flush()
            self._width = len(text)
        else:
            now = time.monotonic()
            if now - self._last_plain >= self.plain_interval and text != self._last_text:
                self.stream.write(text + "\n")
                self.stream.flush()
                self._last_plain = now
        self._last_text = text

    def clear(self) -> None:
        if self.live and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0

    def __call__(self, text: str) -> None:
        self.update(text)


@contextlib.contextmanager
def ticking(text: str, *, after: float = 1.0, stream: TextIO | None = None) -> Iterator[None]:
    """Show `text` with the seconds elapsed while the block runs, for one long call that
    reports no progress of its own; nothing when it finishes within `after` seconds."""
    line = StatusLine(stream)
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        if done.wait(after):
            return
        while not done.is_set():
            line.update(f"{text} ({time.monotonic() - started:.0f}s)")
            done.wait(0.5)

    thread = threading.Thread(target=tick, name="pgflow-status-line", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        line.clear()
