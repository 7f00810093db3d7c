"""Hostile messages through a real worker: every refused message lands in
``dead-letter`` with its reason and origin, valid-but-nasty ones (SQL-looking and
look-alike account names) are processed and stored verbatim, the genuine events
around them are all processed, and the worker stays up."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pathsentry.infra.broker import EmbeddedBroker
from tests.faults.support import (
    consume_all,
    produce,
    recent_world,
    route_events,
    sim_events,
    wait_for,
    worker_process,
    write_world,
)
from tests.hostile.corpus import nasty_messages


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_hostile_corpus_interleaved_with_valid_events(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    spec = recent_world(seed=21, accounts=300)
    config = write_world(tmp_path, spec)
    events = sim_events(spec, 3000)
    login = next(e for e in events if e["kind"] == "login")
    traceroute = next(e for e in events if e["kind"] == "traceroute")
    # the valid-but-nasty logins come through an L4 relay, so they are flagged and stored
    relayed = {**login, "app_rtt_ms": [96.0, 94.5, 95.2], "tcp_rtt_ms": 1.4}
    corpus = nasty_messages(relayed, traceroute)
    refused = [n for n in corpus if n.reason is not None]
    accepted = [n for n in corpus if n.reason is None]

    with worker_process(config, embedded_broker.url, tmp_path / "chdb") as worker:
        worker.start()
        topics = worker.topics
        valid = route_events(events, topics)
        step = len(valid) // (len(corpus) + 1)
        records: list[tuple[str, bytes | None, bytes]] = []
        for i, nasty in enumerate(corpus):
            records.extend(valid[i * step : (i + 1) * step])
            records.append((topics.logins, b"hostile", nasty.value))
        records.extend(valid[len(corpus) * step :])
        origins = produce(worker.bootstrap, records)
        nasty_origin = {
            origins[i]: n for i, n in zip(
                (i for i, r in enumerate(records) if r[1] == b"hostile"), corpus, strict=True
            )
        }
        n_valid = len(events) + len(accepted)

        def processed() -> bool:
            assert worker.alive, "worker died:\n" + worker.log_tail()
            st = worker.stats()
            return bool(st["events_detected"] >= n_valid and st["dead_letter"] >= len(refused))

        wait_for(processed, 120, "every message to be processed or dead-lettered",
                 on_timeout=lambda: f"{worker.stats()}\n{worker.log_tail()}")
        worker.wait_drained(timeout=120)
        st = worker.stats()
        assert st["events_in"] == n_valid and st["events_detected"] == n_valid, st
        assert st["dead_letter"] == len(refused), st

        dead = [orjson.loads(m.value) for m in consume_all(worker.bootstrap, topics.dead_letter)]
        assert len(dead) == len(refused)
        for rec in dead:
            o = rec["origin"]
            origin = (o["topic"], o["partition"], o["offset"])
            assert origin in nasty_origin, rec["origin"]
            nasty = nasty_origin[origin]
            assert rec["reason"] == nasty.reason, (nasty.name, rec["reason"], rec["detail"])
            assert o["key"] == "hostile"
            assert rec.get("payload_truncated", False) is (len(nasty.value) > 64 * 1024)
        assert {n.name for n in refused} == {nasty_origin[(d["origin"]["topic"], d["origin"]["partition"],
                                                           d["origin"]["offset"])].name for d in dead}

        # stored verbatim, through data (never SQL text): every hostile name reads back as sent
        rows = worker.query(
            "SELECT event_id, account FROM pathsentry.flagged_events FINAL "
            "WHERE startsWith(event_id, 'hostile-name')"
        )
        stored = dict((r[0], r[1]) for r in rows)
        sent = {orjson.loads(n.value)["event_id"]: n.account for n in accepted}
        assert stored == sent
        assert worker.query("SELECT count() > 0 FROM pathsentry.flagged_events")[0][0] in (1, True)
        assert worker.alive
        assert worker.stop() == 0, worker.log_tail()
