"""The sessions in progress of each session partition, and what the session stage learned
from all its traffic, reach the partition's next owner through the state topic, on the
embedded broker, with the workers' own save and load paths (``Pipeline``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pathsentry.config import load_config
from pathsentry.detectors.latency import LatencyDetector
from pathsentry.detectors.route import RouteDetector
from pathsentry.engine import Engine
from pathsentry.infra.broker import EmbeddedBroker, create_topics
from pathsentry.infra.clickhouse import ClickHouse, connect
from pathsentry.schemas import parse_event
from pathsentry.streams.envelopes import partition_for
from pathsentry.streams.pipeline import Pipeline
from tests.faults.support import recent_world, sim_events, write_world

pytestmark = pytest.mark.integration

@pytest.fixture
def ch(chdb_dir: Path) -> Iterator[ClickHouse]:
    c = connect(f"chdb://{chdb_dir}")  # the pipelines below never write to it
    yield c
    c.close()


def _pipeline(root: Path, name: str, cfg: Path, broker: EmbeddedBroker, prefix: str,
              ch: ClickHouse) -> Pipeline:
    config = load_config(cfg, env={"PATHSENTRY_KAFKA_URL": broker.url, "PATHSENTRY_TOPIC_PREFIX": prefix,
                                   "PATHSENTRY_DATA_DIR": str(root / name)})
    return Pipeline(config, Engine(config), ch, name)


def _detectors(pipe: Pipeline) -> tuple[LatencyDetector, RouteDetector]:
    dets = {d.name: d for d in pipe.engine.session_detectors}
    latency, route = dets["latency"], dets["route"]
    assert isinstance(latency, LatencyDetector) and isinstance(route, RouteDetector)
    return latency, route


def _sessions(pipe: Pipeline, parts: set[int]) -> tuple[set[str], set[str]]:
    """Session ids the relay and route detectors hold in ``parts``."""
    latency, route = _detectors(pipe)
    n = pipe.config.kafka.partitions

    def mine(sid: str) -> bool:
        return not sid.startswith("event:") and partition_for(sid, n) in parts

    return {s for s, _ in latency.sessions.items() if mine(s)}, {s for s in route.sessions if mine(s)}


def test_sessions_and_learned_state_reach_the_next_owner(
    tmp_path: Path, embedded_broker: EmbeddedBroker, ch: ClickHouse
) -> None:
    spec = recent_world(seed=3, accounts=400, hours=6.0)
    cfg = write_world(tmp_path / "world", spec)
    prefix = "sst."
    a = _pipeline(tmp_path, "a", cfg, embedded_broker, prefix, ch)
    asyncio.run(create_topics(embedded_broker.bootstrap, a.topics.all(), configs=a.topics.configs()))
    for raw in sim_events(spec, limit=6000):
        a.engine.session_stage(parse_event(raw))
    assert a.config.kafka.partitions == 2
    moved, stays = {0}, {1}
    a_moved, a_stays = _sessions(a, moved), _sessions(a, stays)
    assert a_moved[0] and a_moved[1] and a_stays[0], "the world must leave sessions on both sides"
    a_baselines = len(_detectors(a)[0].baselines)
    assert a_baselines > 0

    async def run() -> tuple[Pipeline, Pipeline]:
        b = _pipeline(tmp_path, "b", cfg, embedded_broker, prefix, ch)
        old = _pipeline(tmp_path, "old", cfg, embedded_broker, prefix, ch)
        for p in (a, b, old):
            await p.start_producer()
        try:
            # a held both partitions; a rebalance revokes them, a keeps 1, b is given 0
            await a.own_sessions([0, 1])
            await a.save_sessions([0, 1])
            a.sessions_revoked([0, 1])
            await a.save_learned()
            # a worker with a snapshot file newer than those saves keeps its own sessions
            old.save_snapshot()
            old.load_snapshot()
            await a.own_sessions([1])
            await b.own_sessions([0])
            await old.own_sessions([0])
        finally:
            for p in (a, b, old):
                await p.stop_producer()
        return b, old

    b, old = asyncio.run(run())
    # b continues the sessions of the partitions it was given, and only those
    assert _sessions(b, moved) == a_moved
    assert _sessions(b, stays) == (set(), set())
    assert b.session_parts == {0} and b.session_store.restored == {0}
    # a kept what came straight back and forgot what went to b
    assert _sessions(a, stays) == a_stays
    assert _sessions(a, moved) == (set(), set())
    assert a.session_parts == {1}
    # b had no snapshot: it started from what a learned; the worker with a snapshot did not
    assert len(_detectors(b)[0].baselines) == a_baselines
    assert b.learned_store.restored == {0}
    assert _sessions(old, moved) == (set(), set()) and not _detectors(old)[0].baselines
    assert not old.learned_store.restored

