"""The game's labels and interactions through the stream: a `pathsentry worker` process on
the embedded broker and chDB re-versions the relay alert a late label confirms, stores the
labels for the ``detector_feedback`` view and dead-letters an invalid label."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from tests.faults.support import worker_process
from tests.integration.harness import _ADJECTIVES, _NOUNS, CONFIG, _consume, _login

#: forty Seoul lines on forty /24s (the relay detector learns the server's overhead from
#: players on many prefixes before it judges anyone), and a Seoul VPS
GEO = "\n".join(["cidr,country,asn,as_name,lat,lon,kind"]
                + [f"58.120.{i}.0/24,KR,4766,Korea Telecom,37.50,127.03,residential" for i in range(40)]
                + ["198.51.100.0/24,KR,64510,Seoul VPS Hosting,37.56,126.98,hosting"]) + "\n"


async def _send(bootstrap: str, items: list[tuple[str, bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await prod.start()
    try:
        for topic, key, value in items:
            await prod.send(topic, value, key=key)
        await prod.flush()
    finally:
        await prod.stop()


def _feedback(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev).encode()


@pytest.mark.integration
def test_a_late_label_re_versions_the_alert_and_reaches_the_feedback_view(
        tmp_path: Path, embedded_broker: EmbeddedBroker) -> None:
    (tmp_path / "pathsentry.toml").write_text(CONFIG)
    (tmp_path / "geo.csv").write_text(GEO)
    with worker_process(tmp_path / "pathsentry.toml", embedded_broker.url,
                        f"chdb://{tmp_path / 'chdb'}") as worker:
        worker.start(timeout=60)
        bootstrap, prefix = worker.bootstrap, worker.prefix
        # ordinary players with unrelated names, each on its own Seoul /24, then one
        # account behind an L4 relay on a Seoul VPS (TCP ends at the relay, the game ping not)
        players = [f"{a}_{b}" for a in _ADJECTIVES for b in _NOUNS][:40]
        logins = [_login(i, name, f"58.120.{i}.{10 + i}", [3.1 + i % 3 * 0.3, 3.4, 3.2], 3.0)
                  for i, name in enumerate(players)]
        logins += [_login(100 + i, "relayed-user", "198.51.100.23", [96.0, 94.5, 95.2], 1.4)
                   for i in range(6)]
        asyncio.run(_send(bootstrap, [(prefix + "logins", ev["account"].encode(), _feedback(ev))
                                      for ev in logins]))
        deadline = time.monotonic() + 60
        first: list[dict[str, Any]] = []
        while not first:  # the relay alert (a farm alert of the same logins may come first)
            assert time.monotonic() < deadline, "no relay alert"
            first = [a for a in asyncio.run(_consume(bootstrap, prefix + "alerts", 100, 3))
                     if a["kind"] == "vpn_relay"]
        assert first and first[0]["evidence"]["crosscheck"]["labelled_members"] == 0
        top = max(a["version"] for a in first)
        label = {"kind": "account_label", "event_id": "lb-1", "ts": "2026-11-24T10:00:00+09:00",
                 "account": "relayed-user", "label": "bot", "source": "ban-system",
                 "evidence_ref": first[0]["alert_id"]}
        trade = {"kind": "interaction", "event_id": "it-1", "ts": "2026-11-22T20:00:00+09:00",
                 "interaction": "trade", "account": "relayed-user", "peer": "mule-7"}
        bad = {"kind": "account_label", "event_id": "lb-2", "ts": "2026-11-24T10:00:00+09:00",
               "account": "x", "label": "innocent", "source": "analyst"}
        asyncio.run(_send(bootstrap, [
            (prefix + "interactions", b"relayed-user", _feedback(trade)),
            (prefix + "labels", b"relayed-user", _feedback(label)),
            (prefix + "labels", b"x", _feedback(bad)),
        ]))
        deadline = time.monotonic() + 60
        relabelled: list[dict[str, Any]] = []
        while not relabelled:
            assert time.monotonic() < deadline, "no re-versioned alert"
            alerts = asyncio.run(_consume(bootstrap, prefix + "alerts", 100, 3))
            relabelled = [a for a in alerts if a["kind"] == "vpn_relay" and a["version"] > top]
        (again,) = relabelled
        assert again["alert_id"] == first[0]["alert_id"]
        assert again["evidence"]["crosscheck"]["labelled_members"] == 1
        assert again["evidence"]["crosscheck"]["labels"] == {"bot": 1}
        assert again["score"] >= first[0]["score"]

        dead = asyncio.run(_consume(bootstrap, prefix + "dead-letter", 1, 60))
        assert [(d["reason"], d["origin"]["topic"]) for d in dead] == [("invalid", prefix + "labels")]
        while worker.stats()["feedback_in"] < 2:
            assert time.monotonic() < deadline, worker.stats()
            time.sleep(0.5)
        while True:
            rows = worker.query("SELECT detector, kind, flagged_accounts, labelled_bad, cleared "
                                "FROM pathsentry.detector_feedback")
            if rows and rows[0][3] == 1:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)
        got = {(r[0], r[1]): tuple(r[2:]) for r in rows}
        assert got[("latency", "vpn_relay")] == (1, 1, 0)
        alerted = {(a["detector"], a["kind"]) for a in alerts}
        assert set(got) == alerted and all(v == (1, 1, 0) for v in got.values())
        tally = worker.stats()["detector_feedback"]  # the /metrics gauges agree
        assert {tuple(k.split("/")): tuple(v.values()) for k, v in tally.items()} == got
