"""Pure-Python twin of the Rust core `pgflow._core`.

Same functions, same results, same exception classes (from `pgflow.errors`); the rules
are listed in `docs/rust-core.md`. The twin leans on the C-accelerated `json` module and
string operations so that benchmarks compare Rust against a fair Python implementation, and
property tests check that both agree on generated inputs.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from typing import Any, NoReturn

from pgflow.errors import (
    CoreError,
    ElementOutOfRange,
    InvalidJson,
    MissingBlob,
    NotAnArray,
    UnencodableValue,
)

__all__ = [
    "MAX_DEPTH",
    "MODE_DEPS",
    "MODE_FLOW_INPUT",
    "MODE_MAP",
    "Blobs",
    "TaskSpec",
    "assemble_and_decode",
    "assemble_inputs",
    "decode_many",
    "encode_outputs",
    "encode_value",
]

MODE_FLOW_INPUT = 0
MODE_DEPS = 1
MODE_MAP = 2
MAX_DEPTH = 512

Blobs = Mapping[str, str]
TaskSpec = tuple[int, str, Sequence[str], int]

# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


class _Rejected(Exception):
    """Internal: why a text is not acceptable JSON."""


def _reject_constant(name: str) -> NoReturn:
    raise _Rejected(f"invalid literal {name} (NaN and Infinity are not JSON)")


# Python's int(str) refuses more than 4300 digits by default (and as few as 640 if lowered),
# so long integers are assembled from chunks that stay under any limit.
_INT_CHUNK = 600


def _int_from_decimal(text: str) -> int:
    if len(text) <= _INT_CHUNK:
        return int(text)
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    value = _int_from_digits(digits)
    return -value if negative else value


def _int_from_digits(digits: str) -> int:
    if len(digits) <= _INT_CHUNK:
        return int(digits)
    low_len = len(digits) // 2
    high = _int_from_digits(digits[:-low_len])
    scale: int = 10**low_len
    return high * scale + _int_from_digits(digits[-low_len:])


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_BIG_INT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_int_from_decimal)

_KEEP_BRACKETS_AND_QUOTES = bytes(b for b in range(256) if b not in b'[]{}"')
_FOLD_BRACES = bytes.maketrans(b"{}", b"[]")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _bracket_skeleton(text: str) -> bytes:
    """Only the structural brackets of a valid JSON text, braces folded to square brackets."""
    if '\\"' not in text:
        marks = text.encode("utf-8", "surrogatepass").translate(
            _FOLD_BRACES, _KEEP_BRACKETS_AND_QUOTES
        )
        # Without escaped quotes, quotes alternate open/close; a string holding no bracket
        # leaves an adjacent pair. If every quote goes in one pass, no string held a bracket.
        marks = marks.replace(b'""', b"")
        if b'"' not in marks:
            return marks
    outside = _JSON_STRING.sub("", text)
    return outside.encode("ascii").translate(_FOLD_BRACES, _KEEP_BRACKETS_AND_QUOTES)


def _deeper_than(text: str, limit: int) -> bool:
    """Whether a valid JSON text nests more than `limit` arrays/objects deep."""
    if text.count("[") + text.count("{") <= limit:
        return False
    marks = _bracket_skeleton(text)
    # Each pass removes exactly the innermost level, so the pass count is the depth.
    depth = 0
    while marks:
        depth += 1
        if depth > limit:
            return True
        marks = marks.replace(b"[]", b"")
    return False


def _check_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse(text: str, depth_limit: int = MAX_DEPTH) -> Any:
    """Parses one JSON text; raises `_Rejected` with the reason."""
    try:
        try:
            value = _DECODER.decode(text)
        except json.JSONDecodeError:
            raise
        except ValueError:
            # Only an integer past Python's int/str digit limit gets here.
            value = _BIG_INT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _Rejected(str(exc)) from None
    except RecursionError:
        raise _Rejected(f"nesting deeper than {MAX_DEPTH} levels") from None
    if _deeper_than(text, depth_limit):
        raise _Rejected(f"nesting deeper than {depth_limit} levels")
    return value


def _decode_item(raw: bytes | str, position: int) -> Any:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(
                f"item {position} is not valid JSON: invalid UTF-8 at byte {exc.start}",
                position=position,
            ) from None
    else:
        text = raw
        if not _check_unicode(text):
            raise InvalidJson(
                f"item {position} is not valid JSON: it contains a lone "
                "surrogate, so it is not Unicode text",
                position=position,
            )
    try:
        return _parse(text)
    except _Rejected as exc:
        raise InvalidJson(f"item {position} is not valid JSON: {exc}", position=position) from None


def decode_many(raws: Iterable[bytes | str]) -> list[Any]:
    """Decodes JSON texts (UTF-8 bytes or str) to Python values."""
    if isinstance(raws, (str, bytes)):
        raise TypeError(
            "decode_many takes a sequence of JSON texts, not a single str or bytes; "
            "wrap it in a list"
        )
    items = list(raws)
    for position, raw in enumerate(items):
        if not isinstance(raw, (bytes, str)):
            raise TypeError(
                f"decode_many: item {position} is {type(raw).__name__}, expected bytes or str"
            )
    return [_decode_item(raw, position) for position, raw in enumerate(items)]


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return type(value).__name__


def _index_field(value: object, position: int, field: str) -> int:
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"task {position}: {field} must be an int: {exc}") from None


def _text_field(value: object, position: int, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"task {position}: {field} must be str, got {_type_name(value)}")
    if not _check_unicode(value):
        raise CoreError(
            f"task {position}: {field} is not valid Unicode (it contains a lone surrogate)",
            position=position,
        )
    return value


_Spec = tuple[int, str, list[str], int]


def _read_specs(tasks: Iterable[TaskSpec]) -> list[_Spec]:
    specs: list[_Spec] = []
    for position, spec in enumerate(tasks):
        if not isinstance(spec, tuple):
            raise TypeError(
                f"task {position}: expected a (mode, run_id, dep_slugs, task_index) tuple, "
                f"got {_type_name(spec)}"
            )
        if len(spec) != 4:
            raise TypeError(
                f"task {position}: expected a (mode, run_id, dep_slugs, task_index) tuple, "
                f"got {len(spec)} items"
            )
        mode = _index_field(spec[0], position, "mode")
        run_id = _text_field(spec[1], position, "run_id")
        dep_list = spec[2]
        if not isinstance(dep_list, (list, tuple)):
            raise TypeError(
                f"task {position}: dep_slugs must be a list or tuple of str, "
                f"got {_type_name(dep_list)}"
            )
        slugs = [_text_field(slug, position, f"dep_slugs[{j}]") for j, slug in enumerate(dep_list)]
        index = _index_field(spec[3], position, "task_index")
        specs.append((mode, run_id, slugs, index))
    return specs


def _needed_keys(spec: _Spec) -> list[str]:
    mode, run_id, slugs, _ = spec
    if mode == MODE_FLOW_INPUT:
        return [run_id + ":"]
    if mode == MODE_DEPS:
        return [f"{run_id}:{slug}" for slug in slugs]
    if mode == MODE_MAP:
        return [f"{run_id}:{slugs[0] if slugs else ''}"]
    return []


def _lookup(blobs: Blobs, specs: list[_Spec]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for spec in specs:
        for key in _needed_keys(spec):
            if key in found:
                continue
            value = blobs.get(key)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"blob '{key}' must be str (JSON text), got {_type_name(value)}")
            found[key] = value
    return found


_KIND_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _kind_name(value: object) -> str:
    if value is None:
        return "null"
    return _KIND_NAMES.get(type(value), "a number")


class _Blobs:
    """Per-call view of the blobs: each validated (parsed) once, fresh copies on reuse."""

    def __init__(self, found: dict[str, str | None]) -> None:
        self.found = found
        self.parsed: dict[str, Any] = {}
        self.handed_out: set[str] = set()
        self.elements_handed_out: set[str] = set()
        self.deep: dict[str, bool] = {}
        self.unicode_checked: set[str] = set()

    def _invalid(self, position: int, key: str, reason: object) -> InvalidJson:
        return InvalidJson(
            f"task {position}: blob '{key}' is not valid JSON: {reason}", position=position
        )

    def text(self, position: int, key: str) -> str:
        text = self.found[key]
        assert text is not None
        if key not in self.unicode_checked and not _check_unicode(text):
            raise self._invalid(
                position, key, "it contains a lone surrogate, so it is not Unicode text"
            )
        self.unicode_checked.add(key)
        return text

    def required(self, position: int, key: str, role: str) -> str:
        if self.found[key] is None:
            raise MissingBlob(
                f"task {position}: {role} blob '{key}' is missing from the batch's blobs",
                position=position,
            )
        return self.text(position, key)

    def value(self, position: int, key: str, text: str) -> Any:
        """The parsed blob (validating it the first time)."""
        if key not in self.parsed:
            try:
                self.parsed[key] = _parse(text)
            except _Rejected as exc:
                raise self._invalid(position, key, exc) from None
        return self.parsed[key]

    def fresh_value(self, position: int, key: str, text: str) -> Any:
        """A value no other task of this call received (handlers may mutate their input)."""
        value = self.value(position, key, text)
        if key in self.handed_out or key in self.elements_handed_out:
            return _parse(text)
        self.handed_out.add(key)
        return value

    def dependency(self, position: int, key: str) -> str | None:
        if self.found[key] is None:
            return None
        text = self.text(position, key)
        self.value(position, key, text)
        if key not in self.deep:
            self.deep[key] = _deeper_than(text, MAX_DEPTH - 1)
        if self.deep[key]:
            raise InvalidJson(
                f"task {position}: blob '{key}' nests {MAX_DEPTH} levels deep; wrapped in the "
                f"dependency object it would exceed the limit of {MAX_DEPTH} levels",
                position=position,
            )
        return text

    def array(self, position: int, key: str) -> tuple[str, list[Any]]:
        text = self.required(position, key, "map parent")
        parent = self.value(position, key, text)
        if not isinstance(parent, list):
            raise NotAnArray(
                f"task {position}: map parent blob '{key}' is {_kind_name(parent)}, not an array",
                position=position,
            )
        return text, parent

    def element_index(self, position: int, key: str, parent: list[Any], index: int) -> int:
        if not 0 <= index < len(parent):
            raise ElementOutOfRange(
                f"task {position}: index {index} is out of range for map parent blob '{key}' "
                f"of {len(parent)} elements",
                position=position,
            )
        return index


def _unknown_mode(position: int, mode: int) -> CoreError:
    return CoreError(
        f"task {position}: unknown mode {mode} (expected 0 = flow input, 1 = deps, 2 = map)",
        position=position,
    )


_ELEMENT_DUMPS = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _element_spans(text: str) -> list[tuple[int, int]]:
    """Start/end offsets of a valid JSON array's elements (slow path, rarely needed)."""
    scan: Any = _BIG_INT_DECODER.scan_once  # type: ignore[attr-defined]
    ws = _WHITESPACE
    spans: list[tuple[int, int]] = []
    at = ws.match(text, 0).end() + 1  # type: ignore[union-attr]
    at = ws.match(text, at).end()  # type: ignore[union-attr]
    if text[at] == "]":
        return spans
    while True:
        _, end = scan(text, at)
        spans.append((at, end))
        at = ws.match(text, end).end()  # type: ignore[union-attr]
        if text[at] == "]":
            return spans
        at = ws.match(text, at + 1).end()  # type: ignore[union-attr]


def _element_raw(text: str, parent: list[Any], index: int) -> bytes:
    try:
        return _ELEMENT_DUMPS(parent[index]).encode("ascii")
    except ValueError:
        # Values that JSON cannot re-print (an overflowed float, an over-long int):
        # cut the element's own text out of the parent instead.
        start, end = _element_spans(text)[index]
        return text[start:end].encode("utf-8")


def _encode_key(slug: str) -> str:
    return json.encoder.encode_basestring(slug)


def assemble_inputs(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[bytes]:
    """Raw JSON input per task (see `pgflow._core.assemble_inputs`)."""
    specs = _read_specs(tasks)
    view = _Blobs(_lookup(blobs, specs))
    out: list[bytes] = []
    for position, (mode, run_id, slugs, index) in enumerate(specs):
        if mode == MODE_FLOW_INPUT:
            key = run_id + ":"
            text = view.required(position, key, "run input")
            view.value(position, key, text)
            out.append(text.encode("utf-8"))
        elif mode == MODE_DEPS:
            parts = []
            for slug in slugs:
                dep = view.dependency(position, f"{run_id}:{slug}")
                if dep is not None:
                    parts.append(f"{_encode_key(slug)}:{dep}")
            out.append(("{" + ",".join(parts) + "}").encode("utf-8"))
        elif mode == MODE_MAP:
            key = f"{run_id}:{slugs[0] if slugs else ''}"
            text, parent = view.array(position, key)
            view.element_index(position, key, parent, index)
            out.append(_element_raw(text, parent, index))
        else:
            raise _unknown_mode(position, mode)
    return out


def assemble_and_decode(tasks: Iterable[TaskSpec], blobs: Blobs) -> list[Any]:
    """Each task's input as Python values; equal to `decode_many(assemble_inputs(...))`."""
    specs = _read_specs(tasks)
    view = _Blobs(_lookup(blobs, specs))
    used_elements: set[tuple[str, int]] = set()
    out: list[Any] = []
    for position, (mode, run_id, slugs, index) in enumerate(specs):
        if mode == MODE_FLOW_INPUT:
            key = run_id + ":"
            text = view.required(position, key, "run input")
            out.append(view.fresh_value(position, key, text))
        elif mode == MODE_DEPS:
            deps: dict[str, Any] = {}
            for slug in slugs:
                key = f"{run_id}:{slug}"
                dep = view.dependency(position, key)
                if dep is not None:
                    deps[slug] = view.fresh_value(position, key, dep)
            out.append(deps)
        elif mode == MODE_MAP:
            key = f"{run_id}:{slugs[0] if slugs else ''}"
            _, parent = view.array(position, key)
            view.element_index(position, key, parent, index)
            element = parent[index]
            if (key, index) in used_elements or key in view.handed_out:
                element = deepcopy(element)
            used_elements.add((key, index))
            view.elements_handed_out.add(key)
            out.append(element)
        else:
            raise _unknown_mode(position, mode)
    return out


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

_DUMPS = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
).encode
_encode_str = json.encoder.encode_basestring
_SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = frozenset({dict, list, tuple})

_UNSUPPORTED = (
    "only None, bool, int, float, str, list, tuple and dict with str keys are JSON-encodable"
)
_HAS_NUL = "it contains U+0000, which PostgreSQL jsonb cannot store"
_HAS_SURROGATE = "it contains a lone surrogate, which is not valid Unicode"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _plain(value: object, depth: int) -> bool:
    """Whether json.dumps alone encodes `value` exactly as required: only exact JSON types,
    str keys and bounded depth. Anything else takes the careful path."""
    if depth > MAX_DEPTH:
        return False
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind in _CONTAINERS:
                if not _plain(item, depth + 1):
                    return False
            elif kind not in _SCALARS:
                return False
        return True
    for item in value:  # type: ignore[attr-defined]
        kind = type(item)
        if kind in _CONTAINERS:
            if not _plain(item, depth + 1):
                return False
        elif kind not in _SCALARS:
            return False
    return True


def _fast_encode(value: Any, root_depth: int = 1) -> str | None:
    """json.dumps when its output is guaranteed right, else None. `root_depth` is the depth
    `value` counts as (0 for the batch list of `encode_outputs`, whose items count from 1)."""
    if type(value) in _CONTAINERS and not _plain(value, root_depth):
        return None
    if type(value) not in _SCALARS and type(value) not in _CONTAINERS:
        return None
    try:
        text: str = _DUMPS(value)
    except ValueError:
        return None  # NaN/infinity, or an int past Python's str() digit limit
    if "\\u0000" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def _int_digits(n: int, width: int) -> str:
    """Decimal digits of n >= 0, zero-padded to `width`, past any int/str digit limit."""
    if n.bit_length() <= 1900:  # below 10**572: under every allowed limit
        return int.__repr__(n).zfill(width)
    low_len = (n.bit_length() * 30103 // 100000) // 2
    scale: int = 10**low_len
    high, low = divmod(n, scale)
    return _int_digits(high, max(width - low_len, 0)) + _int_digits(low, low_len)


def _int_text(value: int) -> str:
    try:
        return int.__repr__(value)
    except ValueError:
        exact = operator.index(value)
        return ("-" if exact < 0 else "") + _int_digits(abs(exact), 0)


def _str_problem(text: str) -> str | None:
    if not _check_unicode(text):
        return _HAS_SURROGATE
    if "\x00" in text:
        return _HAS_NUL
    return None


def _format_path(path: list[str | int]) -> str:
    parts = ["$"]
    for seg in path:
        if isinstance(seg, int):
            parts.append(f"[{seg}]")
        elif _IDENTIFIER.fullmatch(seg):
            parts.append("." + seg)
        else:
            parts.append("[" + json.dumps(seg) + "]")
    return "".join(parts)


class _Unencodable(Exception):
    def __init__(self, subject: str, value: object, reason: str, path: list[str | int]) -> None:
        super().__init__(reason)
        self.subject = subject
        self.type_name = _type_name(value)
        self.reason = reason
        self.path = _format_path(path)


def _careful(value: Any, out: list[str], path: list[str | int], depth: int) -> None:
    """Encodes with every check, in the Rust encoder's order, raising at the first problem."""
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        problem = _str_problem(value)
        if problem:
            raise _Unencodable("a value of type", value, problem, path)
        out.append(_encode_str(value))
    elif isinstance(value, int):
        out.append(_int_text(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            reason = f"{float.__repr__(value)} is not valid JSON (only finite floats are)"
            raise _Unencodable("a value of type", value, reason, path)
        out.append(float.__repr__(value))
    elif isinstance(value, (dict, list, tuple)):
        if depth + 1 > MAX_DEPTH:
            reason = f"it nests deeper than {MAX_DEPTH} levels (is there a reference cycle?)"
            raise _Unencodable("a value of type", value, reason, path)
        if isinstance(value, dict):
            out.append("{")
            for n, (key, item) in enumerate(value.items()):
                if not isinstance(key, str):
                    raise _Unencodable("a dict key of type", key, "dict keys must be str", path)
                problem = _str_problem(key)
                if problem:
                    raise _Unencodable("a dict key of type", key, problem, path)
                if n:
                    out.append(",")
                out.append(_encode_str(key))
                out.append(":")
                path.append(key)
                _careful(item, out, path, depth + 1)
                path.pop()
            out.append("}")
        else:
            out.append("[")
            for n, item in enumerate(value):
                if n:
                    out.append(",")
                path.append(n)
                _careful(item, out, path, depth + 1)
                path.pop()
            out.append("]")
    else:
        raise _Unencodable("a value of type", value, _UNSUPPORTED, path)


def _encode_one(value: Any, position: int | None) -> str:
    text = _fast_encode(value)
    if text is not None:
        return text
    out: list[str] = []
    try:
        _careful(value, out, [], 0)
    except _Unencodable as exc:
        prefix = "" if position is None else f"output {position}: "
        raise UnencodableValue(
            f"{prefix}cannot encode {exc.subject} '{exc.type_name}' at {exc.path}: {exc.reason}",
            path=exc.path,
            type_name=exc.type_name,
            position=position,
        ) from None
    return "".join(out)


def encode_value(value: Any) -> str:
    """One value as compact JSON text that PostgreSQL jsonb accepts."""
    return _encode_one(value, None)


def encode_outputs(values: Iterable[Any]) -> str:
    """Many values as one JSON array text ``[v0,v1,...]``."""
    if isinstance(values, (str, bytes, dict)):
        raise TypeError(
            "encode_outputs takes a sequence of values, not a single "
            f"{_type_name(values)}; wrap it in a list"
        )
    items = list(values)
    # One json.dumps for the whole batch when every value is plain; otherwise value by value
    # so the first bad one is named with its position.
    text = _fast_encode(items, root_depth=0)
    if text is not None:
        return text
    return "[" + ",".join(_encode_one(v, i) for i, v in enumerate(items)) + "]"
