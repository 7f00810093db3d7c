"""Flags held for a witness that comes after them (``injection_hold``).

The first answer of an origin's failover box, before any other network got the same
one, has no witness yet; another network's answer that comes after it says the same of
it as one that came before. Two networks with clean histories; the flags emitted (not
the verdicts) are what is counted here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pathsentry.detectors.saved import StateInvalid
from pathsentry.schemas import FlaggedEvent, parse_event
from tests.detectors.test_injection import Harness

NETS = ("203.0.113.7", "198.51.100.7")
#: the failover box's answer: its own ``server`` and headers, the SYN-ACK's TTL
BOX = {"status": 502, "header_names": ["server", "content-type"], "server_header": "nginx",
       "ttl": {"syn_ack": 52, "response": 52}}


def clean(h: Harness) -> None:
    for k in range(40):
        for src in NETS:
            h.run(event_id=f"c{k}{src}", src_ip=src, ts=f"2026-03-02T09:{k:02d}:00+09:00")


def emitted(h: Harness, **kw: Any) -> list[str]:
    """The event ids of the flags that processing one probe emits."""
    from tests.detectors.test_injection import probe

    found = h.det.process(h.enricher.enrich(parse_event(probe(**kw))))
    return [f.event_id for f in found.flags] if found else []


def finish(h: Harness, ts: str) -> list[str]:
    from datetime import datetime

    found = h.det.finish(datetime.fromisoformat(ts).timestamp())
    return [f.event_id for f in found.flags] if found else []


@pytest.mark.parametrize(("connect_ms", "ttfb_ms"), [(12.0, 25.0), (1.0, 14.0)])
def test_a_later_answer_of_another_network_witnesses_the_first(connect_ms: float,
                                                               ttfb_ms: float) -> None:
    """The box answers no sooner than the round trip on both networks (on a handshake
    too short to time, later than it by ``min_connect_ms``): the second network's answer
    is the origin's by the quiet witness, and so is the first, held until then. Held
    for nothing (``hold_s = 0``), the first is flagged."""
    for extra, first_flagged in (("", False), ("[detectors.injection]\nhold_s = 0\n", True)):
        h = Harness(extra)
        clean(h)
        odd = {**BOX, "connect_ms": connect_ms, "ttfb_ms": ttfb_ms}
        out = emitted(h, event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00", **odd)
        out += emitted(h, event_id="f2", src_ip=NETS[1], ts="2026-03-02T10:19:00+09:00", **odd)
        out += finish(h, "2026-03-02T10:19:00+09:00")
        assert out == (["f1"] if first_flagged else [])


def test_a_later_tls_answer_of_another_network_witnesses_an_untimed_one() -> None:
    """On a handshake too short to time, the box's answer shows no timing at all; the
    origin gives the same answer over TLS to another network five minutes later: a box
    on the first network's path could not have answered inside it."""
    h = Harness()
    clean(h)
    odd = {**BOX, "connect_ms": 1.0, "ttfb_ms": 1.5}
    tls = {**odd, "target": {"host": "ws.example.com", "port": 443, "scheme": "wss"}}
    out = emitted(h, event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00", **odd)
    out += emitted(h, event_id="t2", src_ip=NETS[1], ts="2026-03-02T10:20:00+09:00", **tls)
    assert out + finish(h, "2026-03-02T10:20:00+09:00") == []


def test_a_held_flag_without_a_witness_is_flagged_after_the_hold() -> None:
    """No other network gets the same answer: the flag comes with the first answer after
    ``hold_s`` (600 s), or at the end of the input; a witness later than ``hold_s``
    witnesses nothing. The same network's answer is no witness of its own."""
    h = Harness()
    clean(h)
    odd = {**BOX, "connect_ms": 12.0, "ttfb_ms": 25.0}
    assert emitted(h, event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00", **odd) == []
    assert emitted(h, event_id="f2", src_ip=NETS[0], ts="2026-03-02T10:16:00+09:00", **odd) == []
    assert emitted(h, event_id="n1", src_ip=NETS[1], ts="2026-03-02T10:24:00+09:00") == []
    assert emitted(h, event_id="n2", src_ip=NETS[1], ts="2026-03-02T10:25:30+09:00") == ["f1"]
    assert emitted(h, event_id="f3", src_ip=NETS[1], ts="2026-03-02T10:26:10+09:00", **odd) == [
        "f2"]
    assert finish(h, "2026-03-02T10:26:10+09:00") == []  # (f3: witnessed by f2, held 600 s)


def test_a_timed_mark_of_a_nearer_box_is_flagged_at_once() -> None:
    """A first byte sooner than the round trip: a later witness could not clear it (a
    forging box's page is not the origin's over TLS), so it is not held."""
    h = Harness()
    clean(h)
    odd = {**BOX, "connect_ms": 12.0, "ttfb_ms": 3.0}
    assert emitted(h, event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00",
                   **odd) == ["f1"]


def test_held_flags_survive_a_restart_and_a_bad_one_is_refused() -> None:
    h = Harness()
    clean(h)
    odd = {**BOX, "connect_ms": 12.0, "ttfb_ms": 25.0}
    assert emitted(h, event_id="f1", src_ip=NETS[0], ts="2026-03-02T10:15:00+09:00", **odd) == []
    saved = json.loads(json.dumps(h.det.state()))
    again = Harness()
    again.det.load_state(saved)
    assert finish(again, "2026-03-02T10:15:00+09:00") == ["f1"]
    bad = json.loads(json.dumps(saved))
    bad["held"][0][0]["kind"] = "vpn_relay"
    with pytest.raises(StateInvalid):
        Harness().det.load_state(bad)
    bad["held"][0][0] = {"event_id": "x"}
    with pytest.raises(StateInvalid):
        Harness().det.load_state(bad)
    assert FlaggedEvent.model_validate(saved["held"][0][0]).event_id == "f1"
