"""The flow `benches/bench_deploy.py` runs: a map whose tasks take a few seconds, with a short
timeout, like a real step cut off by a deploy."""

from __future__ import annotations

import time
from typing import Any

from pgflow.flow import Flow

deploy = Flow("bench_deploy", timeout=5, max_attempts=3, base_delay=5)


@deploy.map()
def work(item: Any) -> int:
    time.sleep(float(item["seconds"]))
    return int(item["n"])
