"""What the session stage learned survives a SIGKILL: the worker saves it (snapshot file and
``l:0`` of the state topic) once warmed up and then every ``learned_save_interval_s`` while
it changes, so a worker killed at an arbitrary point while it is learning restarts from a
save at most about that interval old, and a worker without a snapshot file warm-starts
from ``l:0``.

Set ``PATHSENTRY_FAULT_SEED`` to replay a given kill point.
"""

from __future__ import annotations

import os
import random
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pathsentry.infra.broker import EmbeddedBroker
from pathsentry.streams.app import LEARNED_CHECK_S
from pathsentry.streams.state import decode_state
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

#: a short interval, so that a run of a few seconds holds several saves
INTERVAL_S = 3.0
LEARNED_SETTINGS = f"""
[worker]
learned_save_interval_s = {INTERVAL_S}
learned_warmup_events = 300
learned_save_min_events = 1
learned_save_min_gap_s = 0.5
"""
#: how late a due save may land: one look of the timer plus the save itself
SLACK_S = LEARNED_CHECK_S + 2.0


def _seed() -> int:
    return int(os.environ.get("PATHSENTRY_FAULT_SEED", time.time_ns() % 1_000_000))


def _newest_learned(bootstrap: str, topic: str) -> dict[str, Any] | None:
    records: dict[bytes, bytes | None] = {}
    for m in consume_all(bootstrap, topic, idle_s=2.0):
        if m.partition == 0 and m.key is not None:
            records[m.key] = m.value
    return decode_state(records, 0, "l")


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_sigkill_while_learning_loses_at_most_the_save_interval(
    tmp_path: Path, embedded_broker: EmbeddedBroker
) -> None:
    rng = random.Random(seed := _seed())
    spec = recent_world(seed=11, accounts=1500)
    config = write_world(tmp_path, spec)
    config.write_text(config.read_text(encoding="utf-8") + LEARNED_SETTINGS, encoding="utf-8")
    events = sim_events(spec)
    with worker_process(config, embedded_broker.url, tmp_path / "chdb") as worker:
        records = route_events(events, worker.topics)
        n = 60
        chunks = [records[i::n] for i in range(n)]
        # kill at a random point once the worker is learning (past its warm-up)
        kill_at = rng.uniform(1.0, 3 * INTERVAL_S + 2.0)
        worker.start()
        t0: float | None = None
        for chunk in chunks:  # a steady feed: the worker learns throughout
            produce(worker.bootstrap, chunk)
            time.sleep(0.25)
            if t0 is None and worker.stats()["events_detected"] >= 300:
                t0 = time.monotonic()
            if t0 is not None and time.monotonic() - t0 >= kill_at:
                break
        with urllib.request.urlopen(worker.base + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        before = worker.stats()
        killed_at = time.time()
        worker.kill()
        assert before["events_detected"] > 300, before
        saved = _newest_learned(worker.bootstrap, worker.topics.state)
        assert saved is not None, f"seed {seed}: nothing learned was saved before the kill"
        age = killed_at - float(saved["saved_at"])
        snapshot = worker.workdir / "var" / "state" / "worker-1.json"
        snap_age = killed_at - snapshot.stat().st_mtime
        print(f"seed {seed}: killed after {kill_at:.1f} s, {before['events_detected']} events; "
              f"l:0 {age:.1f} s old, snapshot {snap_age:.1f} s old, last save "
              f"{before['learned_state_save_ms']} ms / {before['learned_state_save_bytes']} B, "
              f"snapshot {before['snapshot_serialise_ms']} ms / {before['snapshot_bytes']} B")
        assert age <= INTERVAL_S + SLACK_S, f"seed {seed}: the newest l:0 is {age:.1f} s old"
        assert snap_age <= INTERVAL_S + SLACK_S, f"seed {seed}: the snapshot is {snap_age:.1f} s old"
        assert before["learned_state_save_bytes"] > 0 and before["snapshot_bytes"] > 0
        assert 'pathsentry_learned_state_save_bytes{worker="worker-1"} ' in metrics

        # the restarted worker resumes from that snapshot file...
        worker.start()
        wait_for(lambda: worker.stats()["events_detected"] > 0 or worker.lag() == 0, 60,
                 "the restarted worker to resume", on_timeout=worker.log_tail)
        assert worker.stats()["snapshot_state_refused"] == 0, worker.log_tail()
        assert worker.stop() == 0, worker.log_tail()
        # ...and, without it, warm-starts from l:0
        snapshot.unlink()
        worker.start()
        wait_for(lambda: worker.stats()["learned_state_loaded"], 60, "the restarted worker to load l:0",
                 on_timeout=worker.log_tail)
        assert worker.stats()["learned_state_refused"] == 0
        assert worker.stop() == 0, worker.log_tail()
