"""The periodic save of the session stage built in a forked child writes the snapshot
file and the ``l:0`` document the event loop would have written at the same instant,
a worker restored from it detects as the saved one does, and a failed child leaves the
previous snapshot file and is counted (``Pipeline.save_session_stage``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pathsentry.config import load_config
from pathsentry.engine import Engine
from pathsentry.infra.clickhouse import ClickHouse, connect
from pathsentry.schemas import parse_event
from pathsentry.streams.forksave import ForkSaver
from pathsentry.streams.persistence import LearnedSave
from pathsentry.streams.pipeline import Pipeline
from pathsentry.streams.state import compress_state, inflate
from tests.faults.support import recent_world, sim_events, write_world

pytestmark = pytest.mark.skipif(not ForkSaver(1.0).available, reason="needs os.fork and pidfd_open")

SPEC = recent_world(seed=5, accounts=1500, hours=8.0)  # about 4,900 events


@pytest.fixture
def ch(chdb_dir: Path) -> Iterator[ClickHouse]:
    c = connect(f"chdb://{chdb_dir}")  # the pipelines below never write to it
    yield c
    c.close()


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return sim_events(SPEC, limit=5000)


def _pipeline(root: Path, name: str, ch: ClickHouse, data: str = "") -> Pipeline:
    """Worker ``name`` of the world under ``root``, its data in ``root/(data or name)``."""
    cfg = root / "world" / "pathsentry.toml"
    if not cfg.exists():
        write_world(root / "world", SPEC)
    config = load_config(cfg, env={"PATHSENTRY_DATA_DIR": str(root / (data or name))})
    return Pipeline(config, Engine(config), ch, name)


def _run(pipe: Pipeline, events: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    """Run events through the session stage; its flags and alerts, serialised."""
    out = []
    for raw in events:
        _, found = pipe.engine.session_stage(parse_event(raw))
        out.append((orjson.dumps(found.flags, default=str), orjson.dumps(found.alerts, default=str)))
    return out


def _save(pipe: Pipeline) -> LearnedSave | None:
    return asyncio.run(pipe.save_session_stage())


def test_the_child_saves_what_the_loop_would_and_restores_the_same_detection(
    tmp_path: Path, ch: ClickHouse, events: list[dict[str, Any]]
) -> None:
    a = _pipeline(tmp_path, "a", ch)
    _run(a, events[:3000])
    built = _save(a)
    assert built is not None and built.data is not None
    assert a.fork_saver.saves == 1 and a.fork_saver.failures == 0
    # the same bytes the loop builds from the same state
    assert a.state_path.read_bytes() == a.snapshot_bytes()
    doc = a.learned_document(built.saved_at)
    assert doc is not None and built.data == compress_state(doc)
    assert orjson.loads(inflate(built.data))["ts"] == a.engine.session_ts == built.ts
    stats = a.learned_save_stats()
    assert stats["snapshot_bytes"] == len(a.snapshot_bytes()) and stats["save_child_saves"] == 1
    assert stats["save_child_private_mib"] > 0

    # ... and as the loop itself writes them when the child is off
    loop = _pipeline(tmp_path, "a", ch, data="on-loop")
    loop.fork_saver = ForkSaver(1.0, enabled=False)
    _run(loop, events[:3000])
    on_loop = _save(loop)
    assert on_loop is not None and on_loop.data is not None
    assert loop.state_path.read_bytes() == a.state_path.read_bytes()
    assert ({**orjson.loads(inflate(on_loop.data)), "saved_at": 0}
            == {**orjson.loads(orjson.dumps(doc, default=str)), "saved_at": 0})
    assert loop.fork_saver.saves == 0

    # a worker restored from the child's snapshot file detects as the saved one does
    b = _pipeline(tmp_path, "b", ch)
    b.state_path.parent.mkdir(parents=True)
    b.state_path.write_bytes(a.state_path.read_bytes())
    b.load_snapshot()
    assert b.state_refusals()["snapshot_state_refused"] == 0
    rest = events[3000:]
    found = _run(a, rest)
    assert len(rest) > 1000 and sum(flags != b"[]" for flags, _ in found) > 10
    assert _run(b, rest) == found


def test_a_failed_child_keeps_the_previous_snapshot_and_the_next_save_works(
    tmp_path: Path, ch: ClickHouse, events: list[dict[str, Any]]
) -> None:
    a = _pipeline(tmp_path, "a", ch)
    _run(a, events[:1500])
    assert _save(a) is not None
    first = a.state_path.read_bytes()
    _run(a, events[1500:3000])

    def broken(saved_at: float) -> dict[str, Any] | None:
        raise RuntimeError("detector state not serialisable")

    a.learned_document = broken  # type: ignore[method-assign]  # fails in the child only
    assert _save(a) is None
    assert a.state_path.read_bytes() == first
    assert a.learned_save_stats()["save_child_failures"] == 1
    assert not list(a.state_path.parent.glob(".*.tmp"))  # the child's files are removed
    del a.learned_document
    assert _save(a) is not None
    assert a.state_path.read_bytes() == a.snapshot_bytes() != first
    assert (a.fork_saver.saves, a.fork_saver.failures) == (2, 1)
    # a worker killed while its child saved leaves the child's files; the restart removes them
    stale = a.state_path.parent / f".{a.state_path.stem}.save-999-1.json.tmp"
    stale.write_bytes(b"{")
    a.load_snapshot()
    assert not stale.exists() and a.state_refusals()["snapshot_state_refused"] == 0
