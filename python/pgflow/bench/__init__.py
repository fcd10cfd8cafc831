"""`pgflow bench`: end-to-end throughput and latency on a database (`runner`), with the flows it
runs (`flows`, importable by reference from worker processes)."""

from __future__ import annotations

from pgflow.bench.runner import (
    SCENARIOS,
    BenchResult,
    BenchSettings,
    check_settings,
    format_table,
    run_benchmarks,
)

__all__ = [
    "SCENARIOS",
    "BenchResult",
    "BenchSettings",
    "check_settings",
    "format_table",
    "run_benchmarks",
]
