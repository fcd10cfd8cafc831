"""The worker: the way a task travels through a worker process.

`claims` (claim a batch and build each handler's input) -> an executor runs the handlers ->
`reports` (encode the outputs) -> `reporter` (report them in batches, from its own thread);
`loop` drives it all (`Worker`), `session` holds the worker's own SQL (register, heartbeat,
compile its flows, requeue stalled tasks, stop), `options` the settings shared with the CLI and
the bench, and `run_inputs` caches run inputs for `ctx.flow_input`.
"""

from __future__ import annotations

from pgflow.errors import FlowMismatch
from pgflow.worker.loop import Worker, WorkerStats, run_worker
from pgflow.worker.options import WorkerOptions

__all__ = ["FlowMismatch", "Worker", "WorkerOptions", "WorkerStats", "run_worker"]
