"""ClickHouse behind one small interface, with two implementations:

- :class:`NativeClickHouse`: a clickhouse-server over the native protocol
  (``clickhouse-driver``), URL ``clickhouse://user:pass@host:9000/db[?secure=1]``.
- :class:`ChdbClickHouse`: chDB, the ClickHouse engine in-process, URL
  ``chdb:///path/to/dir`` (one process per directory).

Both run the same DDL (``infra/ddl/*.sql``) and insert rows as data,
never as SQL text: the native driver sends typed columns, chDB receives
``FORMAT JSONEachRow`` data after the statement. Every insert carries a
deterministic ``insert_deduplication_token`` so a retried batch is stored once.

>>> rows = [flag_row(FlaggedEvent(event_id="e1", ts="2026-01-01T00:00:00Z",
...     kind="vpn_relay", src_ip="203.0.113.1", score=0.9, reasons=["r"],
...     evidence={"gap_ms": 80.0}, detector="latency"))]
>>> rows[0]["asn"], rows[0]["evidence"]
(0, '{"gap_ms":80.0}')
>>> batch_token("flagged_events", ["e1|vpn_relay"]) == batch_token("flagged_events", ["e1|vpn_relay"])
True
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import orjson

from pathsentry.infra.querypolicy import QueryLimits, QueryRefused, first_filter, vet
from pathsentry.infra.redact import redact_url
from pathsentry.schemas import AccountLabel, Alert, FlaggedEvent

__all__ = [
    "ALERT_COLUMNS",
    "FLAG_COLUMNS",
    "LABEL_COLUMNS",
    "ChdbClickHouse",
    "ChdbReader",
    "ClickHouse",
    "NativeClickHouse",
    "QueryLimits",
    "QueryRefused",
    "QueryResult",
    "alert_row",
    "batch_token",
    "connect",
    "ddl_statements",
    "flag_row",
    "is_read_only",
    "label_row",
]

log = logging.getLogger(__name__)

FLAG_COLUMNS = (
    "event_id", "ts", "kind", "account", "session_id", "src_ip", "country", "asn",
    "score", "reasons", "evidence", "alert_id", "detector",
)
ALERT_COLUMNS = (
    "alert_id", "ts", "kind", "severity", "score", "subject", "accounts", "event_ids",
    "evidence", "summary", "detector", "first_seen", "last_seen", "version",
)

LABEL_COLUMNS = ("event_id", "ts", "account", "label", "source", "evidence_ref")

QueryResult = tuple[list[str], list[tuple[Any, ...]]]


def _json(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str).decode()


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC)


def flag_row(f: FlaggedEvent) -> dict[str, Any]:
    return {
        "event_id": f.event_id, "ts": _utc(f.ts), "kind": f.kind, "account": f.account or "",
        "session_id": f.session_id or "", "src_ip": f.src_ip, "country": f.country or "",
        "asn": f.asn or 0, "score": float(f.score), "reasons": list(f.reasons),
        "evidence": _json(f.evidence), "alert_id": f.alert_id or "", "detector": f.detector,
    }


def alert_row(a: Alert) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id, "ts": _utc(a.ts), "kind": a.kind, "severity": a.severity,
        "score": float(a.score), "subject": _json(a.subject), "accounts": list(a.accounts),
        "event_ids": list(a.event_ids), "evidence": _json(a.evidence), "summary": a.summary,
        "detector": a.detector, "first_seen": _utc(a.first_seen), "last_seen": _utc(a.last_seen),
        "version": a.version,
    }


def label_row(lb: AccountLabel) -> dict[str, Any]:
    return {
        "event_id": lb.event_id, "ts": _utc(lb.ts), "account": lb.account, "label": lb.label,
        "source": lb.source, "evidence_ref": lb.evidence_ref or "",
    }


def batch_token(table: str, keys: Sequence[str]) -> str:
    """Deterministic dedup token for a batch: the same rows give the same token."""
    h = hashlib.blake2b(table.encode(), digest_size=16)
    for k in keys:
        h.update(b"\x1f" + k.encode())
    return h.hexdigest()


def ddl_statements(db: str, ttl_days: int) -> list[str]:
    """Every statement of ``infra/ddl/*.sql`` in file-name order, placeholders filled.

    >>> stmts = ddl_statements("soc", 30)
    >>> stmts[0], any("soc.alerts" in s for s in stmts)
    ('CREATE DATABASE IF NOT EXISTS soc', True)
    """
    ddl_dir = resources.files("pathsentry.infra").joinpath("ddl")
    out: list[str] = []
    for f in sorted((p for p in ddl_dir.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        text = "\n".join(ln for ln in f.read_text().splitlines() if not ln.lstrip().startswith("--"))
        text = text.replace("{db}", db).replace("{ttl_days}", str(int(ttl_days)))
        out.extend(s.strip() for s in text.split(";") if s.strip())
    return out


def is_read_only(sql: str) -> bool:
    """The first, text-only filter on analyst SQL (see :mod:`pathsentry.infra.querypolicy`):
    False for what is plainly not a query. The allow-decision is :func:`querypolicy.vet`.

    >>> is_read_only("SELECT 1"), is_read_only("DROP TABLE x"), is_read_only("")
    (True, False, False)
    """
    return first_filter(sql) is None


class ClickHouse(Protocol):
    db: str

    def apply_ddl(self, ttl_days: int) -> None: ...

    def insert(
        self, table: str, columns: Sequence[str], rows: list[dict[str, Any]], token: str
    ) -> None: ...

    def query(
        self, sql: str, params: dict[str, Any] | None = None, read_only: bool = True
    ) -> QueryResult:
        """Run ``sql``. ``read_only`` (the default, for any SQL that is not the program's
        own): vetted by :func:`querypolicy.vet` and run on the read-only, limited
        connection; refused with :class:`QueryRefused`."""
        ...

    def close(self) -> None: ...


class NativeClickHouse:
    """clickhouse-server through clickhouse-driver (native TCP, optionally TLS).

    Analyst queries use a second connection of their own, opened on first use, whose every
    query carries the :class:`QueryLimits` settings with ``readonly=1``: the sink's
    connection never waits for them.
    """

    def __init__(self, url: str, limits: QueryLimits | None = None) -> None:
        from clickhouse_driver import Client

        u = urlparse(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        self.db = (u.path or "/pathsentry").lstrip("/") or "pathsentry"
        self.limits = limits or QueryLimits()
        self._connect_kwargs: dict[str, Any] = dict(
            host=u.hostname or "localhost",
            port=u.port or 9000,
            user=unquote(u.username or "default"),
            password=unquote(u.password or ""),
            secure=q.get("secure", "0") in ("1", "true"),
            verify=q.get("verify", "1") in ("1", "true"),
            ca_certs=q.get("ca_certs"),
        )
        self._client = Client(**self._connect_kwargs, settings={"use_numpy": False})
        self._lock = threading.Lock()
        self._reader: Any = None
        self._reader_lock = threading.Lock()

    def apply_ddl(self, ttl_days: int) -> None:
        with self._lock:
            for stmt in ddl_statements(self.db, ttl_days):
                self._client.execute(stmt)

    def insert(self, table: str, columns: Sequence[str], rows: list[dict[str, Any]], token: str) -> None:
        if not rows:
            return
        sql = f"INSERT INTO {self.db}.{table} ({', '.join(columns)}) VALUES"
        with self._lock:
            self._client.execute(sql, rows, settings={"insert_deduplication_token": token})

    def canonical_sql(self, sql: str) -> str:
        """:class:`SqlParser`: the text travels as a bound parameter (escaped by the driver)."""
        rows = self._analyst().execute("SELECT %(q)s, formatQuerySingleLine(%(q)s)", {"q": sql})
        if not rows or rows[0][0] != sql:
            raise QueryRefused("query text did not reach the parser intact")
        return str(rows[0][1])

    def explain_ast(self, sql: str) -> list[str]:
        return [str(r[0]) for r in self._analyst().execute("EXPLAIN AST " + sql)]

    def _analyst(self) -> Any:
        if self._reader is None:
            from clickhouse_driver import Client

            settings: dict[str, Any] = {"use_numpy": False, **dict(self.limits.settings())}
            self._reader = Client(**self._connect_kwargs, database=self.db, settings=settings)
        return self._reader

    def query(self, sql: str, params: dict[str, Any] | None = None, read_only: bool = True) -> QueryResult:
        if read_only:
            with self._reader_lock:
                safe = vet(sql, self.db, self)
                data, types = self._analyst().execute(safe, params or None, with_column_types=True)
                self.limits.check_rows(len(data))
        else:
            with self._lock:
                data, types = self._client.execute(sql, params or {}, with_column_types=True)
        return [name for name, _ in types], [tuple(r) for r in data]

    def close(self) -> None:
        self._client.disconnect()
        if self._reader is not None:
            self._reader.disconnect()


class ChdbReader:
    """A chDB session of its own for analyst queries: current database the worker's, the
    :class:`QueryLimits` applied, then ``readonly=1`` (which the session cannot undo).
    Measured: it answers while the writer session inserts (see ``tests/test_query_policy.py``)."""

    def __init__(self, path: str, db: str, limits: QueryLimits) -> None:
        from chdb import session

        self._s = session.Session(path)
        try:
            for stmt in [f"USE {db}", *limits.set_statements()]:
                self._s.query(stmt)
        except Exception:
            self._s.close()
            raise

    def canonical_sql(self, sql: str) -> str:
        """:class:`SqlParser`: the text travels as a query parameter (TSV-escaped data);
        the engine returns it beside its canonical form so a lossy escape is caught."""
        res = self._s.query("SELECT {q:String}, formatQuerySingleLine({q:String})", "JSONCompact",
                            params={"q": _tsv_escape(sql)})
        data = orjson.loads(res.bytes()).get("data") or [[None, None]]
        if data[0][0] != sql:
            raise QueryRefused("query text did not reach the parser intact")
        return str(data[0][1])

    def explain_ast(self, sql: str) -> list[str]:
        res = self._s.query("EXPLAIN AST " + sql, "JSONCompact")
        return [str(r[0]) for r in orjson.loads(res.bytes()).get("data", [])]

    def run(self, sql: str, params: dict[str, Any] | None) -> QueryResult:
        return _chdb_result(self._s.query(sql, "JSONCompact", params=params or {}))

    def close(self) -> None:
        self._s.close()


def _tsv_escape(v: str) -> str:
    r"""A string as a chDB query-parameter value (parsed as escaped TSV).

    >>> print(_tsv_escape("a\\b\tc\nd"))
    a\\b\tc\nd
    """
    return (v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r").replace("\0", "\\0"))


def _chdb_result(res: Any) -> QueryResult:
    body = res.bytes() if hasattr(res, "bytes") else bytes(res)
    if not body:
        return [], []
    doc = orjson.loads(body)
    return [m["name"] for m in doc.get("meta", [])], [tuple(r) for r in doc.get("data", [])]


class ChdbClickHouse:
    """chDB (in-process ClickHouse) on a persistent directory: one session for the
    program's own statements and inserts, one read-only session (:class:`ChdbReader`,
    opened on first use) for analyst queries, each behind its own lock."""

    def __init__(self, path: str, db: str = "pathsentry", limits: QueryLimits | None = None) -> None:
        from chdb import session

        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = db
        self.limits = limits or QueryLimits()
        self._s = session.Session(path)
        self._lock = threading.Lock()
        self._reader: ChdbReader | None = None
        self._reader_lock = threading.Lock()

    def apply_ddl(self, ttl_days: int) -> None:
        with self._lock:
            for stmt in ddl_statements(self.db, ttl_days):
                self._s.query(stmt)

    def insert(self, table: str, columns: Sequence[str], rows: list[dict[str, Any]], token: str) -> None:
        if not rows:
            return
        # a row with exactly these columns, in order (what the row builders above make), is
        # dumped as it is: only its datetimes go through Python (one call each)
        keys = tuple(columns)
        payload = b"\n".join(
            orjson.dumps(r if tuple(r) == keys else {c: r[c] for c in columns},
                         default=_chdb_value, option=orjson.OPT_PASSTHROUGH_DATETIME)
            for r in rows
        ).decode()
        sql = (
            f"INSERT INTO {self.db}.{table} ({', '.join(columns)}) "
            f"SETTINGS insert_deduplication_token='{token}', date_time_input_format='best_effort' "
            f"FORMAT JSONEachRow\n{payload}"
        )
        with self._lock:
            self._s.query(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None, read_only: bool = True) -> QueryResult:
        if not read_only:
            with self._lock:
                return _chdb_result(self._s.query(sql, "JSONCompact", params=params or {}))
        with self._reader_lock:
            if self._reader is None:
                self._reader = ChdbReader(self.path, self.db, self.limits)
            try:
                cols, rows = self._reader.run(vet(sql, self.db, self._reader), params)
                self.limits.check_rows(len(rows))
                return cols, rows
            except Exception:
                # chDB hands the partial output of a failed query to the session's next
                # query: a session that saw an error is not used again
                self._reader.close()
                self._reader = None
                raise

    def close(self) -> None:
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._lock:
            self._s.close()


def _chdb_value(v: Any) -> Any:
    """orjson's ``default`` for a chDB row (datetimes are passed through to it): a datetime
    as ``YYYY-MM-DD hh:mm:ss.mmm`` (truncated to ms), a date or time in ISO form."""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(v, date | time):
        return v.isoformat()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def connect(url: str, limits: QueryLimits | None = None) -> ClickHouse:
    """Open ClickHouse from ``clickhouse://…`` or ``chdb:///dir`` (relative: ``chdb://./dir``);
    ``limits`` bound analyst queries (default :class:`QueryLimits`)."""
    if url.startswith("chdb://"):
        rest = url[len("chdb://"):]
        path, _, db = rest.partition("#")
        return ChdbClickHouse(path or "./var/chdb", db or "pathsentry", limits)
    if url.startswith(("clickhouse://", "clickhouses://")):
        if url.startswith("clickhouses://"):
            url = "clickhouse://" + url[len("clickhouses://"):] + ("&" if "?" in url else "?") + "secure=1"
        return NativeClickHouse(url, limits)
    raise ValueError(f"unsupported ClickHouse URL {redact_url(url)!r}: use clickhouse://… or chdb:///dir")
