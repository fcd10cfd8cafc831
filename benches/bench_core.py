"""Micro benchmarks: the Rust core `pgflow._core` against its pure-Python twin `pgflow.codec`.

Batches of 1,000 tasks, shaped like what a worker claims:

- map:  1,000 map tasks over one 10,000-element parent array (every 10th element);
- deps: 1,000 tasks (one per run), each with 3 dependencies of about 1 KB of output;
- flow: 1,000 root tasks (one per run) reading a ~0.5 KB run input;
- encode: 1,000 typical handler results into one completion payload.

Run with pytest-benchmark (build the extension in release mode first:
``maturin develop --release`` in the venv)::

    python -m pytest benches/bench_core.py --benchmark-only

The speed-up table (twin time / Rust time, medians) is printed at the end. The project goal:
``assemble_and_decode`` at least 3x the twin's ``assemble_inputs`` + ``decode_many``.
``python benches/bench_core.py`` prints the same table without pytest.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from pgflow.codec import MODE_DEPS, MODE_FLOW_INPUT, MODE_MAP
from pgflow.codec import twin as codec

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


def twin_assemble_then_decode(tasks: list[Any], blobs: dict[str, str]) -> list[Any]:
    return codec.decode_many(codec.assemble_inputs(tasks, blobs))


def rust_assemble_then_decode(tasks: list[Any], blobs: dict[str, str]) -> list[Any]:
    return _core.decode_many(_core.assemble_inputs(tasks, blobs))


# (label, rust callable, twin callable) per comparison; each takes the batch.
def comparisons(shape: str) -> list[tuple[str, Callable[[Batch], Any], Callable[[Batch], Any]]]:
    return [
        (
            "assemble_and_decode vs twin assemble+decode (goal >= 3x)",
            lambda b: _core.assemble_and_decode(*b),
            lambda b: twin_assemble_then_decode(*b),
        ),
        (
            "assemble_and_decode vs twin assemble_and_decode",
            lambda b: _core.assemble_and_decode(*b),
            lambda b: codec.assemble_and_decode(*b),
        ),
        (
            "assemble_inputs",
            lambda b: _core.assemble_inputs(*b),
            lambda b: codec.assemble_inputs(*b),
        ),
    ]


_RESULTS: dict[tuple[str, str], dict[str, float]] = {}


@pytest.fixture(scope="module", autouse=True)
def speedup_table(pytestconfig: pytest.Config) -> Iterator[None]:
    yield
    if not _RESULTS:
        return
    # Written past pytest's output capture, once every benchmark of the module has run.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    lines = ["", "Speed-up of pgflow._core over the pure-Python twin (median times):"]
    lines += table_lines(_RESULTS)
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n".join(lines))
    else:
        print("\n".join(lines))


def table_lines(results: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    lines = []
    for (shape, label), times in sorted(results.items()):
        if "rust" in times and "twin" in times:
            lines.append(
                f"  {shape:6} {label:58} rust {times['rust'] * 1e3:8.2f} ms  "
                f"twin {times['twin'] * 1e3:8.2f} ms  x{times['twin'] / times['rust']:5.1f}"
            )
    return lines


@pytest.fixture(scope="module")
def batches() -> dict[str, Batch]:
    return {shape: make() for shape, make in BATCHES.items()}


CASES = [
    (shape, n, side) for shape in BATCHES for n in range(len(comparisons(shape))) for side in (0, 1)
]


@pytest.mark.parametrize(
    ("shape", "n", "side"),
    CASES,
    ids=[
        f"{shape}-{comparisons(shape)[n][0].split(' ')[0]}{n}-{'rust' if side == 0 else 'twin'}"
        for shape, n, side in CASES
    ],
)
def test_batch(benchmark: Any, batches: dict[str, Batch], shape: str, n: int, side: int) -> None:
    label, rust, twin = comparisons(shape)[n]
    batch = batches[shape]
    func = rust if side == 0 else twin
    result = benchmark(func, batch)
    assert len(result) == TASKS
    _RESULTS.setdefault((shape, label), {})["rust" if side == 0 else "twin"] = (
        benchmark.stats.stats.median
    )


def test_decode_many_rust(benchmark: Any, batches: dict[str, Batch]) -> None:
    raws = _core.assemble_inputs(*batches["deps"])
    benchmark(_core.decode_many, raws)
    _RESULTS.setdefault(("deps", "decode_many"), {})["rust"] = benchmark.stats.stats.median


def test_decode_many_twin(benchmark: Any, batches: dict[str, Batch]) -> None:
    raws = _core.assemble_inputs(*batches["deps"])
    benchmark(codec.decode_many, raws)
    _RESULTS.setdefault(("deps", "decode_many"), {})["twin"] = benchmark.stats.stats.median


@pytest.fixture(scope="module")
def typical_outputs() -> list[Any]:
    return outputs()


def test_encode_outputs_rust(benchmark: Any, typical_outputs: list[Any]) -> None:
    text = benchmark(_core.encode_outputs, typical_outputs)
    assert text == codec.encode_outputs(typical_outputs)
    _RESULTS.setdefault(("encode", "encode_outputs"), {})["rust"] = benchmark.stats.stats.median


def test_encode_outputs_twin(benchmark: Any, typical_outputs: list[Any]) -> None:
    benchmark(codec.encode_outputs, typical_outputs)
    _RESULTS.setdefault(("encode", "encode_outputs"), {})["twin"] = benchmark.stats.stats.median


def test_encode_value_rust(benchmark: Any, typical_outputs: list[Any]) -> None:
    benchmark(lambda: [_core.encode_value(v) for v in typical_outputs])
    _RESULTS.setdefault(("encode", "encode_value x1000"), {})["rust"] = benchmark.stats.stats.median


def test_encode_value_twin(benchmark: Any, typical_outputs: list[Any]) -> None:
    benchmark(lambda: [codec.encode_value(v) for v in typical_outputs])
    _RESULTS.setdefault(("encode", "encode_value x1000"), {})["twin"] = benchmark.stats.stats.median


def median_time(func: Callable[[], Any], rounds: int = 15) -> float:
    func()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    """The speed-up table without pytest."""
    assert _core is not None, "build the extension first: maturin develop --release"
    results: dict[tuple[str, str], dict[str, float]] = {}
    for shape, make in BATCHES.items():
        batch = make()
        for label, rust, twin in comparisons(shape):
            results[(shape, label)] = {
                "rust": median_time(partial(rust, batch)),
                "twin": median_time(partial(twin, batch)),
            }
    raws = _core.assemble_inputs(*deps_batch())
    results[("deps", "decode_many")] = {
        "rust": median_time(lambda: _core.decode_many(raws)),
        "twin": median_time(lambda: codec.decode_many(raws)),
    }
    values = outputs()
    results[("encode", "encode_outputs")] = {
        "rust": median_time(lambda: _core.encode_outputs(values)),
        "twin": median_time(lambda: codec.encode_outputs(values)),
    }
    results[("encode", "encode_value x1000")] = {
        "rust": median_time(lambda: [_core.encode_value(v) for v in values]),
        "twin": median_time(lambda: [codec.encode_value(v) for v in values]),
    }
    print("Speed-up of pgflow._core over the pure-Python twin (median times):")
    for line in table_lines(results):
        print(line)


if __name__ == "__main__":
    main()
