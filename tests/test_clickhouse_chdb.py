"""ClickHouse sink on chDB (the real ClickHouse engine, in-process)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pathsentry.infra.clickhouse import ChdbClickHouse, connect
from pathsentry.schemas import Alert, FlaggedEvent
from pathsentry.streams.sinks import ClickHouseSink

pytestmark = pytest.mark.integration


def _flag(i: int, account: str = "hero") -> FlaggedEvent:
    return FlaggedEvent(
        event_id=f"e{i}", ts=datetime(2026, 11, 22, 12, 0, i % 60, tzinfo=UTC), kind="vpn_relay",
        account=account, session_id=f"s{i}", src_ip="203.0.113.9", country="KR", asn=64500,
        score=0.9, reasons=["tcp << app"], evidence={"gap_ms": 80.5, "note": "it's \"quoted\""},
        detector="latency",
    )


def _alert(version: int, accounts: list[str]) -> Alert:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    return Alert(
        alert_id="a1", ts=now, kind="farm_group", severity="high", score=0.8,
        subject={"group_id": "g1", "template": "xiaopai{3}"}, accounts=accounts, event_ids=[],
        evidence={"members": len(accounts)}, summary="farm", detector="farm",
        first_seen=now, last_seen=now, version=version,
    )


def test_idempotent_batches_and_alert_updates(chdb_dir: Path) -> None:
    ch = connect(f"chdb://{chdb_dir}")
    assert isinstance(ch, ChdbClickHouse)
    ch.apply_ddl(30)
    ch.apply_ddl(30)  # idempotent DDL
    sink = ClickHouseSink(ch)
    hostile = "x'); DROP TABLE pathsentry.alerts; --"
    flags = [_flag(i) for i in range(10)] + [_flag(99, account=hostile)]

    async def run() -> None:
        await sink.write(flags, [_alert(1, ["a", "b"])])
        await sink.write(flags, [_alert(1, ["a", "b"])])  # a retried batch
        await sink.write([], [_alert(2, ["a", "b", "c"])])  # the same alert, grown

    asyncio.run(run())
    _, rows = ch.query("SELECT count() FROM pathsentry.flagged_events")
    assert rows[0][0] == 11  # the retry was deduplicated by its token
    _, rows = ch.query("SELECT account FROM pathsentry.flagged_events WHERE event_id = 'e99'")
    assert rows[0][0] == hostile  # stored as data, not executed
    _, rows = ch.query("SELECT version, length(accounts) FROM pathsentry.alerts FINAL")
    assert rows == [(2, 3)]
    _, rows = ch.query(
        "SELECT JSONExtractFloat(evidence, 'gap_ms') FROM pathsentry.flagged_events WHERE event_id='e1'"
    )
    assert rows[0][0] == pytest.approx(80.5)
    with pytest.raises(PermissionError):
        ch.query("DROP TABLE pathsentry.alerts")
    sink.close()
    ch.close()


def test_rows_keep_their_times_to_the_millisecond_whatever_their_shape(chdb_dir: Path) -> None:
    """A row built by ``flag_row`` is written as it is; one with its columns in another
    order, or with more keys, is cut to the columns first. Times are stored in UTC,
    truncated to the millisecond, whatever zone they came in."""
    from datetime import timedelta, timezone

    from pathsentry.infra.clickhouse import FLAG_COLUMNS, flag_row

    ch = connect(f"chdb://{chdb_dir}")
    ch.apply_ddl(30)
    seoul = timezone(timedelta(hours=9))
    f = _flag(1)
    as_built = flag_row(f.model_copy(update={
        "event_id": "built", "ts": datetime(2026, 11, 22, 21, 0, 1, 123987, tzinfo=seoul)}))
    assert tuple(as_built) == FLAG_COLUMNS
    reordered = dict(reversed(flag_row(f.model_copy(update={
        "event_id": "reordered", "ts": datetime(2026, 11, 22, 12, 0, 2, 999999, tzinfo=UTC)}))
        .items()))
    extra = {**flag_row(f.model_copy(update={"event_id": "extra"})), "not_a_column": 1}
    ch.insert("flagged_events", FLAG_COLUMNS, [as_built, reordered, extra], "t-shapes")
    _, rows = ch.query("SELECT event_id, toString(ts), detector FROM pathsentry.flagged_events "
                       "ORDER BY event_id")
    assert rows == [("built", "2026-11-22 12:00:01.123", "latency"),
                    ("extra", "2026-11-22 12:00:01.000", "latency"),
                    ("reordered", "2026-11-22 12:00:02.999", "latency")]


def test_farm_groups_names_each_parts_room_and_the_named_query_shows_one_row_per_room(
        chdb_dir: Path) -> None:
    from pathsentry.detectors.farm.model import FarmSettings
    from pathsentry.detectors.farm.rooms import RoomMerger
    from pathsentry.queries import render
    from tests.detectors.test_farm_rooms import part_alert

    rooms = RoomMerger(FarmSettings(), "farm")
    parts = [part_alert("p1", [f"m{i}" for i in range(8)]),
             part_alert("p2", [f"m{i}" for i in range(4, 12)]),
             part_alert("alone", [f"z{i}" for i in range(6)])]
    room = [r for p in parts for r in rooms.observe(p)]
    assert len(room) == 1
    ch = connect(f"chdb://{chdb_dir}")
    ch.apply_ddl(30)
    sink = ClickHouseSink(ch)
    asyncio.run(sink.write([], [*parts, *room]))
    _, rows = ch.query("SELECT group_id, is_room, room_id, members FROM pathsentry.farm_groups "
                       "ORDER BY group_id")
    got = {r[0]: (r[1], r[2], r[3]) for r in rows}
    rid = room[0].alert_id
    assert got == {"alone": (0, "", 6), "p1": (0, rid, 8), "p2": (0, rid, 8), rid: (1, "", 12)}
    cols, rows = ch.query(render("farm-groups", "pathsentry"))
    assert sorted(r[cols.index("group_id")] for r in rows) == sorted(["alone", rid])
    sink.close()
    ch.close()
