"""Where the connection ended: a line's usual SYN-ACK from an origin.

A forging box answers inside a connection whose handshake is the real server's; a
failover box of the origin's own takes the whole connection, its SYN-ACK from farther
than the line learned. Each test lets one line learn its SYN-ACK from the origin's
usual answers, then sends an answer without the origin's marks (as a failover box's
502, or a forged page) on the handshake given.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pathsentry.detectors.injection import InjectionDetector
from pathsentry.detectors.injection_handshake import Handshakes, HandshakeSettings
from pathsentry.detectors.saved import StateInvalid
from tests.detectors.test_injection import Harness

LINE = "203.0.113.7"
FALLBACK = {"status": 502, "header_names": ["server", "content-type"], "server_header": "nginx"}


def learned(extra_toml: str = "", ttls: tuple[int | None, ...] = (52,), n: int = 6,
            connect_ms: float = 12.0) -> Harness:
    """A line that got ``n`` usual answers, their SYN-ACK TTLs taken in turn from
    ``ttls`` (``None``: not seen) and their handshakes ``connect_ms``, 0.1 ms apart."""
    h = Harness(extra_toml)
    for k in range(n):
        ttl = ttls[k % len(ttls)]
        flag, _ = h.run(event_id=f"u{k}", src_ip=LINE, ts=f"2026-03-02T09:{k:02d}:00+09:00",
                        connect_ms=connect_ms + 0.1 * (k % 3), ttfb_ms=connect_ms + 10,
                        ttl=None if ttl is None else {"syn_ack": ttl, "response": ttl})
        assert flag is None
    return h


def answer(h: Harness, syn_ack: int | None, connect_ms: float, src: str = LINE,
           **kw: Any) -> tuple[Any, dict[str, Any]]:
    ttl = None if syn_ack is None else {"syn_ack": syn_ack, "response": syn_ack}
    fields: dict[str, Any] = {**FALLBACK, "ttl": ttl, "connect_ms": connect_ms,
                              "ttfb_ms": connect_ms + 15, **kw}
    flag, ev = h.run(event_id="x", src_ip=src, ts="2026-03-02T10:15:00+09:00", **fields)
    return flag, ev.notes["injection"]


@pytest.mark.parametrize(("syn_ack", "connect_ms", "why"), [
    (49, 12.1, "ttl_farther"),  # three hops farther, the same distance
    (52, 31.0, "rtt_farther"),  # as many hops, a longer handshake (another site)
    (None, 31.0, "rtt_farther"),  # a reporter that sees no TTLs: the RTT alone
])
def test_a_connection_that_ended_farther_is_another_servers(
        syn_ack: int | None, connect_ms: float, why: str) -> None:
    """The answer without the origin's marks on a handshake farther than the line's
    usual one is recorded, with the learned and measured SYN-ACK, not flagged; switched
    off, or on a line never heard from, it is flagged as before."""
    # (an answer without TTLs and no sooner than the round trip is not flagged anyway)
    on = "[detectors.injection]\n" + ("flag_unplaced = true\n" if syn_ack is None else "")
    flag, notes = answer(learned(on), syn_ack, connect_ms)
    assert flag is None and notes["moved"] and not notes["suspect"]
    hs = notes["handshake"]
    assert hs[why] and hs["syn_ack_ttl"] == syn_ack and hs["connect_ms"] == connect_ms
    assert hs["expected_syn_ack_ttl"] == [52, 52]
    assert hs["expected_connect_ms"] == pytest.approx(12.1)
    assert hs["samples"] == 6
    off, notes = answer(learned(on + "handshake_moves = false\n"), syn_ack, connect_ms)
    assert off is not None and not notes["moved"]
    fresh, notes = answer(learned(on), syn_ack, connect_ms, src="198.51.100.7")
    assert fresh is not None and notes["handshake"] is None


def test_a_forged_answer_on_the_usual_handshake_stays_flagged() -> None:
    """An injector that sets its answer's TTL to the SYN-ACK's: the SYN-ACK is the real
    server's, as usual, so the answer is judged on its marks and timing as before, the
    learned handshake beside it in the evidence."""
    flag, notes = answer(learned(), 52, 12.2, status=200, ttfb_ms=3.0,
                         header_names=["content-type", "content-length"], server_header=None)
    assert flag is not None and not notes["moved"]
    assert flag.evidence["handshake"]["expected_syn_ack_ttl"] == [52, 52]
    assert "fast_answer" in flag.evidence


@pytest.mark.parametrize(("connect_ms", "kw"), [
    (31.0, {"ttfb_ms": 8.0}),  # first byte sooner than the 31 ms round trip allows
    (31.0, {"seq_conflict": True}),  # a race
    (1.5, {"ttl": {"syn_ack": 49, "response": 50}, "ttfb_ms": 1.2}),  # +1, untimed
])
def test_a_mark_of_a_nearer_box_outweighs_a_moved_connection(connect_ms: float,
                                                             kw: dict[str, Any]) -> None:
    """A box on the path forges into a connection wherever it ended: a first byte
    sooner than the round trip, a race, or an answer TTL nearer than its own SYN-ACK's
    on a handshake too short to time keep the answer flagged."""
    flag, notes = answer(learned(), 49, connect_ms, **kw)
    assert flag is not None and not notes["moved"]
    assert notes["handshake"]["ttl_farther"]


def test_a_farther_box_may_answer_at_its_own_ttl_relation_when_timed() -> None:
    """The failover box's answer leaves one hop nearer than its own SYN-ACK (its own
    relation), its SYN-ACK three hops farther than the line's usual one and its first
    byte after the round trip: another server's."""
    flag, notes = answer(learned(), 49, 31.0, ttl={"syn_ack": 49, "response": 50})
    assert flag is None and notes["moved"]


@pytest.mark.parametrize(("syn_ack", "connect_ms", "ttfb_ms", "moved"), [
    (52, 31.0, 46.0, True),  # as many hops, a handshake 2.5 times longer, first byte after it
    (52, 31.0, 8.0, False),  # ...first byte sooner than that round trip: a nearer box
    (49, 1.0, 16.0, True),  # three hops farther on a 1 ms line, first byte 15 ms after it
    (49, 1.0, 1.5, False),  # ...first byte within the jitter of that short handshake
])
def test_a_farther_box_answers_at_its_own_relation_after_its_round_trip(
        syn_ack: int, connect_ms: float, ttfb_ms: float, moved: bool) -> None:
    """An answer one TTL above its SYN-ACK's, on a connection that ended farther than
    the line's usual one (by its TTL or its handshake's length): a box nearer than where
    it ended would have answered within its own shorter round trip, so a first byte
    after the whole round trip (on a handshake too short to time, later than it by
    ``min_connect_ms``) makes it the far box's own relation; sooner, a forging box's."""
    h = learned(connect_ms=12.0 if connect_ms > 2 else 1.0)
    flag, notes = answer(h, syn_ack, connect_ms, ttfb_ms=ttfb_ms,
                         ttl={"syn_ack": syn_ack, "response": syn_ack + 1})
    assert (flag is None) == moved and notes["moved"] == moved
    assert notes["handshake"]["ttl_farther"] or notes["handshake"]["rtt_farther"]


def test_a_nearer_handshake_is_a_proxy_not_a_move() -> None:
    """A SYN-ACK with more TTL left than the line's usual one came from a box nearer
    than the server (a proxy on the path), however long the handshake."""
    flag, notes = answer(learned(), 55, 31.0)
    assert flag is not None and not notes["moved"]
    assert notes["handshake"]["rtt_farther"] and not notes["handshake"]["ttl_farther"]


def test_a_load_balancers_spread_of_syn_ack_ttls_is_learned() -> None:
    """Two edges whose SYN-ACKs differ by two hops: a SYN-ACK one hop below the lower
    is within the learned spread (the same handshake, a forged answer flagged); on a
    line with one edge, the same SYN-ACK is farther than usual."""
    lb = learned(ttls=(52, 54))
    flag, notes = answer(lb, 51, 12.1)
    assert flag is not None and not notes["moved"]
    assert notes["handshake"]["expected_syn_ack_ttl"] == [52, 54]
    assert answer(lb, 49, 12.1)[0] is None
    assert answer(learned(), 51, 12.1)[0] is None


def test_jitter_of_a_short_handshake_is_not_a_move() -> None:
    """A line 1 ms from the edge: a handshake of 2.5 ms is timing jitter, not another
    site (the tolerance never goes below ``min_connect_ms``)."""
    h = learned("[detectors.injection]\nflag_unplaced = true\n", connect_ms=1.0)
    flag, notes = answer(h, None, 2.5)
    assert flag is not None and not notes["moved"]
    assert notes["handshake"]["connect_limit_ms"] >= 3.0
    assert answer(h, None, 9.0)[0] is None


def test_the_failover_boxs_answers_teach_no_handshake() -> None:
    """Answers of a failover box (without the origin's marks) are not learned as the
    line's SYN-ACK, however many: the next one is still farther than usual."""
    h = learned()
    for _ in range(30):
        answer(h, 49, 31.0)
    assert answer(h, 49, 31.0)[1]["handshake"]["expected_syn_ack_ttl"] == [52, 52]


def test_the_learned_handshakes_survive_a_restart_and_bad_ones_are_refused() -> None:
    h = learned()
    saved = json.loads(json.dumps(h.det.state()))
    fresh = Harness()
    fresh.det.load_state(saved)
    flag, notes = answer(fresh, 49, 12.1)
    assert flag is None and notes["moved"]
    bad = json.loads(json.dumps(saved))
    bad["handshakes"]["prefix"][0][1][0][0] = 300
    with pytest.raises(StateInvalid):
        Harness().det.load_state(bad)
    assert isinstance(fresh.det, InjectionDetector)


def origin_lines(h: Harness, ttls: tuple[int, ...] = (55, 56, 58), n: int = 3) -> None:
    """Other lines (one /24 each, other networks) learn their usual SYN-ACK TTLs."""
    for k, ttl in enumerate(ttls):
        for j in range(n):
            flag, _ = h.run(event_id=f"o{k}-{j}", src_ip=f"100.{64 + k}.0.7",
                            ts=f"2026-03-02T09:{10 * k + j:02d}:00+09:00", connect_ms=12.0,
                            ttfb_ms=22.0, ttl={"syn_ack": ttl, "response": ttl})
            assert flag is None


@pytest.mark.parametrize(("syn_ack", "connect_ms", "ttfb_ms", "moved"), [
    (52, 12.0, 27.0, True),  # below every line of the origin, answered after the round trip
    (55, 12.0, 27.0, False),  # as far as the origin's farthest line
    (52, 1.0, 0.4, False),  # below them, but a first byte before the round trip could end
    (52, 1.0, 1.5, False),  # a handshake too short to time, the first byte within jitter
])
def test_a_line_not_learned_borrows_the_origins_lines(
        syn_ack: int, connect_ms: float, ttfb_ms: float, moved: bool) -> None:
    """A line heard from for the first time gets an answer without the origin's marks
    (from a box of the origin's own, one hop nearer than its SYN-ACK as such a box may
    answer). Its SYN-ACK is judged against the lowest of the origin's other lines'
    (three learned): below all of them, with a first byte that could have shown a nearer
    box and came no sooner than the round trip, the connection ended elsewhere. With
    ``handshake_lines`` above the lines learned it is flagged."""
    h = Harness()
    origin_lines(h)
    ttl = {"syn_ack": syn_ack, "response": syn_ack + 1}
    fields: dict[str, Any] = {**FALLBACK, "ttl": ttl, "connect_ms": connect_ms,
                              "ttfb_ms": ttfb_ms}
    flag, ev = h.run(event_id="x", src_ip=LINE, ts="2026-03-02T10:15:00+09:00", **fields)
    notes = ev.notes["injection"]
    assert (flag is None) == moved and notes["moved"] == moved
    assert notes["handshake"]["level"] == "origin"
    assert notes["handshake"]["expected_syn_ack_ttl"] == [55, 58]
    assert notes["handshake"]["ttl_farther"] == (syn_ack < 55)
    few = Harness("[detectors.injection]\nhandshake_lines = 4\n")
    origin_lines(few)
    flag, ev = few.run(event_id="x", src_ip=LINE, ts="2026-03-02T10:15:00+09:00", **fields)
    assert flag is not None and ev.notes["injection"]["handshake"] is None


def test_the_origins_lines_follow_what_each_line_keeps() -> None:
    """The origin-wide bounds are each kept line's own: a line dropped (the least
    recently heard, beyond ``handshake_keys``) or restored from a save counts as kept."""
    hs = Handshakes(HandshakeSettings(handshake_keys=3, handshake_lines=2))
    for k, ttl in enumerate((50, 56, 57)):
        hs.learn("www", f"10.0.{k}.0/24", ttl, 5.0)
    assert hs.origin_range("www") == (50, 57)
    hs.learn("www", "10.0.3.0/24", 58, 5.0)  # the 50 line is dropped
    assert hs.origin_range("www") == (56, 58)
    restored = Handshakes(HandshakeSettings(handshake_lines=2))
    restored.load(json.loads(json.dumps(hs.to_json())))
    assert restored.origin_range("www") == (56, 58)
    assert restored.judge("www", "10.9.9.0/24", 55, None).ttl_farther  # type: ignore[union-attr]
    assert restored.origin_range("api") is None
    hs.learn("www", "10.0.1.0/24", None, 5.0)  # a line's TTLs not seen: its bounds stay
    assert hs.origin_range("www") == (56, 58)


def test_a_page_forged_into_a_moved_connection_is_not_the_far_boxs() -> None:
    """A failover moves the line's connections to a box one hop farther, which answers
    one hop below its SYN-ACK (its own relation, on every network's path). A box on the
    line's path then forges a page into such a connection at the SYN-ACK's TTL, on a
    handshake too short to time: the connection ended farther, but the answer does not
    carry the far box's relation, so it is not that box's answer. The far box's own
    answers are still another server's; with none of them seen yet, the forged page is
    read as the far box's answer."""
    page = {"status": 200, "header_names": ["content-type", "content-length"],
            "server_header": None, "ttfb_ms": 0.4}
    far = {"ttl": {"syn_ack": 51, "response": 50}}
    h = learned(ttls=(52,), connect_ms=1.0)
    box, notes = answer(h, 51, 1.0, **far)
    assert box is None and notes["moved"]
    forged, notes = answer(h, 51, 1.0, **page)
    assert forged is not None and not notes["moved"]
    box, notes = answer(h, 51, 1.0, **far)
    assert box is None and notes["moved"]
    alone, notes = answer(learned(ttls=(52,), connect_ms=1.0), 51, 1.0, **page)
    assert alone is None and notes["moved"]
