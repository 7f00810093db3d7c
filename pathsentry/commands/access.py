"""How the analyst commands (``query``, ``report``) reach the data.

Through a worker's read-only ``/query`` endpoint when one is named or can be found
(``--worker``, ``PATHSENTRY_WORKER_URL``, or the ``worker.url`` file a running worker
of the demo leaves in its data directory), else ClickHouse directly from the config.
The endpoint's bearer token comes from ``PATHSENTRY_QUERY_TOKEN`` or the ``query.token``
file (owner-only) the demo leaves beside ``worker.url``.
Every failure is one line that says what to do; nothing here creates a database.

>>> utc_text("2026-11-20 14:59:31.930"), utc_text("kr-sel-1"), utc_text(3)
('2026-11-20 14:59:31.930 UTC', 'kr-sel-1', 3)
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pathsentry.config import Config
from pathsentry.infra.redact import redact_text

__all__ = [
    "DEMO_DIR",
    "QUERY_TOKEN_FILE",
    "WORKER_URL_FILE",
    "query_token",
    "resolve_worker",
    "run_query",
    "utc_text",
    "write_query_token",
    "write_worker_url",
]

#: Where ``pathsentry demo`` keeps its data (its default ``--dir``).
DEMO_DIR = Path("var/demo")
#: The file, in a worker's data directory, that names its web endpoint.
WORKER_URL_FILE = "worker.url"
#: The file, beside ``worker.url``, holding the worker's query token (mode 0600).
QUERY_TOKEN_FILE = "query.token"
_TS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?$")


def utc_text(v: Any) -> Any:
    """ClickHouse prints ``DateTime64(3, 'UTC')`` without its zone: say it."""
    return f"{v} UTC" if isinstance(v, str) and _TS.match(v) else v


def write_worker_url(data_dir: str | Path, url: str) -> Path:
    """Leave ``url`` in ``data_dir/worker.url`` for the analyst commands to find."""
    path = Path(data_dir) / WORKER_URL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(url + "\n", encoding="utf-8")
    return path


def write_query_token(data_dir: str | Path, token: str) -> Path:
    """Leave ``token`` in ``data_dir/query.token``, readable by its owner only."""
    path = Path(data_dir) / QUERY_TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return path


def query_token(cfg: Config) -> str | None:
    """The bearer token for a worker's ``/query``: the environment, else a ``query.token`` file."""
    if os.environ.get("PATHSENTRY_QUERY_TOKEN"):
        return os.environ["PATHSENTRY_QUERY_TOKEN"]
    for candidate in (Path(cfg.data_dir) / QUERY_TOKEN_FILE, DEMO_DIR / QUERY_TOKEN_FILE):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip() or None
    return None


def _answers(url: str) -> bool:
    try:
        # latency=0: the worker skips sorting its latency samples for this probe
        with urllib.request.urlopen(url.rstrip("/") + "/stats?latency=0", timeout=2):
            return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def resolve_worker(explicit: str | None, cfg: Config) -> str | None:
    """The worker endpoint to read through, or None to read ClickHouse directly."""
    if explicit:
        return explicit
    if os.environ.get("PATHSENTRY_WORKER_URL"):
        return os.environ["PATHSENTRY_WORKER_URL"]
    for candidate in (Path(cfg.data_dir) / WORKER_URL_FILE, DEMO_DIR / WORKER_URL_FILE):
        if candidate.is_file():
            url = candidate.read_text(encoding="utf-8").strip()
            if url and _answers(url):
                return url
    return None


def _reason(e: BaseException) -> str:
    """The first line of an error, credentials stripped (or its type when it says nothing)."""
    text = redact_text(str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _chdb_path(url: str) -> Path | None:
    if not url.startswith("chdb://"):
        return None
    return Path(url[len("chdb://"):].partition("#")[0] or "./var/chdb")


def run_query(
    cfg: Config, sql: str, worker: str | None, token: str | None = None
) -> tuple[list[str], list[Any]]:
    """Run read-only SQL through a worker's query endpoint (with ``token``, default
    :func:`query_token`), or directly (SystemExit on failure)."""
    if worker:
        url = worker.rstrip("/") + "/query?" + urllib.parse.urlencode({"sql": sql})
        token = token or query_token(cfg)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                reason = json.loads(e.read()).get("error")
            except ValueError:
                reason = e.reason
            raise SystemExit(f"query failed: {reason}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            raise SystemExit(f"no worker answers at {worker} ({getattr(e, 'reason', e)}): is it running? "
                             "Start the demo with ./scripts/demo, or name a running worker with --worker URL"
                             ) from None
        return doc["columns"], doc["rows"]
    from pathsentry.infra.clickhouse import connect
    from pathsentry.infra.querypolicy import QueryLimits
    from pathsentry.infra.redact import redact_url

    path = _chdb_path(cfg.clickhouse.url)
    if path is not None and not path.is_dir():
        raise SystemExit(f"no pathsentry data at {path}: start the demo (./scripts/demo) and run this again, "
                         "or point at a running worker with --worker URL or at your data with --config FILE")
    try:
        ch = connect(cfg.clickhouse.url, QueryLimits.from_config(cfg.clickhouse))
    except Exception as e:
        raise SystemExit(f"cannot open ClickHouse at {redact_url(cfg.clickhouse.url)}: {_reason(e)}"
                         ) from None
    try:
        cols, rows = ch.query(sql)
        return cols, [list(r) for r in rows]
    except PermissionError as e:
        raise SystemExit(f"query refused: {e}") from None
    except Exception as e:
        raise SystemExit(f"query failed: {_reason(e)}") from None
    finally:
        ch.close()
