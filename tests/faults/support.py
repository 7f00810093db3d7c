"""Shared helpers of the fault-injection and hostile-input tests.

Everything runs on loopback against the real engines: the embedded Tansu broker,
``pathsentry worker`` processes (Faust) and chDB. A :class:`WorkerProcess` can be
killed with SIGKILL and started again on the same chDB directory, data directory
and topic prefix, so its consumer groups resume where they committed. It is the one
worker-process helper of the tests: the end-to-end scenarios of ``tests/integration``
run theirs with it too (on Apache Kafka and clickhouse-server as well).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from pathsentry.bench.run import world_start
from pathsentry.config import Config, load_config
from pathsentry.infra.broker import create_topics, free_port
from pathsentry.replay import ReplayResult, replay
from pathsentry.schemas import parse_event, topic_for
from pathsentry.sim.world import World, WorldSpec, write_world_files
from pathsentry.streams.topics import Topics

__all__ = [
    "STABLE_KINDS",
    "STREAM_SETTINGS",
    "KafkaRecord",
    "WorkerProcess",
    "alert_keys",
    "check_outputs",
    "consume_all",
    "ensure_topics",
    "expected_flags",
    "group_lag",
    "produce",
    "recent_world",
    "route_events",
    "sim_events",
    "wait_for",
    "wait_settled",
    "worker_process",
    "write_world",
]

#: Worker settings for the tests: small batches, a short session timeout (fast rejoin on Tansu).
#: ``path_injection`` is compared with the replay's as a per-event verdict, so its flags are
#: not held for a later witness (``hold_s``: a held flag depends on the answers after it and
#: lives in the learned state, which a kill may lose; the README's *Limits* say so).
STREAM_SETTINGS = """
[kafka]
partitions = 2
session_timeout_s = 6
max_in_flight = 2000
[clickhouse]
batch_size = 500
flush_interval_s = 0.3
[detectors.injection]
hold_s = 0.0
"""

#: Largest message the tests' producers may send (the 10 MB hostile payload fits).
MAX_REQUEST_BYTES = 16 << 20

#: (topic, key, value) of one message to produce.
KafkaRecord = tuple[str, bytes | None, bytes]


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.3,
    on_timeout: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}. {extra}")
        time.sleep(interval)


# -- simulated worlds -------------------------------------------------------------------


def recent_world(seed: int, accounts: int, hours: float = 24.0) -> WorldSpec:
    """A recent world (flags older than the tables' TTL of 180 days would be dropped on insert)
    that starts at midnight UTC two days before now: day-aligned, so a test sees the same
    events (and the same hours of the day, which the hour-keyed detectors read) whenever it
    runs, and the world has ended before now for any ``hours`` up to 48."""
    start = world_start()
    return WorldSpec(seed=seed, accounts=accounts, hours=hours, start=start)


def write_world(directory: Path, spec: WorldSpec) -> Path:
    """Write the world's ``geo.csv`` and ``pathsentry.toml`` (plus the test stream settings)."""
    _, toml = write_world_files(spec, directory)
    toml.write_text(toml.read_text(encoding="utf-8") + STREAM_SETTINGS, encoding="utf-8")
    return toml


def sim_events(spec: WorldSpec, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` events of ``spec``'s world, in ``ts`` order."""
    out: list[dict[str, Any]] = []
    for sim in World(spec).stream():
        out.append(sim.event)
        if limit is not None and len(out) >= limit:
            break
    return out


def replay_events(events: Sequence[dict[str, Any]], config_path: Path) -> ReplayResult:
    """``pathsentry replay`` of ``events`` with the configuration at ``config_path``."""
    path = config_path.parent / "expected-events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return replay([path], load_config(config_path, env={}))


def expected_flags(
    events: Sequence[dict[str, Any]], config_path: Path, kinds: frozenset[str]
) -> set[tuple[str, str]]:
    """``(event_id, kind)`` of the flags ``pathsentry replay`` raises on ``events``, for ``kinds``."""
    return {k for k in replay_events(events, config_path).flags if k[1] in kinds}


def expected_farm_groups(events: Sequence[dict[str, Any]], config_path: Path) -> list[frozenset[str]]:
    """Member accounts of each farm group ``pathsentry replay`` alerts on ``events``."""
    res = replay_events(events, config_path)
    return [frozenset(a.accounts) for a in res.alerts.values() if a.kind == "farm_group"]


def match_groups(
    want: Sequence[frozenset[str]], got: Sequence[frozenset[str]], coverage: float = 0.8
) -> tuple[list[frozenset[str]], list[frozenset[str]]]:
    """(groups of ``want`` that no group of ``got`` covers to ``coverage``, groups of ``got``
    that share fewer than half of their members with every group of ``want``)."""
    missed = [w for w in want if not any(len(w & g) >= coverage * len(w) for g in got)]
    stray = [g for g in got if not any(len(w & g) * 2 >= len(g) for w in want)]
    return missed, stray


def route_events(events: Iterable[dict[str, Any]], topics: Topics) -> list[KafkaRecord]:
    """Topic, key and value of each event, as a game backend publishes them."""
    out: list[KafkaRecord] = []
    for ev in events:
        logical, key = topic_for(parse_event(ev))
        topic = topics.logins if logical == "logins" else topics.telemetry
        out.append((topic, key.encode(), orjson.dumps(ev)))
    return out


# -- Kafka ------------------------------------------------------------------------------


async def _produce(bootstrap: str, records: Sequence[KafkaRecord]) -> list[tuple[str, int, int]]:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=MAX_REQUEST_BYTES,
        max_batch_size=1 << 20, request_timeout_ms=30_000,
    )
    await prod.start()
    try:
        futures = [await prod.send(t, v, key=k) for t, k, v in records]
        await prod.flush()
        mds = [await f for f in futures]
    finally:
        await prod.stop()
    return [(md.topic, md.partition, md.offset) for md in mds]


def produce(bootstrap: str, records: Sequence[KafkaRecord]) -> list[tuple[str, int, int]]:
    """Send ``records`` (acks=all); return each one's (topic, partition, offset)."""
    return asyncio.run(_produce(bootstrap, records))


async def _consume_all(bootstrap: str, topic: str, idle_s: float, timeout: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    cons = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
        enable_auto_commit=False, max_partition_fetch_bytes=MAX_REQUEST_BYTES,
    )
    await cons.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - last_new < idle_s:
            batch = await cons.getmany(timeout_ms=300)
            for msgs in batch.values():
                out.extend(msgs)
                last_new = time.monotonic()
    finally:
        await cons.stop()
    return out


def consume_all(bootstrap: str, topic: str, idle_s: float = 3.0, timeout: float = 60.0) -> list[Any]:
    """Every record of ``topic`` from the beginning (stops after ``idle_s`` without news)."""
    return asyncio.run(_consume_all(bootstrap, topic, idle_s, timeout))


async def _group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    # a member of ``group`` that never subscribes: it only reads the group's committed offsets
    cons = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await cons.start()
    try:
        cluster = await cons._client.fetch_all_metadata()
        tps = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t) or ())]
        ends = await cons.end_offsets(tps)
        lag = 0
        for tp in tps:
            done = await cons.committed(tp)
            lag += max(0, ends[tp] - (done or 0))
        return lag
    finally:
        await cons.stop()


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Messages of ``topics`` not yet committed by consumer group ``group``."""
    return asyncio.run(_group_lag(bootstrap, group, topics))


def ensure_topics(bootstrap: str, topics: Topics) -> None:
    """Create the worker's topics (after a broker restart the in-memory log is empty)."""
    asyncio.run(create_topics(bootstrap, topics.all()))


# -- checks -----------------------------------------------------------------------------

#: Flag kinds whose verdict is per event and independent of detector state (see test_kill_restart).
STABLE_KINDS = frozenset({"path_injection", "route_anomaly"})


def alert_keys(worker: WorkerProcess) -> set[str]:
    """Alert ids published on the alerts topic (the message key is the alert id)."""
    return {m.key.decode() for m in consume_all(worker.bootstrap, worker.topics.alerts)}


def check_outputs(
    worker: WorkerProcess, expected: set[tuple[str, str]], published_before: frozenset[str] = frozenset()
) -> dict[str, int]:
    """Compare ClickHouse with the expected flags; return the figures of the run.

    ``published_before``: alert ids read from a broker incarnation that is gone.
    """
    kinds = ", ".join(f"'{k}'" for k in sorted(STABLE_KINDS))
    rows = worker.query(
        f"SELECT event_id, kind FROM pathsentry.flagged_events FINAL WHERE kind IN ({kinds})"
    )
    stored = {(r[0], r[1]) for r in rows}
    lost, invented = expected - stored, stored - expected
    assert not lost, f"{len(lost)} expected flags missing from ClickHouse, e.g. {sorted(lost)[:5]}"
    assert not invented, f"{len(invented)} flags not raised by replay, e.g. {sorted(invented)[:5]}"

    dups = worker.query(
        "SELECT event_id, kind, count() AS n FROM pathsentry.flagged_events FINAL "
        "GROUP BY event_id, kind HAVING n > 1 LIMIT 10"
    )
    assert dups == [], f"duplicates visible after FINAL: {dups}"
    raw, distinct = worker.query(
        "SELECT count(), uniqExact(event_id, kind) FROM pathsentry.flagged_events"
    )[0]

    alert_ids = {r[0] for r in worker.query("SELECT DISTINCT alert_id FROM pathsentry.alerts")}
    published = alert_keys(worker) | published_before
    unpublished = alert_ids - published
    assert not unpublished, f"alerts in ClickHouse never published on Kafka: {sorted(unpublished)[:5]}"
    return {
        "expected_flags": len(expected), "stored_flags": len(stored), "lost": len(lost),
        "duplicates_visible": len(dups), "raw_rows": int(raw), "distinct_rows": int(distinct),
        "alerts_stored": len(alert_ids), "alerts_published": len(published),
    }


# -- worker processes -------------------------------------------------------------------


_NOISE = re.compile(
    r"Unable connect|Unable to update metadata|NodeNotReady|Failed fetch messages|"
    r"Group Coordinator Request failed|Connect call failed"
)


def _http_json(url: str | urllib.request.Request, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class WorkerProcess:
    """A ``pathsentry worker`` process that can be SIGKILLed and started again on the same state.

    ``clickhouse``: a chDB directory, or the URL of a ClickHouse server."""

    config_path: Path
    kafka_url: str
    clickhouse: Path | str
    prefix: str = field(default_factory=lambda: f"t{time.time_ns()}.")
    port: int = field(default_factory=free_port)
    loglevel: str = "warning"
    #: the bearer token of the worker's /query
    query_token: str = field(default_factory=lambda: f"qt-{time.time_ns()}")
    #: more environment for the process
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    _log: IO[bytes] | None = None

    @property
    def workdir(self) -> Path:
        return self.config_path.parent

    @property
    def log_path(self) -> Path:
        return self.workdir / "worker.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return self.kafka_url.split("://", 1)[-1]

    @property
    def config(self) -> Config:
        return load_config(self.config_path, env=self.env)

    @property
    def topics(self) -> Topics:
        return Topics(self.config.kafka)

    @property
    def clickhouse_url(self) -> str:
        c = self.clickhouse
        return c if isinstance(c, str) else f"chdb://{c}"

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            PATHSENTRY_CONFIG=str(self.config_path),
            PATHSENTRY_KAFKA_URL=self.kafka_url,
            PATHSENTRY_CLICKHOUSE_URL=self.clickhouse_url,
            PATHSENTRY_TOPIC_PREFIX=self.prefix,
            PATHSENTRY_DATA_DIR=str(self.workdir / "var"),
            PATHSENTRY_QUERY_TOKEN=self.query_token,
            **self.extra_env,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        """The end of the worker's log, without the connection-retry noise of a broker outage."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        kept = [ln for ln in lines if not _NOISE.search(ln)]
        return "\n".join(kept)[-n:] + f"\n({len(lines) - len(kept)} connection-retry lines omitted)"

    def start(self, timeout: float = 90.0) -> None:
        """Start the process and wait until its web endpoint answers."""
        assert not self.alive, "worker already running"
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close()
        self._log.write(f"--- start {self.starts + 1} ---\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pathsentry", "worker", "--web-port", str(self.port),
             "--loglevel", self.loglevel],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.starts += 1

        def up() -> bool:
            if not self.alive:
                pytest.fail("worker exited during start-up:\n" + self.log_tail())
            try:
                self.stats()
                return True
            except OSError:
                return False

        wait_for(up, timeout, "the worker's web endpoint", on_timeout=self.log_tail)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final snapshot, no commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail("worker did not stop on SIGTERM:\n" + self.log_tail())

    def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = _http_json(self.base + "/stats?latency=0", timeout=5)
        return result

    def query_request(self, sql: str, token: str | None = "", host: str | None = None
                      ) -> urllib.request.Request:
        """A GET of ``/query`` with the worker's token (``token=""``), another, or none (None)."""
        headers = {} if token is None else {"Authorization": f"Bearer {token or self.query_token}"}
        if host is not None:
            headers["Host"] = host
        return urllib.request.Request(self.base + "/query?" + urllib.parse.urlencode({"sql": sql}),
                                      headers=headers)

    def query(self, sql: str) -> list[list[Any]]:
        """Rows of a read-only query, through the worker's query endpoint."""
        try:
            doc = _http_json(self.query_request(sql), timeout=60)
        except urllib.error.HTTPError as e:
            pytest.fail(f"query failed ({e.code}): {e.read()[:500]!r}")
        rows: list[list[Any]] = doc["rows"]
        return rows

    def lag(self) -> int:
        """Messages not yet committed by the ingest loop and by the Faust agents."""
        t = self.topics
        return (
            group_lag(self.bootstrap, f"{self.prefix}pathsentry-ingest", [t.logins, t.telemetry])
            + group_lag(self.bootstrap, f"{self.prefix}pathsentry", [t.sessions, t.groups, t.rooms])
        )

    def wait_drained(self, timeout: float) -> None:
        """Wait until every consumer group has committed everything (twice in a row)."""
        seen: list[int] = []

        def drained() -> bool:
            if not self.alive:
                pytest.fail("worker died:\n" + self.log_tail())
            seen.append(self.lag())
            return seen[-2:] == [0, 0]

        wait_for(drained, timeout, "the worker to drain its topics", interval=1.0,
                 on_timeout=lambda: f"lag history {seen[-5:]}\n{self.log_tail()}")


def wait_settled(workers: Sequence[WorkerProcess], timeout: float = 90.0) -> None:
    """Wait until the workers' consumer groups are settled: every partition of the
    producers' topics and of the sessions topic is consumed by exactly one of them, and
    each of them consumes some of both."""
    topics = workers[0].topics
    wanted = {topics.logins, topics.telemetry, topics.sessions}
    n = settings_partitions()
    seen: list[Any] = []

    def settled() -> bool:
        owned = [{(t, p) for t, ps in w.stats()["assigned"].items() if t in wanted for p in ps}
                 for w in workers]
        seen[:] = [sorted(o) for o in owned]
        every = {(t, p) for t in wanted for p in range(n)}
        disjoint = sum(len(o) for o in owned) == len(set().union(*owned))
        both = all(any(t == topics.sessions for t, _ in o) and any(t != topics.sessions for t, _ in o)
                   for o in owned)
        return disjoint and both and set().union(*owned) == every

    wait_for(settled, timeout, "the consumer groups to settle", on_timeout=lambda: f"assigned: {seen}")


def settings_partitions() -> int:
    """The partition count :data:`STREAM_SETTINGS` gives every topic."""
    partitions: int = tomllib.loads(STREAM_SETTINGS)["kafka"]["partitions"]
    return partitions


@contextlib.contextmanager
def worker_process(config_path: Path, kafka_url: str, clickhouse: Path | str,
                   **kw: Any) -> Iterator[WorkerProcess]:
    """A :class:`WorkerProcess` (not started) that is killed and closed on exit."""
    w = WorkerProcess(config_path, kafka_url, clickhouse, **kw)
    try:
        yield w
    finally:
        w.close()
