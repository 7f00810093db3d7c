"""An answer whose TTL is below its SYN-ACK's: sent from farther than the handshake's end.

A failover box behind the server that completed the handshake (its answers two hops
farther, as the SYN-ACK's sender relays them) answers with a TTL below the SYN-ACK's.
A box on the path nearer than the server sends its answer from nearer, with a TTL at
or above the SYN-ACK's unless it lowers it on purpose; a box of another IP stack
(another initial TTL) shows a gap of tens of hops, which says nothing of distance.
The farther answer is recorded (``answer_farther``), not flagged, when nothing marks a
nearer box: no race, no storm, no first byte sooner than the round trip.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.detectors.test_injection import WWW, Harness

PAGE = {**WWW, "status": 502, "header_names": ["server", "content-type"],
        "server_header": "nginx", "body_sha256": "ef" * 32}


@pytest.mark.parametrize(("connect_ms", "ttfb_ms"), [
    (1.0, 1.9),  # a handshake too short to time: the TTLs alone place the box
    (12.0, 25.0),  # no sooner than the round trip
], ids=["untimed", "late"])
def test_an_answer_sent_from_farther_than_its_syn_ack_is_not_flagged(
        connect_ms: float, ttfb_ms: float) -> None:
    ttl = {"syn_ack": 51, "response": 49}
    flag, ev = Harness().run(**PAGE, ttl=ttl, connect_ms=connect_ms, ttfb_ms=ttfb_ms)
    notes = ev.notes["injection"]
    assert flag is None and notes["answer_farther"] and not notes["suspect"]
    # switched off, the same answer is flagged on the origin's missing marks
    flag, ev = Harness("[detectors.injection]\nflag_answer_farther = true\n").run(
        **PAGE, ttl=ttl, connect_ms=connect_ms, ttfb_ms=ttfb_ms)
    assert flag is not None and not ev.notes["injection"]["answer_farther"]


@pytest.mark.parametrize("marks", [
    {"ttl": {"syn_ack": 51, "response": 49}, "ttfb_ms": 3.0},  # sooner than the round trip
    {"ttl": {"syn_ack": 51, "response": 49}, "seq_conflict": True},  # raced the origin's
    {"ttl": {"syn_ack": 51, "response": 49}, "retransmits": 6},  # a retransmission storm
    {"ttl": {"syn_ack": 116, "response": 60}},  # another initial TTL (128, 64): another stack
    {"ttl": {"syn_ack": 51, "response": 51}, "connect_ms": 1.0, "ttfb_ms": 1.9},  # untimed, +0
    {"ttl": {"syn_ack": 51, "response": 52}, "connect_ms": 1.0, "ttfb_ms": 1.9},  # untimed, +1
], ids=["fast", "race", "storm", "other stack", "untimed +0", "untimed +1"])
def test_a_nearer_box_or_another_stack_stays_flagged(marks: dict[str, Any]) -> None:
    flag, ev = Harness().run(**{**PAGE, **marks})
    assert flag is not None and not ev.notes["injection"]["answer_farther"]
