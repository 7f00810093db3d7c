"""The same answer, with the same TTL relation, given no sooner than the round trip on
another network (``late_witness``).

A failover box of the origin's own that sends its answers with a TTL one above its
SYN-ACK's (a front box one hop nearer than the server that completed the handshake)
shows that relation on every network's path: a second network getting the same page
with the same relation, its first byte no sooner than the round trip and no race, is
the origin side's answer. A forging box in one ISP answers its own subscribers, and
races the origin: answers sooner than the round trip, with a race, with another TTL
relation, or from the same network, are no witness and stay flagged.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.detectors.test_injection import Harness

NETS = ("203.0.113.7", "198.51.100.7")
PAGE = {"status": 503, "header_names": ["server", "content-type"], "server_header": "nginx",
        "connect_ms": 12.0}
NEAR_LATE = {"ttl": {"syn_ack": 52, "response": 53}, "ttfb_ms": 25.0}
NEAR_FAST = {"ttl": {"syn_ack": 52, "response": 53}, "ttfb_ms": 3.0}


def learned(extra: str = "") -> Harness:
    """Both networks' clean answers for 40 minutes (clean histories, the origin's TTL
    relation learned as +0)."""
    h = Harness("[detectors.injection]\n" + extra)
    for k in range(40):
        for src in NETS:
            h.run(event_id=f"c{k}{src}", src_ip=src, ts=f"2026-03-02T09:{k:02d}:00+09:00")
    return h


def pair(h: Harness, first: dict[str, Any], second: dict[str, Any],
         second_src: str = NETS[1]) -> tuple[bool, bool, dict[str, Any]]:
    """The same page to the first network, then 20 s later to ``second_src``: whether
    each was flagged, and the second's notes."""
    one, _ = h.run(event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00",
                   **{**PAGE, **first})
    two, ev = h.run(event_id="f2", src_ip=second_src, ts="2026-03-02T10:15:20+09:00",
                    **{**PAGE, **second})
    return one is not None, two is not None, ev.notes["injection"]


def test_one_hop_nearer_on_two_networks_no_sooner_than_the_round_trip_is_the_origins() -> None:
    """The failover box's relation (+1) on both networks, both answers late: the first is
    flagged (nothing yet to contrast it with), the second is the origin's."""
    first, second, notes = pair(learned(), NEAR_LATE, NEAR_LATE)
    assert first and not second
    assert notes["late_witness"] == "net:203.0.113.0/24" and notes["origin_wide"]
    assert notes["quiet_witness"] is None  # (a TTL above the origin's relation: not quiet)
    # switched off, the second one is flagged as before
    assert pair(learned("late_witness = false\n"), NEAR_LATE, NEAR_LATE)[1]


def test_a_witness_without_ttls_serves_any_relation() -> None:
    """The first network's reporter saw no TTLs (recorded, not flagged: unplaced); its
    late answer still witnesses the second's, one hop nearer and late."""
    first, second, notes = pair(learned(), {"ttl": None, "ttfb_ms": 25.0}, NEAR_LATE)
    assert not first and not second and notes["late_witness"] == "net:203.0.113.0/24"


@pytest.mark.parametrize(("first", "second"), [
    (NEAR_FAST, NEAR_FAST),  # two injecting ISPs racing the origin with the same page
    (NEAR_LATE, NEAR_FAST),  # the second raced: a box nearer than the server
    (NEAR_FAST, NEAR_LATE),  # the first raced: no witness
    (NEAR_LATE, {"ttl": {"syn_ack": 52, "response": 54}, "ttfb_ms": 25.0}),  # another relation
    ({**NEAR_LATE, "seq_conflict": True}, NEAR_LATE),  # the first's answer raced the origin's
], ids=["both fast", "second fast", "first fast", "+1 then +2", "first raced"])
def test_answers_that_raced_or_differ_in_relation_witness_nothing(
        first: dict[str, Any], second: dict[str, Any]) -> None:
    assert pair(learned(), first, second)[1]


def test_the_same_network_is_no_witness_of_its_own() -> None:
    """Two lines of one network getting the page one hop nearer and late: what a forging
    box in that network shows too."""
    _, second, notes = pair(learned(), NEAR_LATE, NEAR_LATE, second_src="203.0.113.99")
    assert second and notes["late_witness"] is None


def test_the_configured_origins_witness_each_others_answers() -> None:
    """The operator's failover box answers both configured hosts: its page on
    ``www.example.com`` to one network witnesses the same page on ``ws.example.com`` to
    another (``witness_origins``); switched off, each host's answers witness only its
    own, and the ws answer is flagged."""
    www = {"target": {"host": "www.example.com", "port": 8080, "scheme": "http"},
           "request": "get", **NEAR_LATE}
    first, second, notes = pair(learned(), www, NEAR_LATE)
    assert first and not second and notes["late_witness"] == "net:203.0.113.0/24"
    assert pair(learned("witness_origins = false\n"), www, NEAR_LATE)[1]
    # from the same network, no witness either way
    assert pair(learned(), www, NEAR_LATE, second_src="203.0.113.99")[1]
