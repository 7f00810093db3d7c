"""The worker's web pages, served by Faust's web server, and who may reach them.

Owns ``/stats`` (counters, gauges and the garbage collector's pauses, as JSON),
``/metrics`` (the Prometheus text) and ``/query`` (one read-only SQL statement on
ClickHouse, refused otherwise). May only read the pipeline: no page changes its state,
sends to Kafka or writes to ClickHouse. No page shows a URL, a credential or a token.

Access (:class:`WebAccess`, from the environment):

- ``PATHSENTRY_WEB_HOST``: the bind address (default ``127.0.0.1``; ``0.0.0.0`` in a
  container).
- Every page checks the ``Host`` header: an IP literal, ``localhost``, the bind address, or a
  name listed in ``PATHSENTRY_WEB_ALLOWED_HOSTS`` (comma-separated). A web page elsewhere
  that rebinds its own DNS name to this machine is refused (403).
- ``/query`` needs ``PATHSENTRY_QUERY_TOKEN``, sent as ``Authorization: Bearer <token>``
  (401 without it or with another); with no token configured ``/query`` is off (404).
  It runs on a thread of its own (``ClickHouse.query`` uses its own read-only connection),
  one query at a time, at most :data:`MAX_IN_FLIGHT` running or waiting (429 beyond): the
  sink's thread never runs an analyst query.

>>> a = WebAccess(token="t0k", host="127.0.0.1", allowed_hosts=frozenset({"worker"}))
>>> [a.host_allowed(h) for h in ("127.0.0.1:6066", "worker:6066", "[::1]:6066", "evil.example:6066")]
[True, True, True, False]
>>> a.authorized("Bearer t0k"), a.authorized("Bearer t0"), a.authorized(None)
(True, False, False)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from pathsentry.infra.clickhouse import is_read_only
from pathsentry.infra.querypolicy import QueryRefused
from pathsentry.streams.metrics import prometheus_text
from pathsentry.streams.pipeline import Pipeline

__all__ = ["MAX_IN_FLIGHT", "WebAccess", "add_pages"]

log = logging.getLogger(__name__)

#: analyst queries running or waiting at once; more are answered 429
MAX_IN_FLIGHT = 4


@dataclass(frozen=True)
class WebAccess:
    """Who may reach the pages: bind address, accepted ``Host`` names, the query token."""

    token: str | None
    host: str = "127.0.0.1"
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebAccess:
        env = os.environ if env is None else env
        names = {h.strip().lower() for h in env.get("PATHSENTRY_WEB_ALLOWED_HOSTS", "").split(",")}
        return cls(token=env.get("PATHSENTRY_QUERY_TOKEN") or None,
                   host=env.get("PATHSENTRY_WEB_HOST") or "127.0.0.1",
                   allowed_hosts=frozenset(n for n in names if n))

    def host_allowed(self, host_header: str | None) -> bool:
        """True for a ``Host`` that is no DNS name an outside page could control."""
        if not host_header:
            return False
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1:].partition("]")[0]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        if host in ("localhost", self.host.lower()) or host in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True

    def authorized(self, authorization: str | None) -> bool:
        if not self.token or not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  self.token.encode())


def add_pages(app: Any, pipe: Pipeline, access: WebAccess | None = None) -> None:
    """Register the pages on the Faust ``app`` of ``pipe``'s worker."""
    worker_id, ch = pipe.worker_id, pipe.ch
    access = access or WebAccess.from_env()
    analyst = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analyst-query")
    waiting = [0]

    def refused(web: Any, request: Any) -> Any | None:
        if not access.host_allowed(request.headers.get("Host")):
            return web.json({"error": "Host not allowed"}, status=403)
        return None

    @app.page("/stats")
    async def stats_page(web: Any, request: Any) -> Any:
        if (r := refused(web, request)) is not None:
            return r
        since = int(request.query.get("since_ms", "0") or 0)
        latency = request.query.get("latency", "1") != "0"
        return web.json({"worker": worker_id, **pipe.stats.as_dict(since, latency), **pipe.gauges(),
                         "gc_pauses": pipe.gc_pauses.summary(since / 1000)})

    @app.page("/query")
    async def query_page(web: Any, request: Any) -> Any:
        if (r := refused(web, request)) is not None:
            return r
        if not access.token:
            return web.json({"error": "the query endpoint is off: set PATHSENTRY_QUERY_TOKEN"}, status=404)
        if not access.authorized(request.headers.get("Authorization")):
            return web.json({"error": "Authorization: Bearer <PATHSENTRY_QUERY_TOKEN> required"},
                            status=401, headers={"WWW-Authenticate": "Bearer"})
        sql = request.query.get("sql", "")
        if not is_read_only(sql):
            return web.json({"error": "only one read-only statement is allowed"}, status=400)
        if waiting[0] >= MAX_IN_FLIGHT:
            return web.json({"error": "too many analyst queries waiting; retry later"}, status=429)
        waiting[0] += 1
        try:
            cols, rows = await asyncio.get_running_loop().run_in_executor(analyst, ch.query, sql, None, True)
        except QueryRefused as e:
            log.warning("query refused: %s", e)
            return web.json({"error": f"refused: {e}"}, status=400)
        except Exception as e:
            return web.json({"error": str(e)[:500]}, status=400)
        finally:
            waiting[0] -= 1
        body = _dumps({"columns": cols, "rows": [list(r) for r in rows]})
        return web.text(body, content_type="application/json")

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        if (r := refused(web, request)) is not None:
            return r
        return web.text(prometheus_text(pipe.stats).decode(), content_type="text/plain")


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()
