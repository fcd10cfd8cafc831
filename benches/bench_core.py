"""Micro benchmarks of the hot path's JSON: the Rust core `pgflow._core` (with msgspec decoding)
against its
Python fallback, and the obvious implementations on msgspec, orjson and the standard library's
json, on batches shaped like what a worker claims:

- map:     1,000 map tasks over one 10,000-element parent array (every 10th element);
- deps:    1,000 tasks (one per run), each with 3 dependencies of about 1 KB of output;
- flow:    1,000 root tasks (one per run) reading a ~0.5 KB run input;
- payload: 1,000 map elements cut out by the SQL, decoded one by one (`decode_many`);
- typed:   the deps batch for a handler typed with msgspec Structs: raw JSON decoded straight
           into the type (what ships) against decoding to Python values and converting after;
- encode:  1,000 typical handler results into one completion payload.

Every implementation builds the same inputs (checked). Run with pytest-benchmark, on the build
that ships (a release build: ``pip install .`` or ``maturin develop --release``)::

    python -m pytest benches/bench_core.py --benchmark-only

The table of medians is printed at the end; ``python benches/bench_core.py`` prints it without
pytest.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import orjson
import pytest

from pgflow import codec
from pgflow.codec import MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP, fallback

try:
    from pgflow import _core
except ImportError:  # pragma: no cover
    _core = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_core is None, reason="pgflow._core is not built")

TASKS = 1_000
PARENT_LEN = 10_000

Batch = tuple[list[Any], dict[str, str]]


def pg_text(value: Any) -> str:
    """JSON as PostgreSQL's jsonb::text prints it (", " and ": " separators)."""
    return json.dumps(value, ensure_ascii=False)


def run_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def map_batch() -> Batch:
    rng = random.Random(1)
    run = run_id(rng)
    parent = [
        {
            "id": i,
            "url": f"https://example.com/items/{i}",
            "tags": ["alpha", "beta", "\u00e9t\u00e9"][: 1 + i % 3],
            "weight": rng.random() * 100,
            "active": i % 2 == 0,
        }
        for i in range(PARENT_LEN)
    ]
    blobs = {f"{run}:list": pg_text(parent)}
    tasks = [(MODE_MAP, run, ["list"], i * (PARENT_LEN // TASKS)) for i in range(TASKS)]
    return tasks, blobs


def step_output(rng: random.Random, size: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    while len(pg_text(rows)) < size - 120:
        rows.append(
            {
                "sku": f"SKU-{rng.randrange(10**6):06d}",
                "qty": rng.randrange(1, 20),
                "price": round(rng.random() * 500, 2),
                "note": rng.choice(["", "fragile", "café", "gift wrap"]),
            }
        )
    return {"ok": True, "count": len(rows), "rows": rows, "fetched_at": "2024-05-01T12:00:00Z"}


def deps_batch() -> Batch:
    rng = random.Random(2)
    tasks: list[Any] = []
    blobs: dict[str, str] = {}
    for _ in range(TASKS):
        run = run_id(rng)
        slugs = ["fetch_user", "fetch_orders", "score"]
        for slug in slugs:
            blobs[f"{run}:{slug}"] = pg_text(step_output(rng, 1_000))
        tasks.append((MODE_DEPS, run, slugs, 0))
    return tasks, blobs


def flow_batch() -> Batch:
    rng = random.Random(3)
    tasks: list[Any] = []
    blobs: dict[str, str] = {}
    for _ in range(TASKS):
        run = run_id(rng)
        blobs[f"{run}:"] = pg_text(
            {
                "user_id": rng.randrange(10**9),
                "email": f"user{rng.randrange(10**6)}@example.com",
                "plan": rng.choice(["free", "pro", "team"]),
                "items": [rng.randrange(1000) for _ in range(20)],
                "meta": {"source": "api", "retries": 0, "locale": "fr-FR", "ratio": rng.random()},
                "comment": "Bonjour, voilà une commande spéciale",
            }
        )
        tasks.append((MODE_FLOW_INPUT, run, [], 0))
    return tasks, blobs


def outputs() -> list[Any]:
    rng = random.Random(4)
    return [
        {
            "id": i,
            "status": rng.choice(["ok", "partial", "retry"]),
            "total": round(rng.random() * 1000, 2),
            "lines": [
                {"sku": f"SKU-{rng.randrange(10**6):06d}", "qty": rng.randrange(1, 9)}
                for _ in range(3)
            ],
            "customer": {"name": "Zoë Martin", "vip": rng.random() < 0.1, "tier": None},
            "tags": ["processed", "eu"],
        }
        for i in range(TASKS)
    ]


BATCHES: dict[str, Callable[[], Batch]] = {"map": map_batch, "deps": deps_batch, "flow": flow_batch}


def plain_assemble(loads: Callable[[str], Any]) -> Callable[[list[Any], dict[str, str]], list[Any]]:
    """The obvious implementation on a JSON library: decode what each task needs, each map
    parent once per batch (its elements then decoded again per task, for fresh objects)."""

    def assemble(tasks: list[Any], blobs: dict[str, str]) -> list[Any]:
        parents: dict[str, list[Any]] = {}
        out: list[Any] = []
        for mode, run, deps, index in tasks:
            if mode == MODE_FLOW_INPUT:
                out.append(loads(blobs[f"{run}:"]))
            elif mode == MODE_DEPS:
                out.append({d: loads(blobs[f"{run}:{d}"]) for d in deps if f"{run}:{d}" in blobs})
            else:
                key = f"{run}:{deps[0] if deps else ''}"
                if key not in parents:
                    parents[key] = loads(blobs[key])
                out.append(parents[key][index])
        return out

    return assemble


class Line(msgspec.Struct):
    sku: str
    qty: int
    price: float
    note: str


class Output(msgspec.Struct):
    ok: bool
    count: int
    rows: list[Line]
    fetched_at: str


class DepsInput(msgspec.Struct):
    fetch_user: Output
    fetch_orders: Output
    score: Output


_typed = msgspec.json.Decoder(DepsInput)


def typed_from_raw(assemble_raw: Callable[..., list[bytes]]) -> Callable[[Batch], list[Any]]:
    return lambda batch: [_typed.decode(raw) for raw in assemble_raw(*batch)]


def typed_converted(assemble: Callable[..., list[Any]]) -> Callable[[Batch], list[Any]]:
    return lambda batch: [msgspec.convert(v, DepsInput) for v in assemble(*batch)]


def implementations() -> dict[str, dict[str, Callable[[Any], Any]]]:
    """For each batch, the implementations compared: name -> function of the batch."""
    assert _core is not None
    stdlib = plain_assemble(json.loads)
    fast = plain_assemble(orjson.loads)
    msgspec_assemble = plain_assemble(msgspec.json.Decoder().decode)
    encoder = msgspec.json.Encoder()
    builds = {
        shape: {
            # what ships: the Rust core assembles raw inputs, msgspec decodes them
            "rust": lambda b: codec.decode_many(_core.assemble_inputs(*b)),
            "python": lambda b: codec.decode_many(fallback.assemble_inputs(*b)),
            "msgspec": lambda b: msgspec_assemble(*b),
            "orjson": lambda b: fast(*b),
            "json": lambda b: stdlib(*b),
        }
        for shape in BATCHES
    }
    builds["payload"] = {
        "msgspec": codec.decode_many,
        "orjson": lambda raws: [orjson.loads(r) for r in raws],
        "json": lambda raws: [json.loads(r) for r in raws],
    }
    builds["typed"] = {
        "rust": typed_from_raw(_core.assemble_inputs),
        "python": typed_from_raw(fallback.assemble_inputs),
        "msgspec+convert": typed_converted(msgspec_assemble),
        "json+convert": typed_converted(plain_assemble(json.loads)),
    }
    builds["encode"] = {
        "msgspec": codec.encode_outputs,
        "msgspec Encoder": encoder.encode,
        "orjson": orjson.dumps,
        "json": lambda values: json.dumps(values, separators=(",", ":")).encode(),
    }
    return builds


def inputs() -> dict[str, Any]:
    made = {shape: make() for shape, make in BATCHES.items()}
    assert _core is not None
    made["payload"] = _core.assemble_inputs(*map_batch())
    made["typed"] = made["deps"]
    made["encode"] = outputs()
    return made


_RESULTS: dict[str, dict[str, float]] = {}


def table_lines(results: dict[str, dict[str, float]]) -> list[str]:
    names = [
        "rust",
        "python",
        "msgspec",
        "orjson",
        "json",
        "msgspec+convert",
        "json+convert",
        "msgspec Encoder",
    ]
    lines = [f"  {'batch':8}" + "".join(f"{n:>17}" for n in names)]
    for shape, times in results.items():
        cells = "".join(f"{times[n] * 1e3:14.2f} ms" if n in times else " " * 17 for n in names)
        lines.append(f"  {shape:8}{cells}")
    return lines


@pytest.fixture(scope="module", autouse=True)
def print_table(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    if not _RESULTS:
        return
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    lines = ["", "Median time per batch of 1,000 tasks (ms):", *table_lines(_RESULTS)]
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n".join(lines))
    else:
        print("\n".join(lines))


@pytest.fixture(scope="module")
def made() -> dict[str, Any]:
    return inputs()


CASES = [
    (shape, name)
    for shape, names in {
        **{s: ["rust", "python", "msgspec", "orjson", "json"] for s in BATCHES},
        "payload": ["msgspec", "orjson", "json"],
        "typed": ["rust", "python", "msgspec+convert", "json+convert"],
        "encode": ["msgspec", "msgspec Encoder", "orjson", "json"],
    }.items()
    for name in names
]


@pytest.mark.parametrize(("shape", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_batch(benchmark: Any, made: dict[str, Any], shape: str, name: str) -> None:
    function = implementations()[shape][name]
    result = benchmark(function, made[shape])
    if shape != "encode":
        assert len(result) == TASKS
    _RESULTS.setdefault(shape, {})[name] = benchmark.stats.stats.median


def test_implementations_agree(made: dict[str, Any]) -> None:
    for shape, functions in implementations().items():
        results = [f(made[shape]) for f in functions.values()]
        if shape == "encode":
            results = [json.loads(r) for r in results]
        assert all(r == results[0] for r in results), shape


def median_time(func: Callable[[], Any], rounds: int = 31) -> float:
    func()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    """The table without pytest."""
    assert _core is not None, "build the extension first: maturin develop --release"
    made = inputs()
    results = {
        shape: {name: median_time(lambda f=f, s=shape: f(made[s])) for name, f in functions.items()}
        for shape, functions in implementations().items()
    }
    print("Median time per batch of 1,000 tasks (ms):")
    for line in table_lines(results):
        print(line)


if __name__ == "__main__":
    main()
