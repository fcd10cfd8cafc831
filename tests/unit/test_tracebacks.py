"""Tracebacks made fit to store: passwords masked, size bounded, the innermost frames kept."""

from __future__ import annotations

import time
import traceback

import pytest

from pgflow.worker.tracebacks import (
    MAX_LINE_CHARS,
    MAX_TRACEBACK_BYTES,
    clean_traceback,
    redact_secrets,
)


def _formatted(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _raise_deep(depth: int, message: str) -> None:
    if depth == 0:
        raise ValueError(message)
    _raise_deep(depth - 1, message)


def _deep_traceback(depth: int, message: str = "the innermost error") -> str:
    try:
        _raise_deep(depth, message)
    except ValueError as exc:
        return _formatted(exc)
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("could not connect to postgresql://app:hunter2@db:5432/x", "hunter2"),
        ("connect(host=db password=hunter2 user=app)", "hunter2"),
        ("dsn 'host=db password=''hunter 2'''", "hunter"),
        ("https://api.example.com/v1?token=abc123&x=1", "abc123"),
        ("{'user': 'app', 'password': 'hunter2'}", "hunter2"),
        ('Client(api_key="sk-live-42", timeout=3)', "sk-live-42"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "wJalrXUtnFEMI"),
        ("headers: {'Authorization-Token': 'xyz789'}", "xyz789"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    redacted = redact_secrets(text)
    assert secret not in redacted
    assert "***" in redacted


def test_text_without_secrets_is_unchanged() -> None:
    text = _deep_traceback(3)
    assert redact_secrets(text) == text
    assert clean_traceback(text) == text.rstrip("\n")


def test_a_traceback_names_its_functions_and_loses_its_passwords() -> None:
    text = _deep_traceback(2, "cannot reach postgresql://svc:s3cr3t@warehouse/db")
    cleaned = clean_traceback(text)
    assert cleaned is not None
    assert "_raise_deep" in cleaned
    assert "s3cr3t" not in cleaned
    assert "postgresql://svc:***@warehouse/db" in cleaned


def test_nothing_is_none() -> None:
    assert clean_traceback(None) is None
    assert clean_traceback("") is None


def _long_traceback(frames: int) -> str:
    # a real deep recursion is folded by Python ("[Previous line repeated N more times]")
    lines = ["Traceback (most recent call last):"]
    for n in range(frames):
        lines += [f'  File "/app/module_{n}.py", line {n + 1}, in step_{n}', f"    step_{n + 1}()"]
    lines += ['  File "/app/inner.py", line 9, in _raise_deep', "    raise ValueError(message)"]
    return "\n".join([*lines, "ValueError: the innermost error"]) + "\n"


def test_a_long_traceback_keeps_its_header_and_innermost_frames() -> None:
    text = _long_traceback(400)
    assert len(text.encode()) > MAX_TRACEBACK_BYTES
    cleaned = clean_traceback(text)
    assert cleaned is not None
    assert len(cleaned.encode()) <= MAX_TRACEBACK_BYTES
    lines = cleaned.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "lines of the outermost frames cut" in lines[1]
    cut = int(lines[1].split("[")[1].split()[0])
    # the kept tail is exactly the end of the original
    original = text.rstrip("\n").splitlines()
    assert lines[2:] == original[1 + cut :]
    assert lines[-1] == "ValueError: the innermost error"
    assert "in _raise_deep" in lines[-3]
    # and it is not cut more than it must be
    assert MAX_TRACEBACK_BYTES - len(cleaned.encode()) < 300


def test_a_huge_line_is_shortened_and_says_so() -> None:
    text = _deep_traceback(1, "x" * 100_000)
    cleaned = clean_traceback(text)
    assert cleaned is not None
    last = cleaned.splitlines()[-1]
    assert last.startswith("ValueError: xxx")
    assert last.endswith(f"... [{100_000 + len('ValueError: ') - MAX_LINE_CHARS} characters cut]")
    assert "_raise_deep" in cleaned  # the frames survive the huge message


def test_multibyte_text_is_bounded_in_bytes() -> None:
    text = "Traceback (most recent call last):\n" + "\n".join("  é" * 300 for _ in range(200))
    cleaned = clean_traceback(text, max_bytes=4096)
    assert cleaned is not None
    assert len(cleaned.encode()) <= 4096
    cleaned.encode().decode()  # whole characters only


def test_a_tiny_bound_still_holds() -> None:
    cleaned = clean_traceback(_deep_traceback(5), max_bytes=40)
    assert cleaned is not None
    assert len(cleaned.encode()) <= 40


def test_redaction_takes_linear_time_on_long_words() -> None:
    # a base64 blob in an error message: trying a URL scheme at every position of the word
    # took time quadratic in its length (minutes for this one)
    blob = "QUJD" * 100_000
    started = time.monotonic()
    assert redact_secrets(f"payload {blob} rejected") == f"payload {blob} rejected"
    assert time.monotonic() - started < 5


def test_a_huge_traceback_counts_every_line_it_cuts() -> None:
    frames = 200_000
    text = (
        "Traceback (most recent call last):\n"
        + '  File "deep.py", line 1, in recurse\n' * frames
        + "RecursionError: too deep (password=hunter2)"
    )
    cleaned = clean_traceback(text)
    assert cleaned is not None and len(cleaned.encode()) <= MAX_TRACEBACK_BYTES
    lines = cleaned.splitlines()
    kept_frames = sum(line.startswith('  File "deep.py"') for line in lines)
    cut = int(lines[1].split("[", 1)[1].split(" ", 1)[0])
    assert cut + kept_frames == frames
    assert lines[-1].startswith("RecursionError: too deep (password=***")
    assert "hunter2" not in cleaned
