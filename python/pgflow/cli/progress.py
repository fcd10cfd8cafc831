"""A live status line for long operations: redrawn in place on a terminal, printed as plain lines
(at most every few seconds) when the output is a file or a pipe."""

from __future__ import annotations

import sys
import time
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
