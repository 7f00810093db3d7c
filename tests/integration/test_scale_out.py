"""Scale-out on the embedded broker: two worker processes share the partitions of one
consumer group while a live backend publishes, one of them stops mid-run (a
rebalance), and nothing is lost: every flag a replay of the same events raises for
per-event detectors is stored, once, and every farm group the replay finds forms
across the two workers (its members meet on one worker through the repartition, in
event order thanks to the watermarks), with at least 80% of its members in one alert.

The backend starts publishing once both workers own partitions, and the first part is
drained (everything committed) before one worker stops: a handover with nothing in
flight must repeat nothing, so no flag is stored by both workers. (A rebalance while
events are in flight may process some of them again, which delivery at-least-once
allows; on a shared table ReplacingMergeTree keeps one row of each.)

chDB allows one process per directory, so each worker writes its own directory;
both are read back after the run (on clickhouse-server they share one table)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.sim.world import World
from tests.faults.support import (
    WorkerProcess,
    expected_farm_groups,
    expected_flags,
    match_groups,
    produce,
    recent_world,
    route_events,
    wait_for,
    wait_settled,
    worker_process,
    write_world,
)

pytestmark = pytest.mark.integration

STABLE_KINDS = frozenset({"path_injection", "route_anomaly"})


def _read_chdb(env: dict[str, str], sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "pathsentry", "query", "--sql", sql, "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _progress(w: WorkerProcess) -> str:
    keys = ("events_in", "events_detected", "group_messages", "group_events", "in_flight",
            "session_held", "group_held", "outbox_rows", "assigned", "gc_pauses")
    st = w.stats()
    return json.dumps({k: st.get(k) for k in keys})


def _produce_live(bootstrap: str, records: list[Any], rate: float = 1000.0) -> None:
    """Send at a steady rate, as a live game backend does (not a backlog all at once)."""
    step = max(1, int(rate / 4))
    for i in range(0, len(records), step):
        t0 = time.monotonic()
        produce(bootstrap, records[i:i + step])
        time.sleep(max(0.0, step / rate - (time.monotonic() - t0)))


def test_two_workers_share_partitions_and_lose_nothing_on_rebalance(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    spec = recent_world(seed=5, accounts=1000, hours=12.0)
    world = World(spec)
    events = [sim.event for sim in world.stream()]
    cfg_a = write_world(tmp_path / "a", spec)
    cfg_b = write_world(tmp_path / "b", spec)
    cut = len(events) * 6 // 10
    prefix = "scale."

    with worker_process(cfg_a, embedded_broker.url, tmp_path / "a" / "chdb", prefix=prefix) as wa, \
            worker_process(cfg_b, embedded_broker.url, tmp_path / "b" / "chdb", prefix=prefix) as wb:
        wa.start()
        wb.start()
        wait_settled([wa, wb])
        _produce_live(embedded_broker.bootstrap, route_events(events[:cut], wa.topics))
        wait_for(lambda: wa.stats()["events_detected"] + wb.stats()["events_detected"] >= cut,
                 180, "both workers to process the first part",
                 on_timeout=lambda: f"{cut} events; A {_progress(wa)}; B {_progress(wb)}\n"
                                    f"A:\n{wa.log_tail(1500)}\nB:\n{wb.log_tail(1500)}")
        wa.wait_drained(180)  # the group's lag: both workers' partitions
        before_b = wb.stats()
        assert before_b["events_detected"] > 0 and wa.stats()["events_detected"] > 0, \
            "both workers must own partitions of the consumer group"
        assert wb.stop() == 0

        _produce_live(embedded_broker.bootstrap, route_events(events[cut:], wa.topics))
        wa.wait_drained(240)
        after_a = wa.stats()
        assert after_a["events_in"] + before_b["events_in"] >= len(events)
        # the group partitions B ran (the assignor may also give B none) continue on A from
        # the state B saved at its stop
        moved = set(before_b["group_partitions"])
        assert moved <= set(after_a["group_partitions"])
        assert moved <= set(after_a["group_state_restored"]), after_a["group_state_restored"]
        # so do the sessions in progress of the session partitions B ran
        moved_sessions = set(before_b["session_partitions"])
        assert moved_sessions <= set(after_a["session_partitions"])
        assert moved_sessions <= set(after_a["session_state_restored"]), after_a["session_state_restored"]
        assert wa.stop() == 0

    sql = "SELECT event_id, kind FROM pathsentry.flagged_events FINAL"
    rows_a = _read_chdb(wa.env, sql)
    rows_b = _read_chdb(wb.env, sql)
    got_a = {(r["event_id"], r["kind"]) for r in rows_a}
    got_b = {(r["event_id"], r["kind"]) for r in rows_b}
    assert len(got_a) == len(rows_a) and len(got_b) == len(rows_b)
    assert not got_a & got_b, f"{len(got_a & got_b)} flags stored by both workers"

    want = expected_flags(events, cfg_a, STABLE_KINDS)
    assert want, "the reference replay must flag something"
    missing = want - (got_a | got_b)
    assert not missing, f"{len(missing)} of {len(want)} expected flags lost, e.g. {sorted(missing)[:3]}"

    groups = "SELECT accounts FROM pathsentry.alerts FINAL WHERE kind = 'farm_group'"
    got_groups = [frozenset(r["accounts"]) for r in _read_chdb(wa.env, groups) + _read_chdb(wb.env, groups)]
    want_groups = expected_farm_groups(events, cfg_a)
    assert want_groups, "the reference replay must find farm groups"
    missed, stray = match_groups(want_groups, got_groups)
    assert not missed, f"farm groups not formed across workers: {[sorted(g) for g in missed]}"
    assert not stray, f"farm groups the replay does not find: {[sorted(g) for g in stray]}"
    print("scale-out run:", json.dumps({
        "events": len(events), "flags_expected": len(want), "flags_stored": len(got_a | got_b),
        "farm_groups_expected": len(want_groups), "farm_groups_formed": len(want_groups) - len(missed),
    }))
