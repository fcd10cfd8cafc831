"""The flow `pgflow demo` runs: parallel branches, a map over many items, and a fan-in.

    plan ──┬── analyze (map: one task per page) ──┐
           ├── estimate_cost ─────────────────────┼── report
           └── check_links ───────────────────────┘

The handlers stand in for real work (fetching and scoring pages) with a little arithmetic, so the
demo needs no network and finishes in seconds.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from pgflow.context import Context
from pgflow.flow import Flow


class SiteRequest(msgspec.Struct):
    site: str = "example.org"
    pages: int = 150


flow = Flow("pgflow_demo", max_attempts=3, base_delay=1, timeout=30)


@flow.step()
def plan(request: SiteRequest, ctx: Context) -> list[dict[str, Any]]:
    """Decide which pages to look at: one map task each."""
    ctx.logger.info("planning %d pages of %s", request.pages, request.site)
    return [
        {"url": f"https://{request.site}/page/{i}", "depth": i % 4} for i in range(request.pages)
    ]


@flow.map(array=plan)
def analyze(page: dict[str, Any]) -> dict[str, Any]:
    """Score one page (a hash stands in for fetching and parsing it)."""
    digest = hashlib.sha256(page["url"].encode()).digest()
    words = 200 + digest[0] * 4
    return {"url": page["url"], "words": words, "score": round(digest[1] / 255, 3)}


@flow.step(depends_on=[plan])
def estimate_cost(deps: dict[str, Any]) -> dict[str, Any]:
    pages = deps["plan"]
    return {"pages": len(pages), "cents": round(len(pages) * 0.15, 2)}


@flow.step(depends_on=[plan])
def check_links(deps: dict[str, Any]) -> dict[str, int]:
    deep = sum(1 for page in deps["plan"] if page["depth"] >= 2)
    return {"internal": len(deps["plan"]), "deep": deep}


@flow.step(depends_on=[analyze, estimate_cost, check_links])
def report(deps: dict[str, Any]) -> dict[str, Any]:
    """Fan-in: combine the branches into one summary."""
    pages = deps["analyze"]
    best = max(pages, key=lambda p: p["score"]) if pages else None
    return {
        "pages_analyzed": len(pages),
        "total_words": sum(p["words"] for p in pages),
        "average_score": round(sum(p["score"] for p in pages) / len(pages), 3) if pages else None,
        "best_page": best["url"] if best else None,
        "cost_cents": deps["estimate_cost"]["cents"],
        "deep_links": deps["check_links"]["deep"],
    }
