"""Harness for end-to-end runs on real engines: the embedded Tansu broker, a `pathsentry worker`
process (Faust) and chDB. Events go in through Kafka; flagged events are read
back from ClickHouse (through the worker's query endpoint, and directly once
the worker has released the chDB directory), alerts from the alerts topic and
refused messages from the dead-letter topic. The worker process is a
:class:`tests.faults.support.WorkerProcess`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import STREAM_SETTINGS, WorkerProcess, worker_process
from tests.fixtures import server_toml

CONFIG = (
    'home_countries = ["KR"]\ngeo = ["csv:geo.csv"]\n'
    + server_toml("kr-sel-1", "kr-pus-1")
    + STREAM_SETTINGS
)

GEO = """cidr,country,asn,as_name,lat,lon,kind
211.234.0.0/16,KR,3786,LG DACOM,37.50,127.03,residential
198.51.100.0/24,KR,64510,Seoul VPS Hosting,37.56,126.98,hosting
"""


@contextlib.contextmanager
def running_worker(tmp_path: Path, kafka_url: str, clickhouse_url: str) -> Iterator[WorkerProcess]:
    """A started `pathsentry worker` process on the given Kafka and ClickHouse, with a fresh
    topic prefix and the configuration of :func:`run_scenario`."""
    (tmp_path / "pathsentry.toml").write_text(CONFIG)
    (tmp_path / "geo.csv").write_text(GEO)
    with worker_process(tmp_path / "pathsentry.toml", kafka_url, clickhouse_url) as worker:
        worker.start(timeout=60)
        yield worker


_ADJECTIVES = ("quiet", "lucky", "brave", "sleepy", "wild", "noble", "tiny", "cool")
_NOUNS = ("otter", "raven", "tiger", "comet", "maple")


def _login(i: int, account: str, src: str, app: list[float], tcp: float) -> dict[str, Any]:
    return {
        "kind": "login", "event_id": f"login-{account}-{i}",
        "ts": f"2026-11-22T21:{i // 60:02d}:{i % 60:02d}+09:00",
        "src_ip": src, "session_id": f"sess-{account}-{i}", "account": account,
        "server_id": "kr-sel-1", "app_rtt_ms": app, "tcp_rtt_ms": tcp,
    }


async def _produce(
    bootstrap: str, prefix: str, bad: list[bytes], good: list[dict[str, Any]]
) -> list[tuple[int, int]]:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await prod.start()
    origins = []
    try:
        for ev in good:
            topic = prefix + ("logins" if ev["kind"] == "login" else "network-telemetry")
            key = ev.get("account") or ev["session_id"]
            await prod.send(topic, json.dumps(ev).encode(), key=key.encode())
        for payload in bad:
            md = await (await prod.send(prefix + "logins", payload, key=b"bad"))
            origins.append((md.partition, md.offset))
        await prod.flush()
    finally:
        await prod.stop()
    return origins


async def _consume(bootstrap: str, topic: str, want: int, timeout: float) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer

    cons = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                            group_id=None, enable_auto_commit=False)
    await cons.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            batch = await cons.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(json.loads(m.value) for m in msgs)
    finally:
        await cons.stop()
    return out


def run_scenario(worker: WorkerProcess) -> None:
    """Normal players, one relayed account and six malformed messages, checked end to end."""
    bootstrap, prefix = worker.bootstrap, worker.prefix
    good: list[dict[str, Any]] = []
    # ordinary players on ten Seoul FTTH /24s: app and TCP RTT agree, a few ms (the relay
    # detector learns the server's game-loop overhead from them: a server seen from fewer
    # than eight prefixes gives no gap verdict). Their names are unrelated (forty serial
    # names logging in within a minute on one /24 is a farm)
    players = [f"{a}_{b}" for a in _ADJECTIVES for b in _NOUNS][:40]
    for i, name in enumerate(players):
        good.append(_login(i, name, f"211.234.{10 + i % 10}.{i + 2}", [3.1 + i % 3, 3.4, 3.2], 3.0))
    # one account behind an L4 relay (a Seoul VPS): TCP ends at the relay, the game ping does not
    for i in range(6):
        good.append(_login(100 + i, "relayed-user", "198.51.100.23", [96.0, 94.5, 95.2], 1.4))
    bad = [
        b"{not json",
        json.dumps({"kind": "login", "event_id": "x1", "ts": "2026-11-22T21:00:00+09:00"}).encode(),
        json.dumps({"kind": "teleport", "event_id": "x2"}).encode(),
        b"\xff\xfe invalid utf-8",
        b'{"kind": "login", "pad": "' + b"a" * 300_000 + b'"}',
        json.dumps({**good[0], "event_id": "x3", "app_rtt_ms": [-5.0]}).encode(),
    ]
    origins = asyncio.run(_produce(bootstrap, prefix, bad, good))

    dead = asyncio.run(_consume(bootstrap, prefix + "dead-letter", len(bad), 60))
    assert len(dead) == len(bad)
    by_offset = {(d["origin"]["partition"], d["origin"]["offset"]): d for d in dead}
    assert set(by_offset) == set(origins)
    reasons = [by_offset[o]["reason"] for o in origins]
    assert reasons == ["bad_json", "invalid", "unknown_kind", "bad_json", "oversized", "invalid"]
    assert all(d["origin"]["topic"] == prefix + "logins" for d in dead)
    assert by_offset[origins[0]]["payload"] == "{not json"
    assert by_offset[origins[3]]["payload_encoding"] == "base64"
    assert by_offset[origins[4]]["payload_truncated"] is True

    alerts = asyncio.run(_consume(bootstrap, prefix + "alerts", 1, 60))
    assert alerts, "no alert reached the alerts topic"
    relay_alerts = [a for a in alerts if a["kind"] == "vpn_relay"]
    assert relay_alerts and "relayed-user" in relay_alerts[0]["accounts"]
    assert relay_alerts[0]["evidence"], "alert without evidence"

    deadline = time.monotonic() + 60
    while True:
        st = worker.stats()
        if st["events_in"] >= len(good) and st["flagged"] >= 1:
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.5)
    sql = ("SELECT account, kind, count() FROM pathsentry.flagged_events FINAL "
           "GROUP BY account, kind ORDER BY account")
    flagged = {(r[0], r[1]): r[2] for r in worker.query(sql)}
    assert flagged.get(("relayed-user", "vpn_relay"), 0) >= 1
    assert not any(acc in players for acc, _ in flagged), flagged
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(worker.query_request("DROP TABLE pathsentry.alerts"), timeout=5)

    rc = worker.stop(timeout=30)
    assert rc == 0, f"worker exited {rc}: " + worker.log_path.read_text()[-3000:]
    # the worker has released chDB: read it directly, in a fresh process
    out = subprocess.run(
        [sys.executable, "-m", "pathsentry", "query", "flags-per-kind", "--json"],
        env=worker.env, capture_output=True, text=True, timeout=120, check=True,
    )
    rows = {r["kind"]: r["flagged"] for r in json.loads(out.stdout)}
    assert rows.get("vpn_relay", 0) >= 1
