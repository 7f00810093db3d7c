"""The worker's web pages, served by Faust's web server.

Owns ``/stats`` (counters, gauges and the garbage collector's pauses, as JSON),
``/metrics`` (the Prometheus text) and ``/query`` (one read-only SQL statement on
ClickHouse, refused otherwise). May only read the pipeline: no page changes its state,
sends to Kafka or writes to ClickHouse.
"""

from __future__ import annotations

from typing import Any

import orjson

from pathsentry.infra.clickhouse import is_read_only
from pathsentry.streams.metrics import prometheus_text
from pathsentry.streams.pipeline import Pipeline

__all__ = ["add_pages"]


def add_pages(app: Any, pipe: Pipeline) -> None:
    """Register the pages on the Faust ``app`` of ``pipe``'s worker."""
    worker_id, ch = pipe.worker_id, pipe.ch

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        since = int(request.query.get("since_ms", "0") or 0)
        latency = request.query.get("latency", "1") != "0"
        return web.json({"worker": worker_id, **pipe.stats.as_dict(since, latency), **pipe.gauges(),
                         "gc_pauses": pipe.gc_pauses.summary(since / 1000)})

    @app.page("/query")
    async def query_page(web: Any, request: Any) -> Any:
        sql = request.query.get("sql", "")
        if not is_read_only(sql):
            return web.json({"error": "only one read-only statement is allowed"}, status=400)
        try:
            cols, rows = await pipe.sink.run_blocking(ch.query, sql, None, True)
        except Exception as e:
            return web.json({"error": str(e)[:500]}, status=400)
        body = _dumps({"columns": cols, "rows": [list(r) for r in rows]})
        return web.text(body, content_type="application/json")

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.text(prometheus_text(pipe.stats).decode(), content_type="text/plain")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()
