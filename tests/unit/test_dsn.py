"""DSN resolution order and password redaction."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgflow.db import dsn as dsn_module
from pgflow.db.dsn import redact, resolve_dsn, scrub, validate_dsn
from pgflow.errors import ConfigError

REDACTIONS = [
    # URL form
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgres://u:pw@h:5432/db?sslmode=require", "postgres://u:***@h:5432/db?sslmode=require"),
    ("postgresql+psycopg://u:pw@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
    # unencoded special characters in the password: hide every possible reading
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p?w@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pa:ss@h/db", "postgresql://u:***@h/db"),
    # password as a query parameter
    (
        "postgresql://h/db?password=pw&sslmode=require",
        "postgresql://h/db?password=***&sslmode=require",
    ),
    (
        "postgresql://h/db?sslmode=require&password=pw",
        "postgresql://h/db?sslmode=require&password=***",
    ),
    ("postgresql://u:pw@h/db?password=pw2", "postgresql://u:***@h/db?password=***"),
    # nothing to hide
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("postgresql://u:@h/db", "postgresql://u:@h/db"),
    ("postgresql://h/db", "postgresql://h/db"),
    ("postgresql://h:5432/db", "postgresql://h:5432/db"),
    ("postgresql://h:5432/db?options=a@b", "postgresql://h:5432/db?options=a@b"),
    ("postgresql:///db?host=/var/run/postgresql", "postgresql:///db?host=/var/run/postgresql"),
    ("host=h port=5432 dbname=d", "host=h port=5432 dbname=d"),
    ("", ""),
    ("passfile=/home/u/.pgpass host=h", "passfile=/home/u/.pgpass host=h"),
    # key=value form
    ("host=h user=u password=pw dbname=d", "host=h user=u password=*** dbname=d"),
    ("password=pw", "password=***"),
    ("password = pw host=h", "password = *** host=h"),
    ("password='p w' host=h", "password=*** host=h"),
    (r"password='p w\' x' host=h", "password=*** host=h"),
    ("password='unterminated and more", "password=***"),
    (r"password=a\ b host=h", "password=*** host=h"),
    ("password=ab\\", "password=***"),
    ("PASSWORD=pw host=h", "PASSWORD=*** host=h"),
    ("sslpassword=pw host=h", "sslpassword=*** host=h"),
    ("PGPASSWORD=pw", "PGPASSWORD=***"),
    # libpq skips blanks after '=': this password is "dbname=d"
    ("host=h password= dbname=d", "host=h password= ***"),
    # DSNs inside longer text
    (
        'connection to "postgresql://u:pw@h/db" failed',
        'connection to "postgresql://u:***@h/db" failed',
    ),
    (
        "from postgresql://a:x1@h/db and host=h password=x2 dbname=d",
        "from postgresql://a:***@h/db and host=h password=*** dbname=d",
    ),
]


@pytest.mark.parametrize(("text", "expected"), REDACTIONS)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(("text", "expected"), REDACTIONS)
def test_redact_is_idempotent(text: str, expected: str) -> None:
    assert redact(redact(text)) == expected


# Passwords of any printable characters, percent-encoded in URLs and quoted in key=value strings,
# as a client library would write them.
passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=40,
)


@given(passwords)
def test_redact_hides_any_percent_encoded_url_password(password: str) -> None:
    text = f"postgresql://alice:{quote(password, safe='')}@db.example:5432/app?sslmode=require"
    assert redact(text) == "postgresql://alice:***@db.example:5432/app?sslmode=require"


@given(passwords)
def test_redact_hides_any_quoted_keyvalue_password(password: str) -> None:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    text = f"host=db.example password='{escaped}' dbname=app"
    assert redact(text) == "host=db.example password=*** dbname=app"


@given(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1).filter(
        lambda p: not p.startswith("'")  # a leading quote starts a quoted value
    )
)
def test_redact_hides_any_unquoted_keyvalue_password(password: str) -> None:
    escaped = password.replace("\\", "\\\\")
    text = f"user=u password={escaped} dbname=app"
    assert redact(text) == "user=u password=*** dbname=app"


def test_scrub_hides_password_fragments_quoted_by_libpq() -> None:
    dsn = "postgresql://u:p%zz@h/db"
    assert scrub('invalid percent-encoded token: "p%zz"', dsn) == (
        'invalid percent-encoded token: "***"'
    )
    assert scrub('invalid URI query parameter: "bogus"', dsn) == (
        'invalid URI query parameter: "bogus"'
    )


def _no_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> str:
        raise AssertionError("the embedded server must not be used here")

    monkeypatch.setattr("pgflow.db.embedded.ensure_server", fail)


def test_explicit_dsn_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_embedded(monkeypatch)
    env = {"PGFLOW_DSN": "host=env1", "DATABASE_URL": "host=env2"}
    assert resolve_dsn("host=explicit", environ=env) == ("host=explicit", "--dsn")


def test_pgflow_dsn_before_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_embedded(monkeypatch)
    env = {"PGFLOW_DSN": "host=env1", "DATABASE_URL": "host=env2"}
    assert resolve_dsn(None, environ=env) == ("host=env1", "PGFLOW_DSN")


def test_database_url_used_when_pgflow_dsn_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_embedded(monkeypatch)
    env = {"PGFLOW_DSN": "  ", "DATABASE_URL": "postgres://u@h/db"}
    assert resolve_dsn(None, environ=env) == ("postgres://u@h/db", "DATABASE_URL")


def test_embedded_is_the_last_resort_of_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgflow.db.embedded.ensure_server", lambda: "host=/sock dbname=postgres")
    assert resolve_dsn(None, environ={}, embedded_fallback=True) == (
        "host=/sock dbname=postgres",
        "embedded",
    )


def test_a_library_never_starts_the_embedded_server_unasked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail() -> str:
        raise AssertionError("the embedded server must not be started")

    monkeypatch.setattr("pgflow.db.embedded.ensure_server", fail)
    with pytest.raises(ConfigError, match=r"no database configured.*dsn='embedded'"):
        resolve_dsn(None, environ={})


def test_the_embedded_server_when_asked_for_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgflow.db.embedded.ensure_server", lambda: "host=/sock dbname=postgres")
    assert resolve_dsn("embedded", environ={}) == ("host=/sock dbname=postgres", "embedded")
    assert resolve_dsn(" embedded ", environ={"PGFLOW_DSN": "host=x"}) == (
        "host=/sock dbname=postgres",
        "embedded",
    )


def test_empty_explicit_dsn_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--dsn is empty"):
        resolve_dsn("", environ={})


def test_sqlalchemy_driver_suffix_is_dropped() -> None:
    assert validate_dsn("postgresql+psycopg://u@h/db", "x") == "postgresql://u@h/db"
    assert validate_dsn(" postgres+asyncpg://u@h/db\n", "x") == "postgres://u@h/db"


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://u:p%zz@h/db",
        "host=h password=hunter22 bogus",
        "postgresql://u:hunter22@h/db?x=1",
    ],
)
def test_invalid_dsn_error_names_source_and_hides_password(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_dsn(None, environ={"PGFLOW_DSN": bad})
    message = str(caught.value)
    assert "from PGFLOW_DSN" in message
    assert "invalid PostgreSQL connection string" in message
    assert "hunter22" not in message
    assert "p%zz" not in message


def test_env_var_names() -> None:
    assert dsn_module.DSN_ENV_VARS == ("PGFLOW_DSN", "DATABASE_URL")
