"""One room, one alert: ``farm_group`` alerts of different partitions that share accounts
are joined by the room merger (:mod:`pathsentry.detectors.farm.rooms`); alerts that share
a household's pair, or a few strays of a large alert, are not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pathsentry.detectors.farm.model import FarmSettings
from pathsentry.detectors.farm.rooms import ROOM, RoomMerger
from pathsentry.detectors.saved import StateInvalid
from pathsentry.schemas import Alert, make_alert_id

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def part_alert(aid: str, accounts: list[str], *, key: str = "", minutes: float = 0.0, version: int = 1,
          rtt: tuple[float, float] = (31.0, 33.0), score: float = 0.8) -> Alert:
    """A partition's ``farm_group`` alert of ``accounts`` (``key``: its partition)."""
    first = T0 + timedelta(minutes=minutes)
    return Alert(
        alert_id=aid, ts=first + timedelta(minutes=5), kind="farm_group", severity="high",
        score=score, subject={"group_id": aid, "key": key or f"net:{aid}", "pattern": f"line:{aid}",
                              "template": None},
        accounts=accounts, event_ids=[f"e-{a}" for a in accounts],
        evidence={"origin": {"median_app_rtt_ms": sum(rtt) / 2, "app_rtt_range_ms": list(rtt)},
                  "route": "CN>KR"},
        detector="farm", first_seen=first, last_seen=first + timedelta(minutes=5), version=version)


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_two_partitions_alerts_sharing_accounts_are_one_room_alert() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    a = _names("acct", 20)
    assert rooms.observe(part_alert("p1", a[:12], key="net:106.240.3.0/24")) == []
    (room,) = rooms.observe(part_alert("p2", a[8:], key="route:767dd", minutes=3, rtt=(30.0, 36.0)))
    assert room.kind == "farm_group" and room.subject["key"] == ROOM
    assert room.alert_id == make_alert_id("farm", "farm_group", f"{ROOM}|p1")
    assert room.accounts == sorted(a) and room.version == 1
    ev = room.evidence
    assert [p["partition"] for p in ev["room"]["parts"]] == ["net:106.240.3.0/24", "route:767dd"]
    assert ev["room"]["shared_accounts"] == [{"parts": ["p1", "p2"], "accounts": 4}]
    assert ev["app_rtt_range_ms"] == [30.0, 36.0]  # over every part, in ms
    assert ev["room"]["rule"] == {"min_shared_accounts": 3, "min_shared_share_of_smaller": 0.25}
    assert ev["timing"]["span_s"] == 480.0 and ev["route"] == "CN>KR"
    assert "20 accounts of one room, found as 2 groups" in room.summary
    # the same version again changes nothing; a part that grows re-versions the room
    assert rooms.observe(part_alert("p2", a[8:], key="route:767dd", minutes=3)) == []
    (again,) = rooms.observe(part_alert("p2", [*a[8:], "late1"], key="route:767dd", minutes=3, version=2))
    assert again.alert_id == room.alert_id and again.version == 2 and "late1" in again.accounts
    # an older version arriving late is not taken
    assert rooms.observe(part_alert("p2", a[8:10], key="route:767dd", minutes=3, version=1)) == []


def test_a_households_pair_in_two_rooms_alerts_joins_nothing() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("p1", [*_names("x", 8), "sis", "bro"]))
    assert rooms.observe(part_alert("p2", [*_names("y", 8), "sis", "bro"])) == []
    assert not rooms.rooms


def test_a_large_alert_does_not_collect_a_smaller_one_through_a_few_strays() -> None:
    """Three shared accounts are not a quarter of a 20-account alert."""
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("big", _names("b", 60)))
    assert rooms.observe(part_alert("small", [*_names("b", 3), *_names("s", 17)])) == []
    # a fourth... fifth shared account makes it a quarter
    (room,) = rooms.observe(part_alert("small", [*_names("b", 5), *_names("s", 15)], version=2))
    assert len(room.accounts) == 75


def test_parts_join_transitively_and_two_rooms_become_the_older_one() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("a", _names("m", 10), minutes=0))
    (r1,) = rooms.observe(part_alert("b", _names("m", 10)[6:] + _names("n", 6), minutes=1))
    rooms.observe(part_alert("c", _names("q", 10), minutes=2))
    (r2,) = rooms.observe(part_alert("d", _names("q", 10)[5:] + _names("z", 5), minutes=3))
    assert r1.alert_id != r2.alert_id
    # a part holding accounts of both rooms: one room, the older's id, every part listed
    (joined,) = rooms.observe(part_alert("e", _names("n", 6) + _names("z", 5), minutes=4))
    assert joined.alert_id == r1.alert_id
    assert joined.subject["parts"] == ["a", "b", "c", "d", "e"]
    assert joined.subject["rooms_absorbed"] == [r2.alert_id]
    assert len(joined.accounts) == 10 + 6 + 10 + 5


def test_room_alerts_and_other_kinds_are_never_parts() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("p1", _names("m", 8)))
    (room,) = rooms.observe(part_alert("p2", [*_names("m", 8)[2:], "k"]))
    assert rooms.observe(room) == []
    relay = part_alert("r1", _names("m", 8)).model_copy(update={"kind": "vpn_relay"})
    assert rooms.observe(relay) == []
    assert set(rooms.parts) == {"p1", "p2"}


def test_parts_are_forgotten_a_group_ttl_after_their_last_login() -> None:
    rooms = RoomMerger(FarmSettings(group_ttl_s=3600.0), "farm")
    rooms.observe(part_alert("old", _names("m", 8)))
    rooms.observe(part_alert("new", _names("o", 8), minutes=180))
    assert set(rooms.parts) == {"new"} and "m0" not in rooms.index
    assert rooms.observe(part_alert("later", _names("m", 8), minutes=181)) == []


def test_parts_beyond_the_cap_go_least_recently_updated_first() -> None:
    rooms = RoomMerger(FarmSettings(room_max_parts=3), "farm")
    for i in range(5):
        rooms.observe(part_alert(f"p{i}", _names(f"g{i}-", 6)))
    assert list(rooms.parts) == ["p2", "p3", "p4"]


def test_the_state_round_trips_and_the_restored_merger_goes_on() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("p1", _names("m", 10)))
    (room,) = rooms.observe(part_alert("p2", _names("m", 10)[5:] + _names("n", 5)))
    state = rooms.state()
    again = RoomMerger(FarmSettings(), "farm")
    again.load_state(state)
    assert again.state() == state
    (grown,) = again.observe(part_alert("p3", _names("n", 5) + _names("o", 5)))
    assert grown.alert_id == room.alert_id and grown.version == 2 and len(grown.accounts) == 20


@pytest.mark.parametrize("bad", [
    {"now": 1e12},  # a clock far past the wall clock
    {"parts": [{"alert_id": "x"}]},  # a part missing its fields
    {"rooms": [], "parts": [], "admin": True},  # an unknown field
    {"parts": [{"alert_id": "p", "partition": "k", "pattern": "q", "template": None,
                "accounts": ["a"], "event_ids": [], "first_seen": 1.0, "last_seen": 1.0,
                "score": 7.0, "version": 1, "median_rtt_ms": None, "rtt_range_ms": None,
                "route": None, "room": None}]},  # a score past 1
])
def test_a_hostile_state_is_refused_before_anything_changes(bad: dict[str, Any]) -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("p1", _names("m", 8)))
    before = rooms.state()
    with pytest.raises(StateInvalid):
        rooms.load_state(bad)
    assert rooms.state() == before


def test_a_restored_part_naming_a_room_that_does_not_hold_it_is_alone() -> None:
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("p1", _names("m", 8)))
    state = rooms.state()
    state["parts"][0]["room"] = "someone-elses"
    rooms.load_state(state)
    assert rooms.parts["p1"].room is None and not rooms.rooms


def test_a_part_inside_another_raises_no_room() -> None:
    """A group whose accounts another partition's group already holds adds nothing."""
    rooms = RoomMerger(FarmSettings(), "farm")
    rooms.observe(part_alert("big", _names("m", 30)))
    assert rooms.observe(part_alert("inside", _names("m", 30)[10:19])) == []
    (room,) = rooms.observe(part_alert("inside", [*_names("m", 30)[10:19], "new"], version=2))
    assert len(room.accounts) == 31 and room.version == 1
    # once raised, the room follows its parts, even when one of them comes to hold them all
    (again,) = rooms.observe(part_alert("big", [*_names("m", 32), "new"], version=2))
    assert len(again.accounts) == 33 and again.version == 2
