"""Type stub and reference of the Rust extension `pgflow._core`.

`pgflow.codec` uses it when it is built, else the Python fallback `pgflow.codec.fallback`, which
has the same function, results and exception classes (property tests compare the two); msgspec
then decodes the raw inputs. Exceptions come from `pgflow.errors` and carry ``position``, the
index of the failing task in the sequence passed in.

Blobs map a key to raw JSON text (as PostgreSQL's ``jsonb::text`` prints it): the run input under
``f"{run_id}:"``, a completed step's output under ``f"{run_id}:{step_slug}"``. A task spec is
``(mode, run_id, dep_slugs, task_index)``:

- ``MODE_FLOW_INPUT`` (0): the input is the run input blob.
- ``MODE_DEPS`` (1): ``{slug: <blob of run_id:slug>, ...}`` in the given order; a slug whose blob
  is absent (a skipped dependency) is left out; no slugs give ``{}``.
- ``MODE_MAP`` (2): element ``task_index`` of the array blob ``run_id:dep_slugs[0]``, or of the run
  input when ``dep_slugs`` is empty (root map).

A map parent is indexed once per call by skipping over its elements with jiter (which checks the
whole text is JSON, and that each element nests at most ``MAX_DEPTH`` (200) arrays/objects that
hold values), and each task gets its element's slice; other blobs pass as sent (msgspec checks
them when it decodes). All of it runs without the GIL.

Errors: missing run input or map parent -> ``MissingBlob``; invalid map parent -> ``InvalidJson``;
map parent not an array -> ``NotAnArray``; index outside it -> ``ElementOutOfRange``; unknown mode
-> ``CoreError``; malformed specs, non-str blobs -> ``TypeError``. Tasks are built in order and
the first failing one is raised.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

__version__: Final[str]
MODE_FLOW_INPUT: Final[int]
MODE_DEPS: Final[int]
MODE_MAP: Final[int]
MAX_DEPTH: Final[int]

def assemble_inputs(
    tasks: Iterable[tuple[int, str, Sequence[str], int]], blobs: Mapping[str, str]
) -> list[bytes]:
    """The handler input of each task as raw JSON."""
