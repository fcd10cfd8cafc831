"""Handler tracebacks made fit to store: secrets redacted, size bounded.

A traceback goes to the database with its failed attempt (`pgflow.task_attempts.traceback`),
where anyone who may read runs sees it, and it quotes source lines and exception messages that
may hold connection strings. So passwords are masked first (the same rules as for DSNs in logs,
`pgflow.db.dsn.redact`, plus `secret=`/`token=`-like pairs), then the text is bounded: the
innermost frames and the exception say what went wrong, so when something must go it is the
outermost frames, and a line says how much was cut.
"""

from __future__ import annotations

import re

from pgflow.db.dsn import MASK, redact

__all__ = ["MAX_LINE_CHARS", "MAX_TRACEBACK_BYTES", "clean_traceback", "redact_secrets"]

MAX_TRACEBACK_BYTES = 16 * 1024
"""The most a stored traceback takes, in UTF-8 bytes."""

MAX_LINE_CHARS = 1000
"""A longer line (a huge exception message, a long source line) is shortened to this, so one
line cannot push every frame out."""

# key=value or key: value (also quoted keys, as in a dict's repr) for keys that name a secret;
# `redact` covers URLs and `...password=` pairs with libpq's quoting rules, this the rest. Bounded
# repeats: an unbounded `\w*` on both sides of the word would backtrack quadratically on a long
# word full of it.
_SECRET_PAIR = re.compile(
    r"(?P<key>['\"]?\b\w{0,64}?(?:password|passwd|pwd|secret|token|api_?key)\w{0,64}['\"]?\s*[=:]\s*)"
    r"(?P<value>'[^']*'?|\"[^\"]*\"?|[^\s,;)}\]]+)",
    re.IGNORECASE,
)


def redact_secrets(text: str) -> str:
    """`text` with passwords in connection strings and `password=`, `secret=`, `token=`,
    `api_key=` (and `key: value`) pairs replaced by `***`."""
    return _SECRET_PAIR.sub(lambda m: m.group("key") + MASK, redact(text))


def clean_traceback(text: str | None, max_bytes: int = MAX_TRACEBACK_BYTES) -> str | None:
    """A handler's formatted traceback, redacted and at most `max_bytes` of UTF-8. What does not
    fit goes from the outer end (after the `Traceback (most recent call last):` line), replaced
    by one line saying how many lines were cut; over-long lines are shortened first."""
    if not text:
        return None
    head, tail, dropped = _last_lines(text, 2 * max_bytes)
    lines = [_shorten(line) for line in redact_secrets("\n".join([*head, *tail])).splitlines()]
    if not dropped and _size(lines) <= max_bytes:
        return "\n".join(lines)
    head, tail = lines[:1], lines[1:]
    cut = 0
    # a generous marker size, so the result is within the bound whatever the count
    room = max_bytes - _size(head) - len(_marker(len(lines) + dropped)) - 2
    kept = _size(tail)
    while cut < len(tail) and kept > room:
        kept -= len(tail[cut].encode()) + 1
        cut += 1
    result = "\n".join([*head, _marker(dropped + cut), *tail[cut:]])
    # a bound smaller than the header and the marker: cut the text itself
    return result if len(result.encode()) <= max_bytes else _cut_bytes(result, max_bytes)


def _last_lines(text: str, budget: int) -> tuple[list[str], list[str], int]:
    """(the first line, as many of the last lines as fit in about `budget` characters with long
    lines counted as shortened, how many lines between them were dropped): redacting only what
    may be kept makes a huge traceback cost no more than a short one. Whole lines are dropped,
    so the redaction never sees a secret split by a cut."""
    lines = text.splitlines()
    head, rest = lines[:1], lines[1:]
    if len(text) <= budget:
        return head, rest, 0
    kept: list[str] = []
    size = 0
    for line in reversed(rest):
        size += min(len(line), MAX_LINE_CHARS + 40) + 1
        if size > budget:
            break
        kept.append(line)
    kept.reverse()
    return head, kept, len(rest) - len(kept)


def _marker(lines_cut: int) -> str:
    return f"  ... [{lines_cut} lines of the outermost frames cut to keep the traceback short] ..."


def _shorten(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS]}... [{len(line) - MAX_LINE_CHARS} characters cut]"


def _size(lines: list[str]) -> int:
    return sum(len(line.encode()) for line in lines) + max(len(lines) - 1, 0)


def _cut_bytes(text: str, max_bytes: int) -> str:
    return text.encode()[:max_bytes].decode(errors="ignore")
