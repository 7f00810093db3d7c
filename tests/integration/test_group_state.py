"""Group-stage state follows its partition through the state topic on the embedded broker.

A farm group whose logins straddle a handover (a rebalance, a worker stopping) forms
only if the partition's next owner continues from the windows the previous owner
built: the state is saved to the compacted state topic and read back by a new store,
as a worker given the partition does."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from pathsentry.config import load_config
from pathsentry.engine import Engine, GroupStage
from pathsentry.infra.broker import EmbeddedBroker, create_topics
from pathsentry.schemas import Alert, parse_event
from pathsentry.streams.envelopes import partition_for
from pathsentry.streams.state import StateStore
from tests.faults.support import expected_farm_groups, match_groups, recent_world, sim_events, write_world

pytestmark = pytest.mark.integration

PARTITIONS = 4


async def _with_store(bootstrap: str, topic: str, work: Any) -> Any:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=8 << 20, acks="all")
    await producer.start()

    async def send(partition: int, key: bytes, value: bytes | None, headers: Any = None) -> Any:
        return await producer.send(topic, value, key=key, partition=partition, headers=headers)

    def stores(worker: str, kind: str = "g") -> StateStore:
        return StateStore(topic, send, lambda: AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                                                enable_auto_commit=False),
                          worker, kind)
    try:
        return await work(stores)
    finally:
        await producer.stop()


def _topic(broker: EmbeddedBroker, name: str) -> str:
    asyncio.run(create_topics(broker.bootstrap, {name: PARTITIONS},
                              configs={name: {"cleanup.policy": "compact"}}))
    return name


def test_state_round_trips_in_chunks_and_the_newest_save_wins(embedded_broker: EmbeddedBroker) -> None:
    topic = _topic(embedded_broker, "gs1.pathsentry-state")
    big = os.urandom(2_500_000).hex()  # incompressible: several chunks of the 900 KiB limit

    async def work(stores: Any) -> tuple[dict[int, Any], dict[int, Any], int]:
        a = stores("a")
        size = await a.save(1, {"ts": 1.0, "detectors": {"farm": {"blob": big}}})
        await a.save(1, {"ts": 2.0, "detectors": {"farm": {"blob": big[:1000]}}})  # replaces it
        await a.save(2, {"ts": 3.0, "detectors": {}})
        b = stores("b")
        return await b.load([0, 1, 2, 3]), await stores("c").load([1]), size

    got, again, size = asyncio.run(_with_store(embedded_broker.bootstrap, topic, work))
    assert size > 2 * 900 * 1024, "the first save must have needed several chunks"
    assert sorted(got) == [1, 2], "partitions never saved have no state"
    assert got[1] == {"ts": 2.0, "detectors": {"farm": {"blob": big[:1000]}}}
    assert got[2]["ts"] == 3.0
    assert again[1]["ts"] == 2.0


def test_group_and_session_states_share_the_topic_apart(embedded_broker: EmbeddedBroker) -> None:
    topic = _topic(embedded_broker, "gs4.pathsentry-state")

    async def work(stores: Any) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
        await stores("a", "g").save(1, {"ts": 1.0, "detectors": {"farm": {"n": 1}}})
        await stores("a", "s").save(1, {"ts": 2.0, "detectors": {"latency": {"sessions": []}}})
        await stores("a", "s").save(2, {"ts": 3.0, "detectors": {}})
        return (await stores("b", "g").load([1, 2]), await stores("b", "s").load([1, 2]),
                await stores("b", "s").load([0, 3]))

    groups, sessions, none = asyncio.run(_with_store(embedded_broker.bootstrap, topic, work))
    assert groups == {1: {"ts": 1.0, "detectors": {"farm": {"n": 1}}}}
    assert sessions == {1: {"ts": 2.0, "detectors": {"latency": {"sessions": []}}},
                        2: {"ts": 3.0, "detectors": {}}}
    assert none == {}


def _group_work(config_path: Path, events: list[dict[str, Any]]) -> list[tuple[Any, str, str]]:
    """(enriched event, detector, key) of every group-stage delivery, in event order."""
    engine = Engine(load_config(config_path, env={}))
    work = []
    for raw in events:
        ev, _ = engine.session_stage(parse_event(raw))
        work += [(ev, det, key) for det, key in engine.group_routes(ev)]
    return work


def _run(stages: dict[int, GroupStage], work: list[tuple[Any, str, str]], alerts: dict[str, Alert]) -> None:
    for ev, det, key in work:
        for a in stages[partition_for(key, PARTITIONS)].process(ev, det, key).alerts:
            alerts[a.alert_id] = a


def _first_wave(group: frozenset[str], work: list[tuple[Any, str, str]]) -> tuple[int, int]:
    """(index of the delivery bringing the first login of the group's middle member, index
    one hour after its first login): the group's first wave of logins, cut in half."""
    seen: list[str] = []
    middle, first_ts = -1, None
    for i, (ev, det, _) in enumerate(work):
        if first_ts is not None and ev.ts > first_ts + 3600:
            return middle, i
        account = getattr(ev.event, "account", None)
        if det == "farm" and account in group and account not in seen:
            first_ts = ev.ts if first_ts is None else first_ts
            seen.append(account)
            if len(seen) == len(group) // 2 + 1:
                middle = i
    raise AssertionError("the group's first wave does not end before the stream does")


def test_farm_group_cut_in_half_by_a_handover_forms_from_the_saved_state(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    spec = recent_world(seed=5, accounts=1000, hours=12.0)
    events = sim_events(spec)
    cfg = write_world(tmp_path, spec)
    want = expected_farm_groups(events, cfg)
    assert want, "the reference replay must find farm groups"
    group = max(want, key=len)
    work = _group_work(cfg, events)
    cut, end = _first_wave(group, work)
    topic = _topic(embedded_broker, "gs2.pathsentry-state")
    engine = Engine(load_config(cfg, env={}))

    def fresh() -> dict[int, GroupStage]:
        return {p: engine.new_group_stage() for p in range(PARTITIONS)}

    def groups(stages: dict[int, GroupStage], alerts: dict[str, Alert]) -> list[frozenset[str]]:
        _run(stages, work[cut:end], alerts)
        return [frozenset(a.accounts) for a in alerts.values() if a.kind == "farm_group"]

    first: dict[str, Alert] = {}
    before = fresh()
    _run(before, work[:cut], first)
    assert match_groups([group], [frozenset(a.accounts) for a in first.values()])[0] == [group], \
        "the group must not have formed before the cut"
    # one owner throughout: the wave forms the group
    whole: dict[str, Alert] = {}
    one_owner = fresh()
    _run(one_owner, work[:cut], whole)
    assert not match_groups([group], groups(one_owner, whole))[0]

    async def handover(stores: Any) -> dict[int, Any]:
        old = stores("old-owner")
        for p, st in before.items():
            await old.save(p, st.state())
        return await stores("new-owner").load(range(PARTITIONS))  # type: ignore[no-any-return]

    saved = asyncio.run(_with_store(embedded_broker.bootstrap, topic, handover))
    after = fresh()
    for p, state in saved.items():
        after[p].load_state(state)
    assert not match_groups([group], groups(after, dict(first)))[0], "the group must form after the handover"

    # the same handover without the saved state loses the group it cuts in half
    assert match_groups([group], groups(fresh(), dict(first)))[0] == [group]


class _SilentConsumer:
    """A consumer whose partitions have records it never delivers (a broker gone quiet)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[Any]) -> None:
        self.tps = tps

    async def seek_to_beginning(self, *tps: Any) -> None: ...

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 5)

    async def getmany(self, *tps: Any, timeout_ms: int) -> dict[Any, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000 / 20)
        return {}

    async def position(self, tp: Any) -> int:
        return 0


def test_a_load_that_reads_nothing_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathsentry.streams import state

    monkeypatch.setattr(state, "LOAD_TIMEOUT_S", 0.3)

    async def send(partition: int, key: bytes, value: bytes | None, headers: Any = None) -> Any:
        raise AssertionError("a load sends nothing")

    store = StateStore("gs3.pathsentry-state", send, _SilentConsumer, "w")
    with pytest.raises(TimeoutError, match="nothing read"):
        asyncio.run(store.load([0, 1]))
