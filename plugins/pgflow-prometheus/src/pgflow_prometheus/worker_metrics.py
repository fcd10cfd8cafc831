"""The metrics of one worker process: what its task hooks saw, labelled by flow and step.

Each worker process counts only its own tasks, so summing a counter over every worker's endpoint
gives the fleet's total.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LABELS = ("flow", "step")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.claimed = Counter(
            "pgflow_tasks_claimed",
            "Task attempts this worker process claimed.",
            LABELS,
            registry=registry,
        )
        self.completed = Counter(
            "pgflow_tasks_completed",
            "Task attempts whose handler returned in this worker process.",
            LABELS,
            registry=registry,
        )
        self.failed = Counter(
            "pgflow_tasks_failed",
            "Task attempts that failed in this worker process with no retry to follow.",
            LABELS,
            registry=registry,
        )
        self.retried = Counter(
            "pgflow_tasks_retried",
            "Task attempts that failed in this worker process and will be retried.",
            LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            "pgflow_task_duration_seconds",
            "Seconds a handler ran in this worker process, whether it returned or raised.",
            LABELS,
            registry=registry,
        )

    def task_claimed(self, flow_slug: str, step_slug: str) -> None:
        self.claimed.labels(flow_slug, step_slug).inc()

    def task_finished(self, flow_slug: str, step_slug: str, duration_seconds: float) -> None:
        self.completed.labels(flow_slug, step_slug).inc()
        self.duration.labels(flow_slug, step_slug).observe(duration_seconds)

    def task_failed(
        self, flow_slug: str, step_slug: str, duration_seconds: float, will_retry: bool
    ) -> None:
        (self.retried if will_retry else self.failed).labels(flow_slug, step_slug).inc()
        # an attempt whose handler never ran (an input that does not fit) has no duration
        if duration_seconds > 0:
            self.duration.labels(flow_slug, step_slug).observe(duration_seconds)
