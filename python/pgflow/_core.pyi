"""Type stub and reference of the Rust extension `pgflow._core`.

The pure-Python twin `pgflow.codec` has the same functions and semantics; `pgflow.codec`
picks one. Exceptions come from `pgflow.errors` and carry ``position``, the index of the
failing task / item / output in the sequence passed in.

Blobs map a key to raw JSON text (as PostgreSQL's ``jsonb::text`` prints it): the run input
under ``f"{run_id}:"``, a completed step's output under ``f"{run_id}:{step_slug}"``. A task spec
is ``(mode, run_id, dep_slugs, task_index)``:

- ``MODE_FLOW_INPUT`` (0): the input is the run input blob.
- ``MODE_DEPS`` (1): ``{slug: <blob of run_id:slug>, ...}`` in the given order; a slug whose
  blob is absent (a skipped dependency) is left out; no slugs give ``{}``.
- ``MODE_MAP`` (2): element ``task_index`` of the array blob ``run_id:dep_slugs[0]``, or of
  the run input when ``dep_slugs`` is empty (root map).

Decoding rules (both implementations):

- RFC 8259 JSON; surrounding space, tab, CR and LF allowed; UTF-8 bytes or ``str``.
- Integers (no fraction or exponent) become ``int`` of any size (no 4300-digit limit);
  other numbers become ``float`` exactly as ``float()`` parses them (``1e400`` -> inf).
- Duplicate keys: the last value wins (at the first key's position).
- ``NaN``/``Infinity`` literals, a BOM, invalid UTF-8 or a ``str`` with lone surrogates are
  invalid. Escaped surrogates follow Python's ``json``: a high + low pair joins, a lone one
  stays a lone surrogate in the resulting ``str``.
- Nesting deeper than ``MAX_DEPTH`` (512) arrays/objects is invalid. A MODE_DEPS input wraps
  its blobs in an object, so a dependency blob may nest at most 511 deep.
- Every blob a call uses is validated in full, even when only one element is needed.

Errors: missing run input / map parent -> ``MissingBlob``; invalid blob -> ``InvalidJson``;
map parent not an array -> ``NotAnArray``; index outside it -> ``ElementOutOfRange``; unknown
mode or a run id / slug with lone surrogates -> ``CoreError``; malformed specs or non-str
blob values -> ``TypeError``. Tasks are checked in order and the first failing one is raised.

Encoding accepts None, bool, int (any size), finite float, str, list, tuple and dict with str
keys (insertion order kept), subclasses included, and writes compact JSON byte-for-byte equal
to ``json.dumps(v, ensure_ascii=False, separators=(",", ":"))``. ``UnencodableValue`` (with
``path`` like ``$.items[3].when`` and ``type_name``) is raised for any other type, non-str
keys, NaN/infinity, strings or keys holding U+0000 or lone surrogates (jsonb rejects both),
and nesting deeper than ``MAX_DEPTH`` (which also catches reference cycles).
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

__version__: Final[str]
MODE_FLOW_INPUT: Final[int]
MODE_DEPS: Final[int]
MODE_MAP: Final[int]
MAX_DEPTH: Final[int]

def assemble_inputs(
    tasks: Iterable[tuple[int, str, Sequence[str], int]], blobs: Mapping[str, str]
) -> list[bytes]:
    """Raw JSON input per task. A map parent is scanned once per call to index its element
    offsets, then sliced; no values are built."""

def decode_many(raws: Iterable[bytes | str]) -> list[Any]:
    """Decodes each JSON text to Python values."""

def assemble_and_decode(
    tasks: Iterable[tuple[int, str, Sequence[str], int]], blobs: Mapping[str, str]
) -> list[Any]:
    """Equal to ``decode_many(assemble_inputs(tasks, blobs))``, in one pass: each blob is
    scanned once and each task gets fresh objects (no sharing between tasks)."""

def encode_outputs(values: Iterable[Any]) -> str:
    """One JSON array text ``[v0,v1,...]``; errors name the failing value's position."""

def encode_value(value: Any) -> str:
    """One JSON text."""
